import fcntl
import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ls_backend.registry import ModelRegistry, ProjectInfo, RegistryError
from model.checkpoint import read_checkpoint, save_checkpoint
from model.config import NetConfig
from model.inference import export_path
from model.network import ThreeBranchNet


def tiny() -> ThreeBranchNet:
    return ThreeBranchNet(NetConfig(class_names=("person", "car"), width=0.125, image_size=(64, 80)))


def test_publish_makes_current_and_loads(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    assert registry.current_version("3") is None
    first = registry.publish("3", tiny(), metrics={"AP50": 0.1}, num_train_tasks=4)
    second = registry.publish("3", tiny(), parent=first.version)
    assert registry.current_version("3") == second.version
    assert [v.version for v in registry.versions("3")] == [first.version, second.version]
    assert first.version.startswith("rgbt-v1-") and second.version.startswith("rgbt-v2-")
    model, info = registry.load("3")
    assert info.parent == first.version and model.config.class_names == ("person", "car")
    registry.set_current("3", first.version)
    assert registry.current("3").version == first.version
    assert registry.projects() == ["3"]


def test_failed_publish_leaves_previous_version_current(tmp_path: Path, monkeypatch):
    registry = ModelRegistry(tmp_path)
    first = registry.publish("1", tiny())

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("ls_backend.registry.save_checkpoint", crash)
    with pytest.raises(OSError):
        registry.publish("1", tiny())
    assert registry.current_version("1") == first.version
    versions_dir = tmp_path / "1" / "versions"
    assert sorted(p.name for p in versions_dir.iterdir()) == [first.version]  # no partial folder


def test_invalid_keys_and_unknown_versions(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="invalid project"):
        registry.project_dir("../etc")
    with pytest.raises(RegistryError, match="invalid model version"):
        registry.checkpoint_path("1", "../../x")
    with pytest.raises(RegistryError, match="no trained model"):
        registry.load("1")
    with pytest.raises(RegistryError, match="no model version"):
        registry.set_current("1", "rgbt-v9-20260101T000000")


def test_project_info_is_private_and_round_trips(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    info = ProjectInfo(project="4", label_config="<View/>", hostname="http://ls:8080", access_token="secret")
    registry.save_project(info)
    assert registry.project("4") == info
    path = tmp_path / "4" / "project.json"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text())["access_token"] == "secret"


def test_prune_keeps_newest_and_current(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    names = [registry.publish("2", tiny()).version for _ in range(4)]
    registry.set_current("2", names[0])
    deleted = registry.prune("2", keep=2)
    assert deleted == [names[1]]
    assert [v.version for v in registry.versions("2")] == [names[0], names[2], names[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]  # it locked its own project, no other


def test_prune_with_room_to_spare_deletes_nothing(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    names = [registry.publish("2", tiny()).version for _ in range(2)]
    registry.set_current("2", names[1])
    for keep in (2, 3):
        assert registry.prune("2", keep=keep) == []
    assert [v.version for v in registry.versions("2")] == names


def test_prune_clears_staging_leftovers_of_a_killed_publish(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    name = registry.publish("2", tiny()).version
    leftover = tmp_path / "2" / "versions" / ".staging-killed"
    (leftover / "sub").mkdir(parents=True)
    assert registry.prune("2", keep=5) == []
    assert not leftover.exists()
    assert [v.version for v in registry.versions("2")] == [name]


def test_current_is_none_before_the_first_version(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    assert registry.current("3") is None
    info = registry.publish("3", tiny())
    current = registry.current("3")
    assert current is not None and current.version == info.version


def test_publish_records_what_it_is_given_and_the_status_it_gets(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "models" / "nested")  # a root that does not exist yet
    info = registry.publish(
        "5",
        tiny(),
        metrics={"AP50": 0.4},
        num_train_tasks=7,
        thresholds={"person": 0.6},
        baseline={"AP50": 0.3},
        note="better than the starter",
    )
    stored = registry.info("5", info.version)
    assert stored == info
    assert (stored.project, stored.class_names, stored.task, stored.status) == (
        "5",
        ["person", "car"],
        "detection",
        "accepted",
    )
    assert (stored.metrics, stored.num_train_tasks, stored.thresholds, stored.baseline, stored.note) == (
        {"AP50": 0.4},
        7,
        {"person": 0.6},
        {"AP50": 0.3},
        "better than the starter",
    )
    assert datetime.fromisoformat(stored.created_at).utcoffset() == timedelta(0)
    # The checkpoint file names its version, so a copy taken out of the registry still says which it is.
    assert read_checkpoint(registry.checkpoint_path("5", info.version))["extra"] == {"version": info.version}
    rejected = registry.publish("5", tiny(), make_current=False)
    assert rejected.status == "rejected" and registry.current_version("5") == info.version
    assert (
        rejected.metrics,
        rejected.num_train_tasks,
        rejected.thresholds,
        rejected.baseline,
        rejected.note,
    ) == ({}, 0, {}, {}, "")
    initial = registry.publish("5", tiny(), status="initial")
    assert initial.status == "initial" and registry.current_version("5") == initial.version
    model, loaded = registry.load("5", info.version)  # an older version on request, not the current one
    assert loaded == info and model.config.class_names == ("person", "car")


def test_versions_are_numbered_and_listed_as_numbers_not_text(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    model = tiny()
    for _ in range(11):
        registry.publish("1", model)
    versions = [v.version for v in registry.versions("1")]
    assert [int(name.split("-")[1][1:]) for name in versions] == list(range(1, 12))  # v10, v11 after v9
    assert registry.prune("1", keep=10) == versions[:1]  # the oldest goes, not v10


def test_publish_holds_the_project_lock_while_it_writes(tmp_path: Path, monkeypatch):
    registry = ModelRegistry(tmp_path)
    registry.publish("6", tiny())
    probed = []

    def probe(*args, **kwargs):
        with open(tmp_path / "6" / ".lock", "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another worker would wait here
        probed.append(True)
        return save_checkpoint(*args, **kwargs)

    monkeypatch.setattr("ls_backend.registry.save_checkpoint", probe)
    registry.publish("6", tiny())
    assert probed == [True]
    with open(tmp_path / "6" / ".lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released afterwards


def test_export_is_stored_beside_the_checkpoint_and_a_failed_one_only_warns(
    tmp_path: Path, monkeypatch, caplog
):
    # The real exporter (16 s here) is exercised in test_engines.py; this checks the registry's wiring.
    registry = ModelRegistry(tmp_path)
    model = tiny()
    calls = []

    def export(exported, path):
        calls.append(exported)
        Path(path).write_bytes(b"onnx")

    monkeypatch.setattr("ls_backend.registry.export_onnx", export)
    plain = registry.publish("1", model)
    assert calls == [] and not export_path(registry.checkpoint_path("1", plain.version)).exists()
    exported = registry.publish("1", model, export=True)
    assert calls == [model]
    assert export_path(registry.checkpoint_path("1", exported.version)).read_bytes() == b"onnx"

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr("ls_backend.registry.export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="ls_backend.registry"):
        failed = registry.publish("1", model, export=True)
    assert registry.current_version("1") == failed.version
    assert not export_path(registry.checkpoint_path("1", failed.version)).exists()
    (record,) = [r for r in caplog.records if r.name == "ls_backend.registry"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"version {failed.version}: ONNX export failed, it will be served by torch: exporter crashed"
    )


def test_claim_init_records_the_starting_checkpoint_once(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "fresh")
    assert registry.claim_init("8", "/checkpoints/a.pt")
    assert not registry.claim_init("8", "/checkpoints/b.pt")
    assert json.loads((tmp_path / "fresh" / "8" / "init.json").read_text()) == {
        "checkpoint": "/checkpoints/a.pt"
    }


def test_history_keeps_pruned_versions_and_skips_a_line_cut_by_a_crash(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    assert registry.history("2") == []
    first = registry.publish("2", tiny(), metrics={"AP50": 0.1})
    with open(tmp_path / "2" / "history.jsonl", "a") as handle:
        handle.write('{"project": "2", "vers\n')  # a worker killed mid-write
    second = registry.publish("2", tiny(), make_current=False, note="worse")
    assert registry.prune("2", keep=0) == [second.version]
    assert [v.version for v in registry.versions("2")] == [first.version]
    assert registry.history("2") == [first, second]


def test_projects_lists_project_folders_only(tmp_path: Path):
    registry = ModelRegistry(tmp_path / "absent")
    assert registry.projects() == []
    assert registry.project("9") is None
    registry.save_project(ProjectInfo(project="9", label_config="<View/>"))
    (tmp_path / "absent" / "notes.txt").write_text("not a project")
    (tmp_path / "absent" / "not a key").mkdir()
    assert registry.projects() == ["9"]
    with pytest.raises(RegistryError, match="no model version"):
        registry.info("9", "rgbt-v1-20260101T000000")


def test_version_names_carry_the_utc_time_and_the_model_task(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a local-time stamp would be off by 14 hours
    time.tzset()
    try:
        registry = ModelRegistry(tmp_path)
        config = NetConfig(task="segmentation", class_names=("road",), width=0.125, image_size=(64, 80))
        info = registry.publish("3", ThreeBranchNet(config))
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = datetime.strptime(info.version.split("-")[2], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    assert abs(stamp - datetime.fromisoformat(info.created_at)) < timedelta(seconds=2)  # two clock reads
    assert registry.info("3", info.version).task == "segmentation"
