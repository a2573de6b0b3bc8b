"""Records to tensors: to_tensors, PairDataset (seeded per item, Subset), collate_pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from model.data.dataset import PairDataset, collate_pairs, to_tensors
from model.data.memory import InMemoryReader
from model.data.sample import IGNORE_INDEX, PairRecord
from model.data.synthetic import SyntheticRGBT
from model.data.transforms import eval_transform, train_transform


def record(pair_id: str = "a", size: tuple[int, int] = (30, 40), with_mask: bool = True) -> PairRecord:
    height, width = size
    rng = np.random.default_rng(len(pair_id))
    mask = np.zeros(size, np.int64)
    mask[5:15, 10:20] = 2
    mask[0, :] = IGNORE_INDEX
    return PairRecord(
        pair_id=pair_id,
        rgb=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        thermal=rng.integers(0, 256, size, dtype=np.uint8),
        boxes=np.array([[10, 5, 20, 15], [1, 1, 4, 9]], np.float32),
        labels=np.array([2, 1], np.int64),
        ignore=np.array([False, True]),
        mask=mask if with_mask else None,
        condition="night",
    )


def test_to_tensors_types_ranges_and_keys() -> None:
    source = record()
    rgb, thermal, target = to_tensors(source)
    assert rgb.shape == (3, 30, 40) and rgb.dtype == torch.float32
    assert thermal.shape == (1, 30, 40) and thermal.dtype == torch.float32
    # Channel-first, scaled to [0, 1], no mean/std normalisation (the network does that).
    torch.testing.assert_close(rgb[1], torch.from_numpy(source.rgb[:, :, 1]).float() / 255)
    torch.testing.assert_close(thermal[0], torch.from_numpy(source.thermal).float() / 255)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1]
    assert target["ignore"].dtype == torch.bool and target["ignore"].tolist() == [False, True]
    assert target["mask"].dtype == torch.int64 and target["mask"].shape == (30, 40)
    assert int(target["mask"][0, 0]) == IGNORE_INDEX and int(target["mask"][6, 11]) == 2
    assert target["pair_id"] == "a" and target["condition"] == "night"
    assert target["orig_size"] == (30, 40) and target["size"] == (30, 40)
    assert to_tensors(source, orig_size=(60, 80))[2]["orig_size"] == (60, 80)


def test_mask_only_when_the_record_has_one() -> None:
    _, _, target = to_tensors(record(with_mask=False).replace(condition=None))
    assert "mask" not in target and target["condition"] is None
    empty = record(with_mask=False).replace(
        boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), ignore=np.zeros(0, bool)
    )
    _, _, target = to_tensors(empty)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_dataset_resizes_and_keeps_the_original_size() -> None:
    dataset = PairDataset(InMemoryReader([record("a"), record("bb", (50, 70))], ["person", "car"]))
    assert len(dataset) == 2 and dataset[1][0].shape == (3, 50, 70)  # no transform: as read
    dataset = PairDataset(dataset.reader, eval_transform((24, 32)))
    rgb, thermal, target = dataset[1]
    assert rgb.shape == (3, 24, 32) and thermal.shape == (1, 24, 32)
    assert target["orig_size"] == (50, 70) and target["size"] == (24, 32)
    expected = [10 * 32 / 70, 5 * 24 / 50, 20 * 32 / 70, 15 * 24 / 50]
    np.testing.assert_allclose(target["boxes"][0].numpy(), expected, rtol=1e-6)
    assert dataset[-1][2]["pair_id"] == "bb"
    with pytest.raises(IndexError):
        dataset[2]


def test_seeded_dataset_is_a_pure_function_of_seed_epoch_index() -> None:
    reader = SyntheticRGBT(6, seed=3, image_size=(48, 64))
    first = PairDataset(reader, train_transform((32, 40)), seed=11)
    again = PairDataset(reader, train_transform((32, 40)), seed=11)
    # Order of access does not matter, nor does torch's global generator.
    forward = [first[i][0] for i in range(6)]
    torch.manual_seed(123)
    backward = [again[i][0] for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward, strict=True):
        torch.testing.assert_close(a, b)
    # Another seed or epoch draws other augmentations (for some of the items at least).
    other = PairDataset(reader, train_transform((32, 40)), seed=12)
    assert any(not torch.equal(forward[i], other[i][0]) for i in range(6))
    first.set_epoch(1)
    assert any(not torch.equal(forward[i], first[i][0]) for i in range(6))
    first.set_epoch(0)
    torch.testing.assert_close(first[4][0], forward[4])


def test_unseeded_dataset_follows_torch_seed() -> None:
    dataset = PairDataset(SyntheticRGBT(2, seed=0, image_size=(48, 64)), train_transform((32, 40)))
    torch.manual_seed(5)
    a = [dataset[i][0] for i in range(2)]
    torch.manual_seed(5)
    b = [dataset[i][0] for i in range(2)]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_subset_and_dataloader_with_collate() -> None:
    reader = SyntheticRGBT(8, seed=1, image_size=(40, 48))
    dataset = PairDataset(reader, eval_transform((32, 40)))
    chosen = Subset(dataset, [6, 2, 5])  # the active-learning loop selects pool indices
    loader = DataLoader(chosen, batch_size=2, shuffle=False, collate_fn=collate_pairs)
    batches = list(loader)
    assert [len(targets) for _, _, targets in batches] == [2, 1]
    rgb, thermal, targets = batches[0]
    assert rgb.shape == (2, 3, 32, 40) and thermal.shape == (2, 1, 32, 40)
    assert [t["pair_id"] for t in targets] == [reader.pair_ids[6], reader.pair_ids[2]]
    assert [t["condition"] for t in targets] == [reader.conditions[6], reader.conditions[2]]
    assert all(t["mask"].shape == (32, 40) for t in targets)
    torch.testing.assert_close(rgb[1], dataset[2][0])


def test_collate_refuses_mixed_sizes_and_empty_batches() -> None:
    small = to_tensors(record("a", (30, 40)))
    large = to_tensors(record("b", (31, 40)))
    with pytest.raises(ValueError, match="different sizes"):
        collate_pairs([small, large])
    with pytest.raises(ValueError, match="empty"):
        collate_pairs([])
