import json
import os
from pathlib import Path

import pytest

from ls_backend.registry import ModelRegistry, ProjectInfo, RegistryError
from model.config import NetConfig
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
