"""From readers to tensors: ``PairDataset`` applies a paired transform and converts to the network's input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from model.data.sample import PairReader, PairRecord

Target = dict[str, Any]


def to_tensors(record: PairRecord, orig_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Target]:
    """A record -> (rgb (3, H, W) float32 in [0, 1], thermal (1, H, W) float32 in [0, 1], target).

    Target keys: "boxes" (K, 4) float32 xyxy pixels, "labels" (K,) int64, "ignore" (K,) bool, "mask" (H, W)
    int64 (only when the record has one), "pair_id" str, "condition" str or None, "size" (H, W) of the
    tensors, "orig_size" (H, W) of the pair as read (``orig_size``, default the record's own size: pass it
    when the record was transformed), and every per-box array of ``meta`` (e.g. "occlusion") as a tensor.
    No mean/std normalisation here: the network normalises its inputs.
    """
    rgb = torch.from_numpy(np.ascontiguousarray(record.rgb)).permute(2, 0, 1).float().div_(255.0)
    thermal = torch.from_numpy(np.ascontiguousarray(record.thermal))[None].float().div_(255.0)
    count = len(record.boxes)
    target: Target = {
        "boxes": torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(record.labels, dtype=torch.int64).reshape(-1),
        "ignore": torch.as_tensor(record.ignore, dtype=torch.bool).reshape(-1),
        "pair_id": record.pair_id,
        "condition": record.condition,
        "size": record.size,
        "orig_size": (int(orig_size[0]), int(orig_size[1])) if orig_size is not None else record.size,
    }
    for key, value in record.meta.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == count and key not in target:
            target[key] = torch.as_tensor(value)
    if record.mask is not None:
        target["mask"] = torch.as_tensor(record.mask, dtype=torch.int64)
    return rgb, thermal, target


class PairDataset(Dataset):
    """A reader plus a paired transform, yielding ``to_tensors`` triples.

    Works with ``torch.utils.data.Subset`` (the active-learning loop selects pool indices) and with
    :func:`collate_pairs` as a DataLoader's ``collate_fn``.

    Args:
        reader: any :class:`~model.data.sample.PairReader`.
        transform: ``(record, rng) -> record`` (see :mod:`model.data.transforms`), or ``None``.
        seed: ``None`` (default): augmentation randomness comes from torch's generator (seeded by ``fit``
            and per DataLoader worker), so runs are reproducible and every epoch sees a fresh augmentation.
            An int: item ``i`` is augmented with ``np.random.default_rng([seed, epoch, i])``, the same
            whatever the worker, batch or order it is drawn in; :meth:`set_epoch` moves to another draw.
    """

    def __init__(
        self,
        reader: PairReader,
        transform: Callable[[PairRecord, np.random.Generator], PairRecord] | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.reader = reader
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (only with a ``seed``)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator the transform of item ``index`` draws from."""
        if self.seed is not None:
            return np.random.default_rng([self.seed, self.epoch, index])
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Target]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        index %= len(self)
        record = self.reader[index]
        original = record.size
        if self.transform is not None:
            record = self.transform(record, self.rng(index))
        return to_tensors(record, orig_size=original)


def collate_pairs(batch: list[tuple[Tensor, Tensor, Target]]) -> tuple[Tensor, Tensor, list[Target]]:
    """Stack same-sized pairs: (rgb (N, 3, H, W), thermal (N, 1, H, W), list of N targets).

    Targets stay a list: their box counts differ. Pairs of different sizes are refused (resize them with
    :func:`~model.data.transforms.eval_transform` first).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    rgb, thermal, targets = zip(*batch, strict=True)
    sizes = {tuple(image.shape[-2:]) for image in (*rgb, *thermal)}
    if len(sizes) > 1:
        raise ValueError(f"cannot stack pairs of different sizes {sorted(sizes)}; resize them to one size")
    return torch.stack(rgb), torch.stack(thermal), list(targets)
