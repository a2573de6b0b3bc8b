"""write_dataset -> open_dataset: synthetic pairs written in a real format read back equal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data.flir import FLIRAlignedReader
from model.data.mfnet import MFNetReader, mask_boxes
from model.data.readers import open_dataset
from model.data.synthetic import MFNET_IDS, SYNTH_CLASSES, SyntheticRGBT, write_dataset

SIZE = (48, 64)
COUNTS = {"train": 5, "val": 2, "test": 6}
SEED = 4


def written(tmp_path: Path, format_name: str) -> Path:
    return write_dataset(
        tmp_path / format_name,
        n_train=COUNTS["train"],
        n_val=COUNTS["val"],
        n_test=COUNTS["test"],
        seed=SEED,
        image_size=SIZE,
        format=format_name,
    )


def originals(split: str) -> SyntheticRGBT:
    return SyntheticRGBT(COUNTS[split], SEED, split=split, image_size=SIZE)


def test_flir_aligned_layout_and_exact_boxes(tmp_path: Path) -> None:
    # (Pixels and conditions of both formats: test_data_synthetic.py's round trip.)
    root = written(tmp_path, "flir-aligned")
    for name in ("align_train.txt", "align_validation.txt", "align_test.txt", "conditions.json"):
        assert (root / name).is_file(), name
    reader = open_dataset(root, "flir-aligned", "test")
    assert isinstance(reader, FLIRAlignedReader) and reader.class_names == list(SYNTH_CLASSES)
    first = reader.pair_ids[0]
    assert (root / "JPEGImages" / f"{first}_RGB.jpg").is_file()
    assert (root / "JPEGImages" / f"{first}_PreviewData.jpeg").is_file()
    assert (root / "Annotations" / f"{first}_PreviewData.xml").is_file()
    source = originals("test")
    for i in range(len(reader)):
        got, want = reader[i], source[i]
        np.testing.assert_array_equal(got.boxes, want.boxes)  # integer boxes survive the XML exactly
        assert got.boxes.dtype == np.float32
        # Full-chroma quality-97 JPEG: pixels within a few levels.
        assert np.abs(got.rgb.astype(int) - want.rgb).mean() < 3
        assert np.abs(got.thermal.astype(int) - want.thermal).mean() < 2


def test_mfnet_boxes_are_the_mask_components(tmp_path: Path) -> None:
    root = written(tmp_path, "mfnet")
    reader = open_dataset(root, "mfnet", "train")
    assert isinstance(reader, MFNetReader)
    lut = np.zeros(256, np.int64)
    for synth_id, mfnet_id in MFNET_IDS.items():
        lut[synth_id] = mfnet_id
    assert reader.class_names[int(lut[1]) - 1] == "person"
    assert reader.class_names[int(lut[2]) - 1] == "car"
    assert reader.class_names[int(lut[3]) - 1] == "bike"
    source = originals("train")
    for i in range(len(reader)):
        got, want = reader[i], source[i]
        # MFNet has no boxes: the reader derives them from connected components of the mask, so they are
        # the generator's visible extents (occluded parts cut, touching objects of a class merged).
        boxes, labels = mask_boxes(lut[want.mask])
        np.testing.assert_array_equal(got.boxes, boxes)
        np.testing.assert_array_equal(got.labels, labels)
        assert len(got.boxes) >= 1


@pytest.mark.parametrize("format_name", ["flir-aligned", "mfnet"])
def test_synthetic_format_opens_what_was_written(tmp_path: Path, format_name: str) -> None:
    root = written(tmp_path, format_name)
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["format"] == format_name and manifest["seed"] == SEED
    for split in ("train", "val", "test"):
        direct = open_dataset(root, format_name, split)
        via_manifest = open_dataset(root, "synthetic", split)
        assert type(via_manifest) is type(direct)
        assert via_manifest.pair_ids == direct.pair_ids


def test_writing_is_deterministic(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n_train=3, seed=9, image_size=SIZE, format="mfnet")
    b = write_dataset(tmp_path / "b", n_train=3, seed=9, image_size=SIZE, format="mfnet")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_unknown_format_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        write_dataset(tmp_path, n_train=1, format="kaist")
