"""On-disk dataset readers against tiny fixtures written in each format's exact layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data.flir import FLIRAlignedReader
from model.data.io import encode_png, save_image, stretch_thermal
from model.data.kaist import KAISTReader
from model.data.layouts import load_conditions
from model.data.llvip import LLVIPReader
from model.data.mfnet import MFNetReader, mask_boxes
from model.data.readers import FORMATS, open_dataset
from model.data.sample import IGNORE_INDEX, PairReader

H, W = 32, 40


def _rgb(seed: int) -> np.ndarray:
    # Smooth content so JPEG round trips stay close; the value encodes the seed.
    base = np.full((H, W, 3), 40 + 20 * seed, np.uint8)
    base[:, :, 1] += 10
    return base


def _thermal_3ch(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def _voc(objects: list[tuple[str, tuple[float, float, float, float], int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, box, difficult in objects
    )
    return f"<annotation><size><width>{W}</width><height>{H}</height></size>{body}</annotation>"


# --------------------------------------------------------------------------------------------------- KAIST


BBGT_FRAME_A = """% bbGt version=3
person 2 3 10 20 0 0 0 0 0 0 0
people 20 4 8 12 0 0 0 0 0 0 0
person? 1 1 4 4 1 0 0 0 0 0 0
cyclist 30 10 6 10 2 0 0 0 0 0 0
person 25 2 10 40 2 0 0 0 0 1 0
"""

BBGT_VISIBLE = """% bbGt version=3
person 5 6 7 8 1 0 0 0 0 0 0
"""

BBGT_LWIR = """% bbGt version=3
person 6 6 7 8 1 0 0 0 0 0 0
"""


@pytest.fixture
def kaist_root(tmp_path: Path) -> Path:
    root = tmp_path / "kaist"
    frames = {"set00/V000/I01216": 0, "set03/V001/I00002": 1, "set06/V000/I00010": 2}
    for pair_id, seed in frames.items():
        set_name, video, frame = pair_id.split("/")
        save_image(root / "images" / set_name / video / "visible" / f"{frame}.jpg", _rgb(seed))
        # KAIST lwir frames are 3-channel JPEGs with equal channels.
        save_image(root / "images" / set_name / video / "lwir" / f"{frame}.jpg", _thermal_3ch(100 + seed))
        annotation = root / "annotations" / set_name / video / f"{frame}.txt"
        annotation.parent.mkdir(parents=True, exist_ok=True)
        annotation.write_text(BBGT_FRAME_A if seed == 0 else "% bbGt version=3\n")
    paired = root / "annotations-paired" / "set03" / "V001"
    (paired / "visible").mkdir(parents=True)
    (paired / "lwir").mkdir(parents=True)
    (paired / "visible" / "I00002.txt").write_text(BBGT_VISIBLE)
    (paired / "lwir" / "I00002.txt").write_text(BBGT_LWIR)
    (root / "imageSets").mkdir()
    (root / "imageSets" / "train-all-02.txt").write_text("set03/V001/I00002\nset00/V000/I01216\n\n")
    (root / "imageSets" / "test-all-20.txt").write_text("set06/V000/I00010\n")
    return root


def test_kaist_ids_boxes_ignore_occlusion(kaist_root: Path) -> None:
    reader = KAISTReader(kaist_root, "train")
    assert isinstance(reader, PairReader)
    assert reader.class_names == ["person"]
    assert reader.pair_ids == ["set03/V001/I00002", "set00/V000/I01216"]
    assert reader.conditions == ["night", "day"]
    assert len(reader) == 2

    record = reader[1]
    assert record.pair_id == "set00/V000/I01216"
    assert record.rgb.shape == (H, W, 3) and record.rgb.dtype == np.uint8
    assert record.thermal.shape == (H, W) and record.thermal.dtype == np.uint8
    assert abs(int(record.thermal.mean()) - 100) <= 2  # 3-channel lwir reduced to one channel
    np.testing.assert_array_equal(
        record.boxes,
        np.array(
            [[2, 3, 12, 23], [20, 4, 28, 16], [1, 1, 5, 5], [30, 10, 36, 20], [25, 2, 35, 32]], np.float32
        ),
    )  # the last box (y2 = 42) is clipped to the 32-pixel-high image
    assert record.boxes.dtype == np.float32
    np.testing.assert_array_equal(record.labels, [1, 1, 1, 1, 1])
    assert record.labels.dtype == np.int64
    # people / person? / cyclist are ignore regions, and so is a person with the ign column set.
    np.testing.assert_array_equal(record.ignore, [False, True, True, True, True])
    np.testing.assert_array_equal(record.meta["occlusion"], [0, 0, 1, 2, 2])
    assert record.meta["occlusion"].dtype == np.int64
    assert record.meta["annotation"] == "original"
    assert record.condition == "day"
    assert record.mask is None


def test_kaist_paired_annotations(kaist_root: Path) -> None:
    record = KAISTReader(kaist_root, "train")[0]
    assert record.meta["annotation"] == "paired"
    np.testing.assert_array_equal(record.boxes, [[5, 6, 12, 14]])  # the visible ones
    np.testing.assert_array_equal(record.meta["lwir_boxes"], [[6, 6, 13, 14]])
    np.testing.assert_array_equal(record.meta["lwir_labels"], [1])
    np.testing.assert_array_equal(record.meta["occlusion"], [1])
    assert record.condition == "night"


def test_kaist_test_split_list_path_and_sidecar(kaist_root: Path) -> None:
    assert KAISTReader(kaist_root, "test").pair_ids == ["set06/V000/I00010"]
    assert KAISTReader(kaist_root, "test").conditions == ["day"]
    custom = kaist_root / "mine.txt"
    custom.write_text("set06/V000/I00010\nset03/V001/I00002\n")
    (kaist_root / "conditions.json").write_text(json.dumps({"set06/V000/I00010": "dusk"}))
    reader = KAISTReader(kaist_root, custom)
    assert reader.pair_ids == ["set06/V000/I00010", "set03/V001/I00002"]
    assert reader.conditions == ["dusk", "night"]
    assert reader[0].condition == "dusk"
    assert KAISTReader(kaist_root, str(custom)).pair_ids == reader.pair_ids
    # A relative list path that is not under the working directory is looked up under the root.
    assert KAISTReader(kaist_root, "imageSets/test-all-20.txt").pair_ids == ["set06/V000/I00010"]


def test_kaist_missing_files(kaist_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test-all-01\.txt"):
        KAISTReader(kaist_root, "test-all-01")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        KAISTReader(tmp_path / "nowhere")
    lwir = kaist_root / "images" / "set00" / "V000" / "lwir" / "I01216.jpg"
    lwir.unlink()
    reader = KAISTReader(kaist_root, "train")  # lazy: construction does not touch images
    with pytest.raises(FileNotFoundError, match=r"lwir/I01216\.jpg[\s\S]*expected layout"):
        reader[1]
    with pytest.raises(IndexError):
        reader[2]


def test_kaist_rejects_malformed_lines(kaist_root: Path) -> None:
    (kaist_root / "annotations" / "set00" / "V000" / "I01216.txt").write_text("person 1 2\n")
    with pytest.raises(ValueError, match=r"I01216\.txt:1"):
        KAISTReader(kaist_root, "train")[1]


# ---------------------------------------------------------------------------------------------------- FLIR


@pytest.fixture
def flir_root(tmp_path: Path) -> Path:
    root = tmp_path / "flir"
    for number, seed in (("00002", 0), ("00007", 1), ("08865", 2)):
        save_image(root / "JPEGImages" / f"FLIR_{number}_RGB.jpg", _rgb(seed))
        save_image(root / "JPEGImages" / f"FLIR_{number}_PreviewData.jpeg", _thermal_3ch(90 + seed))
        objects = [
            ("person", (1, 2, 11, 22), 0),
            ("dog", (3, 3, 9, 9), 0),
            ("car", (15.5, 4, 39, 30), 0),
            ("bicycle", (20, 10, 45, 20), 1),
        ]
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"FLIR_{number}_PreviewData.xml").write_text(
            _voc(objects if seed == 0 else [])
        )
    (root / "align_train.txt").write_text("FLIR_00007\nFLIR_00002\n")
    (root / "align_validation.txt").write_text("FLIR_08865_PreviewData\n")
    return root


def test_flir_boxes_labels_difficult(flir_root: Path) -> None:
    reader = FLIRAlignedReader(flir_root, "train")
    assert isinstance(reader, PairReader)
    assert reader.class_names == ["person", "car", "bicycle"]
    assert reader.pair_ids == ["FLIR_00007", "FLIR_00002"]
    assert reader.conditions == [None, None]
    record = reader[1]
    assert record.rgb.shape == (H, W, 3) and record.thermal.shape == (H, W)
    # "dog" is skipped; the bicycle is clipped to the 40-pixel-wide image and flagged difficult.
    np.testing.assert_array_equal(record.boxes, [[1, 2, 11, 22], [15.5, 4, 39, 30], [20, 10, 40, 20]])
    np.testing.assert_array_equal(record.labels, [1, 2, 3])
    np.testing.assert_array_equal(record.ignore, [False, False, True])
    assert record.condition is None
    empty = reader[0]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and empty.ignore.shape == (0,)


def test_flir_splits_and_sidecar(flir_root: Path) -> None:
    # No align_test.txt: "test" falls back to the validation list; suffixed ids are normalised.
    for split in ("val", "validation", "test"):
        assert FLIRAlignedReader(flir_root, split).pair_ids == ["FLIR_08865"]
    (flir_root / "align_test.txt").write_text("FLIR_00002\n")
    assert FLIRAlignedReader(flir_root, "test").pair_ids == ["FLIR_00002"]
    (flir_root / "conditions.json").write_text(json.dumps({"FLIR_00002": "night"}))
    assert load_conditions(flir_root) == {"FLIR_00002": "night"}
    reader = FLIRAlignedReader(flir_root, "train")
    assert reader.conditions == [None, "night"]
    assert reader[1].condition == "night"


def test_flir_16bit_thermal_decoded_through_io(flir_root: Path) -> None:
    raw = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7 + 20000).astype(np.uint16)
    # The reader decodes by content, so a 16-bit PNG under the thermal name goes through io's stretch.
    (flir_root / "JPEGImages" / "FLIR_00002_PreviewData.jpeg").write_bytes(encode_png(raw))
    record = FLIRAlignedReader(flir_root, "train")[1]
    np.testing.assert_array_equal(record.thermal, stretch_thermal(raw))


def test_flir_refuses_external_entities(flir_root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("car")
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotation><object><name>&x;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
        "<ymax>5</ymax></bndbox></object></annotation>"
    )
    (flir_root / "Annotations" / "FLIR_00002_PreviewData.xml").write_text(xml)
    with pytest.raises(ValueError, match=r"FLIR_00002_PreviewData\.xml"):
        FLIRAlignedReader(flir_root, "train")[1]
    (flir_root / "Annotations" / "FLIR_00002_PreviewData.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="malformed"):
        FLIRAlignedReader(flir_root, "train")[1]


def test_flir_missing_files(flir_root: Path) -> None:
    (flir_root / "Annotations" / "FLIR_00007_PreviewData.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"FLIR_00007_PreviewData\.xml"):
        FLIRAlignedReader(flir_root, "train")[0]
    with pytest.raises(FileNotFoundError, match=r"align_extra\.txt"):
        FLIRAlignedReader(flir_root, "extra")
    (flir_root / "align_train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"align_train\.txt[\s\S]*expected layout"):
        FLIRAlignedReader(flir_root, "train")


# --------------------------------------------------------------------------------------------------- LLVIP


@pytest.fixture
def llvip_root(tmp_path: Path) -> Path:
    root = tmp_path / "llvip"
    for split, names in (("train", ("010002", "010001")), ("test", ("190001",))):
        for seed, name in enumerate(names):
            save_image(root / "visible" / split / f"{name}.jpg", _rgb(seed))
            save_image(root / "infrared" / split / f"{name}.jpg", _thermal_3ch(120 + seed))
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            objects = (
                [("person", (4, 5, 14, 30), 0), ("person", (20, 1, 30, 9), 1)] if name == "010001" else []
            )
            (root / "Annotations" / f"{name}.xml").write_text(_voc(objects))
    return root


def test_llvip_reads_split_folders(llvip_root: Path) -> None:
    reader = LLVIPReader(llvip_root, "train")
    assert isinstance(reader, PairReader)
    assert reader.class_names == ["person"]
    assert reader.pair_ids == ["010001", "010002"]  # sorted file names
    assert reader.conditions == ["night", "night"]
    record = reader[0]
    assert record.rgb.shape == (H, W, 3) and record.thermal.shape == (H, W)
    np.testing.assert_array_equal(record.boxes, [[4, 5, 14, 30], [20, 1, 30, 9]])
    np.testing.assert_array_equal(record.labels, [1, 1])
    np.testing.assert_array_equal(record.ignore, [False, True])
    assert record.condition == "night"
    assert LLVIPReader(llvip_root, "test").pair_ids == ["190001"]


def test_llvip_list_file_sidecar_and_errors(llvip_root: Path) -> None:
    listing = llvip_root / "subset.txt"
    listing.write_text("190001\n010002\n")
    (llvip_root / "conditions.json").write_text(json.dumps({"190001": "day"}))
    reader = LLVIPReader(llvip_root, listing)
    assert reader.pair_ids == ["190001", "010002"]
    assert reader.conditions == ["day", "night"]
    assert reader[0].rgb.shape == (H, W, 3)  # found under test/
    with pytest.raises(ValueError, match="unknown LLVIP split 'val'"):
        LLVIPReader(llvip_root, "val")
    (llvip_root / "infrared" / "train" / "010002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"infrared/train/010002\.jpg"):
        reader[1]
    with pytest.raises(FileNotFoundError, match=r"visible/Annotations[\s\S]*expected layout"):
        LLVIPReader(llvip_root / "visible", "train")  # a root without Annotations/ is not an LLVIP root


# --------------------------------------------------------------------------------------------------- MFNet


def _mfnet_label() -> np.ndarray:
    label = np.zeros((H, W), np.uint8)
    label[2:6, 3:9] = 1  # car: rows 2-5, cols 3-8
    label[20:30, 30:33] = 1  # a second car
    label[10:25, 12:16] = 2  # person
    label[0, 39] = 3  # one-pixel bike: under 4 pixels, no box
    label[28:30, 0:2] = 3  # 4-pixel bike: kept
    label[15:20, 20:30] = 4  # curve: segmentation only
    label[31, 0:5] = 9  # out-of-range id -> ignore
    return label


@pytest.fixture
def mfnet_root(tmp_path: Path) -> Path:
    root = tmp_path / "mfnet"
    rng = np.random.default_rng(0)
    for name in ("00001D", "00002N", "00003D"):
        image = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
        save_image(root / "images" / f"{name}.png", image)
        save_image(root / "labels" / f"{name}.png", _mfnet_label())
    (root / "train.txt").write_text("00002N\n00001D\n")
    (root / "val.txt").write_text("00003D\n")
    (root / "test.txt").write_text("00001D\n")
    return root


def test_mfnet_mask_channels_and_derived_boxes(mfnet_root: Path) -> None:
    reader = MFNetReader(mfnet_root, "train")
    assert isinstance(reader, PairReader)
    assert reader.class_names == [
        *("car", "person", "bike", "curve"),
        *("car_stop", "guardrail", "color_cone", "bump"),
    ]
    assert reader.pair_ids == ["00002N", "00001D"]
    assert reader.conditions == ["night", "day"]
    record = reader[1]
    image = np.random.default_rng(0).integers(0, 256, (H, W, 4), dtype=np.uint8)  # the fixture's first image
    np.testing.assert_array_equal(record.rgb, image[:, :, :3])
    np.testing.assert_array_equal(record.thermal, image[:, :, 3])
    expected_mask = _mfnet_label().astype(np.int64)
    expected_mask[expected_mask == 9] = IGNORE_INDEX
    assert record.mask is not None and record.mask.dtype == np.int64
    np.testing.assert_array_equal(record.mask, expected_mask)
    np.testing.assert_array_equal(
        record.boxes, [[3, 2, 9, 6], [30, 20, 33, 30], [12, 10, 16, 25], [0, 28, 2, 30]]
    )
    np.testing.assert_array_equal(record.labels, [1, 1, 2, 3])
    np.testing.assert_array_equal(record.ignore, [False] * 4)
    assert record.condition == "day" and record.meta["derived_boxes"] is True


def test_mfnet_splits_sidecar_and_16bit(mfnet_root: Path) -> None:
    assert MFNetReader(mfnet_root, "val").pair_ids == ["00003D"]
    assert MFNetReader(mfnet_root, "validation").pair_ids == ["00003D"]
    assert MFNetReader(mfnet_root, "test").pair_ids == ["00001D"]
    (mfnet_root / "conditions.json").write_text(json.dumps({"00001D": "night"}))
    assert MFNetReader(mfnet_root, "train").conditions == ["night", "night"]
    wide = np.zeros((H, W, 4), np.uint16)
    wide[:, :, :3] = 257 * 200
    wide[:, :, 3] = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 11 + 3000
    save_image(mfnet_root / "images" / "00003D.png", wide)
    record = MFNetReader(mfnet_root, "val")[0]
    np.testing.assert_array_equal(record.rgb, np.full((H, W, 3), 200, np.uint8))
    np.testing.assert_array_equal(record.thermal, stretch_thermal(wide[:, :, 3]))


def test_mfnet_errors(mfnet_root: Path) -> None:
    save_image(mfnet_root / "images" / "00003D.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 4 channels"):
        MFNetReader(mfnet_root, "val")[0]
    (mfnet_root / "labels" / "00001D.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels/00001D\.png"):
        MFNetReader(mfnet_root, "test")[0]
    with pytest.raises(FileNotFoundError, match=r"test_night\.txt"):
        MFNetReader(mfnet_root, "test_night")


def test_mask_boxes_min_area() -> None:
    mask = np.zeros((8, 8), np.int64)
    mask[0:2, 0:2] = 2
    mask[5, 5:8] = 2
    boxes, labels = mask_boxes(mask)
    np.testing.assert_array_equal(boxes, [[0, 0, 2, 2]])
    np.testing.assert_array_equal(labels, [2])


# ------------------------------------------------------------------------------------------------ registry


def test_open_dataset_dispatch(kaist_root: Path, flir_root: Path, llvip_root: Path, mfnet_root: Path) -> None:
    assert FORMATS == ("kaist", "flir-aligned", "llvip", "mfnet")
    roots = {"kaist": kaist_root, "flir-aligned": flir_root, "llvip": llvip_root, "mfnet": mfnet_root}
    types = {
        "kaist": KAISTReader,
        "flir-aligned": FLIRAlignedReader,
        "llvip": LLVIPReader,
        "mfnet": MFNetReader,
    }
    for name in FORMATS:
        reader = open_dataset(roots[name], name, "train")
        assert type(reader) is types[name] and len(reader) == 2
    with pytest.raises(ValueError, match=r"unknown dataset format 'coco'.*kaist, flir-aligned, llvip, mfnet"):
        open_dataset(kaist_root, "coco", "train")


def test_load_conditions_validation(tmp_path: Path) -> None:
    assert load_conditions(tmp_path) == {}
    (tmp_path / "conditions.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"conditions\.json"):
        load_conditions(tmp_path)
    (tmp_path / "conditions.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_conditions(tmp_path)
