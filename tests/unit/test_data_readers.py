"""Reader options beyond tests/unit/test_readers.py: KAIST's "reasonable" ignore rule and the released
``annotations_paired`` folder, and the ``open_dataset`` factory (options, "synthetic", errors)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.data.io import save_jpeg
from model.data.kaist import KAISTReader
from model.data.readers import ALL_FORMATS, FORMATS, open_dataset

H, W = 80, 64  # tall enough for a 55-pixel person

FRAME = """% bbGt version=3
person 2 2 10 60 0 0 0 0 0 0 0
person 14 2 10 40 0 0 0 0 0 0 0
person 26 2 10 60 1 0 0 0 0 0 0
person 38 2 10 60 2 0 0 0 0 0 0
people 50 2 10 60 0 0 0 0 0 0 0
"""

VISIBLE = """% bbGt version=3
person 2 2 10 20 0 0 0 0 0 0 0
person 100 2 10 20 0 0 0 0 0 0 0
person 20 30 8 30 1 0 0 0 0 0 0
"""

LWIR = """% bbGt version=3
person 4 3 10 20 0 0 0 0 0 0 0
person 101 2 10 20 0 0 0 0 0 0 0
person 22 31 8 30 2 0 0 0 0 0 0
"""


def write_kaist(root: Path, paired_folder: str | None = None) -> Path:
    """Two frames in KAIST's layout: set01 (day) with FRAME, set10 (night) optionally with paired files."""
    for pair_id, text in (("set01/V002/I00100", FRAME), ("set10/V000/I00004", FRAME)):
        set_name, video, frame = pair_id.split("/")
        images = root / "images" / set_name / video
        save_jpeg(images / "visible" / f"{frame}.jpg", np.full((H, W, 3), 120, np.uint8))
        save_jpeg(images / "lwir" / f"{frame}.jpg", np.full((H, W, 3), 60, np.uint8))
        annotation = root / "annotations" / set_name / video / f"{frame}.txt"
        annotation.parent.mkdir(parents=True, exist_ok=True)
        annotation.write_text(text)
    if paired_folder:
        paired = root / paired_folder / "set10" / "V000"
        for modality, text in (("visible", VISIBLE), ("lwir", LWIR)):
            (paired / modality).mkdir(parents=True)
            (paired / modality / "I00004.txt").write_text(text)
    (root / "imageSets").mkdir(parents=True, exist_ok=True)
    (root / "imageSets" / "train-all-02.txt").write_text("set01/V002/I00100\nset10/V000/I00004\n")
    return root


def test_kaist_reasonable_marks_short_and_heavily_occluded_persons(tmp_path: Path) -> None:
    root = write_kaist(tmp_path / "kaist")
    plain = KAISTReader(root, "train")[0]
    # Default: only the non-person label is ignored; occlusion is kept for the metric.
    np.testing.assert_array_equal(plain.ignore, [False, False, False, False, True])
    np.testing.assert_array_equal(plain.meta["occlusion"], [0, 0, 1, 2, 0])
    reasonable = KAISTReader(root, "train", reasonable=True)[0]
    # 40 px tall (< 55) and occ == 2 are ignored now; partial occlusion (1) still counts.
    np.testing.assert_array_equal(reasonable.ignore, [False, True, False, True, True])
    np.testing.assert_array_equal(reasonable.boxes, plain.boxes)
    taller = KAISTReader(root, "train", reasonable=True, min_height=61)[0]
    np.testing.assert_array_equal(taller.ignore, [True, True, True, True, True])
    via_factory = open_dataset(root, "kaist", "train", reasonable=True)[0]
    np.testing.assert_array_equal(via_factory.ignore, reasonable.ignore)


@pytest.mark.parametrize("folder", ["annotations_paired", "annotations-paired"])
def test_kaist_paired_folder_names_and_lwir_pairing(tmp_path: Path, folder: str) -> None:
    reader = KAISTReader(write_kaist(tmp_path / "kaist", folder), "train")
    assert reader.conditions == ["day", "night"]
    record = reader[1]
    assert record.meta["annotation"] == "paired"
    # The visible box at x = 100 lies outside the 64-pixel-wide image: dropped, and its lwir partner too.
    np.testing.assert_array_equal(record.boxes, [[2, 2, 12, 22], [20, 30, 28, 60]])
    np.testing.assert_array_equal(record.meta["lwir_boxes"], [[4, 3, 14, 23], [22, 31, 30, 61]])
    np.testing.assert_array_equal(record.meta["lwir_occlusion"], [0, 2])
    np.testing.assert_array_equal(record.meta["occlusion"], [0, 1])
    assert len(record.meta["lwir_labels"]) == len(record.meta["lwir_ignore"]) == 2
    assert reader[0].meta["annotation"] == "original"


def test_open_dataset_errors_name_what_is_missing(tmp_path: Path) -> None:
    assert "synthetic" in ALL_FORMATS and set(FORMATS) < set(ALL_FORMATS)
    with pytest.raises(ValueError, match=r"unknown dataset format 'voc'.*synthetic"):
        open_dataset(tmp_path, "voc", "train")
    expectations = {
        "kaist": r"images",
        "flir-aligned": r"JPEGImages",
        "llvip": r"Annotations",
        "mfnet": r"images",
        "synthetic": r"synthetic\.json",
    }
    for format_name, missing in expectations.items():
        with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))}.*{missing}"):
            open_dataset(tmp_path, format_name, "train")
    with pytest.raises(TypeError, match="takes no options"):
        open_dataset(tmp_path, "flir-aligned", "train", reasonable=True)


def test_open_dataset_synthetic_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "synthetic.json").write_text("{}")
    with pytest.raises(ValueError, match="manifest"):
        open_dataset(tmp_path, "synthetic", "train")
    (tmp_path / "synthetic.json").write_text(json.dumps({"format": "coco"}))
    with pytest.raises(ValueError, match="'coco'"):
        open_dataset(tmp_path, "synthetic", "train")


@pytest.mark.parametrize("module", ["kaist", "flir", "llvip", "mfnet"])
def test_a_reader_does_not_import_the_registry(module: str) -> None:
    """The registry imports the readers, never the other way round (no import cycle)."""
    code = f"import sys, model.data.{module}; sys.exit('model.data.readers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
