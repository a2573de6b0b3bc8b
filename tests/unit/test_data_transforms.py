import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.data.dataset import PairDataset, collate_pairs, to_tensors
from model.data.memory import InMemoryReader
from model.data.sample import IGNORE_INDEX, PairRecord
from model.data.transforms import (
    Compose,
    PhotometricJitter,
    RandomCrop,
    RandomExpand,
    RandomHorizontalFlip,
    Resize,
    eval_transform,
    train_transform,
)


def marked_pair(height=60, width=80, box=(20, 10, 36, 40)) -> PairRecord:
    """A pair whose object is a bright rectangle at ``box`` in both modalities and in the mask."""
    x1, y1, x2, y2 = box
    rgb = np.zeros((height, width, 3), np.uint8)
    thermal = np.zeros((height, width), np.uint8)
    mask = np.zeros((height, width), np.int64)
    rgb[y1:y2, x1:x2] = 255
    thermal[y1:y2, x1:x2] = 200
    mask[y1:y2, x1:x2] = 1
    return PairRecord(
        pair_id="p",
        rgb=rgb,
        thermal=thermal,
        boxes=np.array([box], np.float32),
        labels=np.array([1]),
        ignore=np.array([False]),
        mask=mask,
        meta={"occlusion": np.array([2])},
    )


def extent(on: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(on)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def assert_aligned(record: PairRecord) -> None:
    """The marker has the same extent (within a pixel) in RGB, thermal, mask and box."""
    rgb_extent = extent(record.rgb[:, :, 0] > 127)
    np.testing.assert_allclose(extent(record.thermal > 100), rgb_extent, atol=1)
    np.testing.assert_allclose(extent(record.mask == 1), rgb_extent, atol=1)
    np.testing.assert_allclose(record.boxes[0], rgb_extent, atol=1.5)


@pytest.mark.parametrize(
    "transform",
    [
        RandomHorizontalFlip(p=1.0),
        RandomExpand(max_ratio=3.0, p=1.0),
        Resize((37, 51)),
        Compose([RandomExpand(2.0, p=1.0), RandomHorizontalFlip(p=1.0), Resize((64, 80))]),
    ],
)
def test_geometry_is_identical_across_modalities(transform):
    for seed in range(5):
        out = transform(marked_pair(), np.random.default_rng(seed))
        assert_aligned(out)
        assert out.rgb.shape[:2] == out.thermal.shape == out.mask.shape


def test_flip_moves_box_to_mirror_position():
    out = RandomHorizontalFlip(p=1.0)(marked_pair(), np.random.default_rng(0))
    np.testing.assert_allclose(out.boxes[0], [80 - 36, 10, 80 - 20, 40])


def test_expand_fills_mask_with_ignore():
    out = RandomExpand(max_ratio=3.0, p=1.0)(marked_pair(), np.random.default_rng(1))
    assert out.size[0] > 60
    assert (out.mask == IGNORE_INDEX).sum() == out.mask.size - 60 * 80


def test_crop_keeps_alignment_or_drops_box_with_its_metadata():
    kept = 0
    for seed in range(40):
        out = RandomCrop(p=1.0)(marked_pair(), np.random.default_rng(seed))
        # A lone box is never cropped away: a window must keep at least one box centre.
        assert len(out.boxes) == len(out.labels) == len(out.ignore) == len(out.meta["occlusion"]) == 1
        if out.size != (60, 80):
            kept += 1
        assert_aligned(out)
    assert kept > 0

    # Two boxes apart: a window that leaves a box's centre out drops that box (however much of it shows)
    # with its label, flag and meta; a box kept has its centre inside, so at least half of each side.
    pair = marked_pair().replace(
        boxes=np.array([[2, 2, 30, 30], [44, 26, 78, 58]], np.float32),
        labels=np.array([1, 2]),
        ignore=np.array([False, True]),
        meta={"occlusion": np.array([0, 2]), "scene": "night"},
    )
    dropped = 0
    for seed in range(60):
        out = RandomCrop(p=1.0)(pair, np.random.default_rng(seed))
        assert len(out.boxes) == len(out.labels) == len(out.ignore) == len(out.meta["occlusion"])
        assert out.meta["scene"] == "night"
        dropped += len(out.boxes) == 1
        for box, label, ignore, occlusion in zip(
            out.boxes, out.labels, out.ignore, out.meta["occlusion"], strict=True
        ):
            original = int(label) - 1
            assert ignore == pair.ignore[original] and occlusion == pair.meta["occlusion"][original]
            side = pair.boxes[original, 2:] - pair.boxes[original, :2]
            assert (box[2:] - box[:2] >= side / 2 - 1).all(), (seed, box, pair.boxes[original])
    assert dropped > 0


def test_degenerate_boxes_dropped_on_resize():
    record = marked_pair().replace(
        boxes=np.array([[20, 10, 36, 40], [5, 5, 5.5, 30]], np.float32),
        labels=np.array([1, 2]),
        ignore=np.array([False, True]),
        meta={"occlusion": np.array([0, 1])},
    )
    out = Resize((30, 40))(record)
    assert out.labels.tolist() == [1] and out.meta["occlusion"].tolist() == [0]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.tuples(st.integers(0, 60), st.integers(0, 40), st.integers(5, 20), st.integers(5, 20)),
)
def test_augmented_boxes_stay_inside_the_image(seed, geometry):
    x, y, w, h = geometry
    record = marked_pair(box=(x, y, min(x + w, 80), min(y + h, 60)))
    out = train_transform((48, 64))(record, np.random.default_rng(seed))
    assert out.rgb.shape == (48, 64, 3) and out.thermal.shape == (48, 64)
    if len(out.boxes):
        assert (out.boxes[:, 0] >= 0).all() and (out.boxes[:, 2] <= 64).all()
        assert (out.boxes[:, 1] >= 0).all() and (out.boxes[:, 3] <= 48).all()
        assert ((out.boxes[:, 2] - out.boxes[:, 0]) >= 1).all()


