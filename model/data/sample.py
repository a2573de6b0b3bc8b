"""The one in-memory record every reader, transform and generator exchanges.

A :class:`PairRecord` is a spatially aligned RGB + thermal pair with its targets, kept as numpy arrays so
readers and paired transforms stay framework-free; :func:`model.data.dataset.to_tensors` turns it into the
tensors the network takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Pixel value of segmentation masks that no loss or metric counts (padding, unlabelled areas).
IGNORE_INDEX = 255

#: Label index 0 is background (detection) or "unlabelled" (MFNet-style segmentation); foreground is 1..C.
BACKGROUND_INDEX = 0


@dataclass
class PairRecord:
    """One aligned RGB-T pair.

    Shapes:
        rgb: (H, W, 3) uint8.
        thermal: (H, W) uint8 (16-bit sources are normalised by :func:`model.data.io.load_thermal`).
        boxes: (K, 4) float32, absolute pixel ``x1, y1, x2, y2``.
        labels: (K,) int64 in ``1..C`` (index into ``class_names``; 0 is background).
        ignore: (K,) bool, boxes that neither count as misses nor as false positives (KAIST "people",
            crowds, heavily occluded); training drops them.
        mask: (H, W) int64 class ids or ``IGNORE_INDEX``; ``None`` for detection-only data.
    """

    pair_id: str
    rgb: np.ndarray
    thermal: np.ndarray
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    mask: np.ndarray | None = None
    condition: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the pair."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    def replace(self, **changes: Any) -> PairRecord:
        return replace(self, **changes)


@runtime_checkable
class PairReader(Protocol):
    """A lazily indexed collection of pairs in one on-disk format (or generated on the fly)."""

    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> PairRecord: ...

    @property
    def pair_ids(self) -> list[str]: ...
