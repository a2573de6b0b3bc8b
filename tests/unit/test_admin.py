"""Project set-up helpers that need no Label Studio: pair discovery, task building, ground-truth results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ls_backend.admin import (
    AdminError,
    find_pairs,
    ground_truth_result,
    local_files_url,
    read_label_config,
    tasks_from_folder,
    tasks_from_json,
    write_synthetic_pairs,
)
from ls_backend.cli import main
from ls_backend.convert import annotation_to_target, class_names_from_schema
from model.data.io import load_rgb, load_thermal
from model.data.synthetic import SYNTH_CLASSES


def test_pairs_are_matched_by_name_across_modality_folders(tmp_path: Path) -> None:
    written = write_synthetic_pairs(tmp_path / "set", 4, seed=3, image_size=(32, 40))
    (tmp_path / "set" / "rgb" / "orphan.png").write_bytes(b"not paired")
    pairs = find_pairs(tmp_path / "set")
    assert [p.name for p in pairs] == [w.name for w in written]
    rgb, thermal = load_rgb(pairs[0].rgb), load_thermal(pairs[0].thermal)
    assert rgb.shape == (32, 40, 3) and thermal.shape == (32, 40)


def test_other_modality_folder_names_are_recognised(tmp_path: Path) -> None:
    write_synthetic_pairs(tmp_path / "set", 2, image_size=(32, 40))
    (tmp_path / "set" / "rgb").rename(tmp_path / "set" / "visible")
    (tmp_path / "set" / "thermal").rename(tmp_path / "set" / "lwir")
    assert len(find_pairs(tmp_path / "set")) == 2


def test_a_folder_without_modality_folders_is_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(AdminError, match="thermal"):
        find_pairs(tmp_path)
    with pytest.raises(AdminError, match="not a folder"):
        find_pairs(tmp_path / "missing")


def test_tasks_reference_local_files_under_the_document_root(tmp_path: Path) -> None:
    write_synthetic_pairs(tmp_path / "root" / "my set", 2, image_size=(32, 40))
    _, schema = read_label_config("synthetic_detection")
    tasks = tasks_from_folder(tmp_path / "root" / "my set", schema, tmp_path / "root")
    assert tasks[0] == {
        "rgb": "/data/local-files/?d=my%20set/rgb/pair_00000.png",
        "thermal": "/data/local-files/?d=my%20set/thermal/pair_00000.png",
        "pair": "pair_00000",
    }
    with pytest.raises(AdminError, match="LOCAL_FILES_DOCUMENT_ROOT"):
        local_files_url(tmp_path / "elsewhere.png", tmp_path / "root")


def test_task_lists_must_name_both_images(tmp_path: Path) -> None:
    _, schema = read_label_config("flir_detection")
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            [
                {"rgb": "http://a/1.png", "thermal": "http://a/1t.png"},
                {"data": {"rgb": "http://a/2.png", "thermal": "http://a/2t.png"}},
            ]
        )
    )
    assert [t["rgb"] for t in tasks_from_json(good, schema)] == ["http://a/1.png", "http://a/2.png"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"rgb": "http://a/1.png"}]))
    with pytest.raises(AdminError, match="task 0"):
        tasks_from_json(bad, schema)
    bad.write_text("{not json")
    with pytest.raises(AdminError, match="cannot read"):
        tasks_from_json(bad, schema)


def test_unknown_label_config_names_the_known_ones() -> None:
    with pytest.raises(AdminError, match="flir_detection"):
        read_label_config("no_such_config")


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_ground_truth_results_round_trip_to_the_generator_targets(tmp_path: Path, task: str) -> None:
    pairs = write_synthetic_pairs(tmp_path, 3, seed=5, image_size=(48, 64))
    _, schema = read_label_config(f"synthetic_{task}")
    class_names = class_names_from_schema(schema)
    for pair in pairs:
        result = ground_truth_result(pair, schema)
        target, unknown = annotation_to_target({"result": result}, schema, class_names, pair.size)
        assert not unknown
        if task == "detection":
            names = [class_names[i - 1] for i in target["labels"]]
            assert names == [SYNTH_CLASSES[i - 1] for i in pair.labels]
            np.testing.assert_allclose(target["boxes"], pair.boxes, atol=0.05)
        else:
            expected = np.array(["", *SYNTH_CLASSES], dtype=object)[np.clip(pair.mask, 0, None)]
            got = np.array(["", *class_names], dtype=object)[np.clip(target["mask"], 0, None)]
            assert (got == expected).mean() > 0.999


def test_project_command_without_a_token_names_what_is_missing(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    code = main(["project", "create", "--title", "t", "--config", "flir_detection"])
    assert code == 2
    assert "--api-key" in capsys.readouterr().err


def test_project_command_with_images_needs_the_document_root(capsys, tmp_path: Path) -> None:
    code = main(
        [
            "project",
            "create",
            "--title",
            "t",
            "--config",
            "flir_detection",
            "--images",
            str(tmp_path),
            "--label-studio-url",
            "http://127.0.0.1:1",
            "--api-key",
            "x",
        ]
    )
    assert code == 2
    assert "--document-root" in capsys.readouterr().err


def test_an_interrupt_while_an_error_is_reported_still_exits_as_an_interrupt(monkeypatch) -> None:
    """SIGTERM raises KeyboardInterrupt wherever the command is; landing while main reports an error, it
    must not escape main (Python would then die of SIGINT, exit -2, instead of exiting 130). Afterwards the
    process has the SIGTERM handling it had before (not "ignored": forked children would inherit that)."""
    import signal
    import sys

    class InterruptedStream:
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

        def flush(self) -> None:
            pass

    def caller_handler(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGTERM, caller_handler)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setattr(sys, "stderr", InterruptedStream())  # the error (no token) is being printed
    try:
        assert main(["project", "create", "--title", "t", "--config", "flir_detection"]) == 130
        assert signal.getsignal(signal.SIGTERM) is caller_handler
    finally:
        signal.signal(signal.SIGTERM, before)