def test_resize_brings_mismatched_thermal_onto_rgb_grid():
    record = marked_pair()
    record = record.replace(thermal=np.zeros((30, 40), np.uint8))
    out = eval_transform((60, 80))(record)
    assert out.thermal.shape == (60, 80)


def test_photometric_jitter_is_photometric_only():
    record = marked_pair()
    out = PhotometricJitter(p=1.0)(record, np.random.default_rng(0))
    np.testing.assert_array_equal(out.boxes, record.boxes)
    np.testing.assert_array_equal(out.mask, record.mask)


def test_to_tensors_and_collate_shapes():
    rgb, thermal, target = to_tensors(marked_pair())
    assert rgb.shape == (3, 60, 80) and thermal.shape == (1, 60, 80)
    assert rgb.max() == 1.0 and thermal.max() == pytest.approx(200 / 255)
    assert target["boxes"].shape == (1, 4) and target["mask"].dtype == torch.int64
    assert target["occlusion"].tolist() == [2]
    dataset = PairDataset(InMemoryReader([marked_pair(), marked_pair()], ["thing"]), eval_transform((32, 40)))
    batch_rgb, batch_thermal, targets = collate_pairs([dataset[0], dataset[1]])
    assert batch_rgb.shape == (2, 3, 32, 40) and batch_thermal.shape == (2, 1, 32, 40)
    assert targets[0]["orig_size"] == (60, 80) and targets[0]["size"] == (32, 40)


def test_dataset_augmentation_reproducible_from_torch_seed():
    dataset = PairDataset(InMemoryReader([marked_pair()], ["thing"]), train_transform((48, 64)))
    torch.manual_seed(3)
    first = dataset[0][0]
    torch.manual_seed(3)
    again = dataset[0][0]
    torch.testing.assert_close(first, again)


def test_photometric_jitter_is_rgb_only_by_default():
    pair = marked_pair()
    record = pair.replace(rgb=pair.rgb // 2 + 60)  # mid-range, so no draw is lost to clipping
    changed_rgb = 0
    for seed in range(10):
        out = PhotometricJitter(p=1.0)(record, np.random.default_rng(seed))
        np.testing.assert_array_equal(out.thermal, record.thermal)  # temperatures are not jittered
        changed_rgb += not np.array_equal(out.rgb, record.rgb)
    assert changed_rgb >= 8
    both = PhotometricJitter(p=1.0, thermal=True)(record, np.random.default_rng(0))
    assert not np.array_equal(both.thermal, record.thermal)


def test_train_transform_rng_makes_a_reproducible_stream():
    record = marked_pair()
    a = train_transform((48, 64), rng=np.random.default_rng(7))
    b = train_transform((48, 64), rng=np.random.default_rng(7))
    first = [a(record) for _ in range(6)]
    second = [b(record) for _ in range(6)]
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x.rgb, y.rgb)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    # The stream moves on: successive calls draw different augmentations.
    assert any(not np.array_equal(first[0].rgb, other.rgb) for other in first[1:])
    # An explicit rng wins over the bound one.
    np.testing.assert_array_equal(
        a(record, np.random.default_rng(1)).rgb, b(record, np.random.default_rng(1)).rgb
    )


def test_expand_crop_flip_resize_keep_segmentation_masks_paired():
    # A pair without boxes (segmentation only) still gets identical geometry on images and mask.
    record = marked_pair().replace(
        boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), ignore=np.zeros(0, bool), meta={}
    )
    for seed in range(20):
        out = train_transform((40, 56))(record, np.random.default_rng(seed))
        assert out.mask.shape == out.thermal.shape == out.rgb.shape[:2] == (40, 56)
        on = out.mask == 1
        if on.sum() > 4:
            # Mask pixels of the marker are marker pixels in both images (no half-pixel drift of the
            # nearest-neighbour mask against the bilinear images).
            assert (out.rgb[:, :, 0][on] > 0).all() and (out.thermal[on] > 0).all()
            assert set(np.unique(out.mask)) <= {0, 1, IGNORE_INDEX}
