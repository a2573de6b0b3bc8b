"""Paired transforms: one geometric change applied identically to RGB, thermal, boxes and mask.

Each transform maps a :class:`PairRecord` to a new one and draws its randomness from an explicit
``np.random.Generator``, so a pair's augmentation is reproducible from a seed. Per-box arrays in ``meta``
(e.g. KAIST's ``occlusion``) are kept aligned with the boxes when boxes are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from model.data.sample import IGNORE_INDEX, PairRecord

#: Boxes narrower or shorter than this many pixels after a transform are dropped.
MIN_BOX_SIDE = 1.0


class Transform(Protocol):
    def __call__(self, record: PairRecord, rng: np.random.Generator) -> PairRecord: ...


def keep_boxes(record: PairRecord, keep: np.ndarray, boxes: np.ndarray | None = None) -> PairRecord:
    """Keep the boxes selected by a boolean mask, with their labels, ignore flags and per-box meta."""
    boxes = record.boxes if boxes is None else boxes
    count = len(record.boxes)
    meta = {
        key: value[keep]
        if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == count
        else value
        for key, value in record.meta.items()
    }
    return record.replace(
        boxes=boxes[keep], labels=record.labels[keep], ignore=record.ignore[keep], meta=meta
    )


def _clip_and_filter(record: PairRecord, boxes: np.ndarray) -> PairRecord:
    height, width = record.size
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
    return keep_boxes(record, keep, boxes.astype(np.float32))


class Compose:
    """Apply transforms in order, all drawing from one generator.

    Args:
        transforms: callables ``(record, rng) -> record``.
        rng: the generator used when a call passes none (a fresh unseeded one when this is ``None`` too);
            pass ``np.random.default_rng(seed)`` for a reproducible stream of augmentations.
    """

    def __init__(self, transforms: Sequence[Transform], rng: np.random.Generator | None = None) -> None:
        self.transforms = list(transforms)
        self.rng = rng

    def __call__(self, record: PairRecord, rng: np.random.Generator | None = None) -> PairRecord:
        if rng is None:
            rng = self.rng if self.rng is not None else np.random.default_rng()
        for transform in self.transforms:
            record = transform(record, rng)
        return record


class RandomHorizontalFlip:
    """Mirror the pair left-right with probability ``p``: ``x -> width - x`` for boxes."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, record: PairRecord, rng: np.random.Generator) -> PairRecord:
        if rng.random() >= self.p:
            return record
        width = record.size[1]
        boxes = record.boxes.copy()
        boxes[:, [0, 2]] = width - record.boxes[:, [2, 0]]
        return record.replace(
            rgb=np.ascontiguousarray(record.rgb[:, ::-1]),
            thermal=np.ascontiguousarray(record.thermal[:, ::-1]),
            mask=None if record.mask is None else np.ascontiguousarray(record.mask[:, ::-1]),
            boxes=boxes,
        )


class RandomExpand:
    """SSD's zoom-out: the pair is placed at a random spot of a canvas up to ``max_ratio`` times larger,
    filled with each image's mean (and ``IGNORE_INDEX`` in the mask), so objects get smaller."""

    def __init__(self, max_ratio: float = 2.0, p: float = 0.5) -> None:
        self.max_ratio = max_ratio
        self.p = p

    def __call__(self, record: PairRecord, rng: np.random.Generator) -> PairRecord:
        if rng.random() >= self.p or self.max_ratio <= 1.0:
            return record
        height, width = record.size
        ratio = rng.uniform(1.0, self.max_ratio)
        new_h, new_w = int(height * ratio), int(width * ratio)
        top, left = int(rng.integers(0, new_h - height + 1)), int(rng.integers(0, new_w - width + 1))

        def place(image: np.ndarray, fill) -> np.ndarray:
            canvas = np.empty((new_h, new_w, *image.shape[2:]), dtype=image.dtype)
            canvas[...] = fill
            canvas[top : top + height, left : left + width] = image
            return canvas

        mask = None if record.mask is None else place(record.mask, IGNORE_INDEX)
        return record.replace(
            rgb=place(record.rgb, record.rgb.reshape(-1, 3).mean(0).astype(np.uint8)),
            thermal=place(record.thermal, np.uint8(record.thermal.mean())),
            mask=mask,
            boxes=(record.boxes + np.array([left, top, left, top], np.float32)).astype(np.float32),
        )


def _iou(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    x1 = np.maximum(boxes[:, 0], window[0])
    y1 = np.maximum(boxes[:, 1], window[1])
    x2 = np.minimum(boxes[:, 2], window[2])
    y2 = np.minimum(boxes[:, 3], window[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_window = (window[2] - window[0]) * (window[3] - window[1])
    return inter / np.maximum(area_boxes + area_window - inter, 1e-9)


class RandomCrop:
    """SSD's IoU-constrained crop: a window of 30-100% of each side (aspect 0.5-2) whose IoU with at least
    one box reaches a randomly chosen minimum; boxes whose centre leaves the window are dropped, the others
    clipped. Pairs without boxes (segmentation) get an unconstrained crop."""

    MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9)

    def __init__(self, p: float = 0.5, min_scale: float = 0.3, attempts: int = 50) -> None:
        self.p = p
        self.min_scale = min_scale
        self.attempts = attempts

    def __call__(self, record: PairRecord, rng: np.random.Generator) -> PairRecord:
        if rng.random() >= self.p:
            return record
        height, width = record.size
        min_iou = self.MIN_IOUS[int(rng.integers(len(self.MIN_IOUS)))]
        if min_iou is None and len(record.boxes):
            return record
        for _ in range(self.attempts):
            w = rng.uniform(self.min_scale, 1.0) * width
            h = rng.uniform(self.min_scale, 1.0) * height
            if not 0.5 <= h / w <= 2.0:
                continue
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            window = np.array([left, top, left + w, top + h], np.float32)
            window_int = np.array([int(left), int(top), int(left + w), int(top + h)])
            if len(record.boxes) == 0:
                return self._crop(record, window_int, np.zeros(0, bool))
            if min_iou is not None and _iou(record.boxes, window).max() < min_iou:
                continue
            centres = (record.boxes[:, :2] + record.boxes[:, 2:]) / 2
            inside = (
                (centres[:, 0] > window[0])
                & (centres[:, 0] < window[2])
                & (centres[:, 1] > window[1])
                & (centres[:, 1] < window[3])
            )
            if not inside.any():
                continue
            return self._crop(record, window_int, inside)
        return record

    @staticmethod
    def _crop(record: PairRecord, window: np.ndarray, keep: np.ndarray) -> PairRecord:
        x1, y1, x2, y2 = (int(v) for v in window)
        cropped = keep_boxes(record, keep) if len(record.boxes) else record
        boxes = cropped.boxes - np.array([x1, y1, x1, y1], np.float32)
        cropped = cropped.replace(
            rgb=np.ascontiguousarray(record.rgb[y1:y2, x1:x2]),
            thermal=np.ascontiguousarray(record.thermal[y1:y2, x1:x2]),
            mask=None if record.mask is None else np.ascontiguousarray(record.mask[y1:y2, x1:x2]),
        )
        return _clip_and_filter(cropped, boxes)


class Resize:
    """Resize to (height, width): bilinear for images, nearest for masks, boxes scaled."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, record: PairRecord, rng: np.random.Generator | None = None) -> PairRecord:
        height, width = record.size
        new_h, new_w = self.size
        thermal = record.thermal
        if thermal.shape[:2] != (height, width):
            # A pair whose thermal image has another size is brought onto the RGB grid first.
            thermal = cv2.resize(thermal, (width, height), interpolation=cv2.INTER_LINEAR)
        if (height, width) == (new_h, new_w):
            return record.replace(thermal=thermal) if thermal is not record.thermal else record
        scale = np.array([new_w / width, new_h / height] * 2, np.float32)
        mask = None
        if record.mask is not None:
            # INTER_NEAREST_EXACT samples pixel centres like INTER_LINEAR does; plain INTER_NEAREST is off by
            # up to a pixel (it floors dst * scale), so masks would drift right/down of the images.
            mask = cv2.resize(
                record.mask.astype(np.int32), (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT
            )
            mask = mask.astype(np.int64)
        resized = record.replace(
            rgb=cv2.resize(record.rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR),
            thermal=cv2.resize(thermal, (new_w, new_h), interpolation=cv2.INTER_LINEAR),
            mask=mask,
        )
        return _clip_and_filter(resized, record.boxes * scale)


class PhotometricJitter:
    """Brightness/contrast jitter of the RGB image (photometric only, so geometry stays paired).

    RGB only by default: illumination varies between RGB frames, while thermal intensities encode
    temperature contrasts (the signal that separates crossover and cold-object pairs); ``thermal=True`` also
    jitters the thermal image, with its own draw (the sensors are independent).
    """

    def __init__(
        self, brightness: float = 0.15, contrast: float = 0.2, p: float = 0.5, *, thermal: bool = False
    ) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.p = p
        self.thermal = thermal

    def _jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        alpha = 1.0 + rng.uniform(-self.contrast, self.contrast)
        beta = 255.0 * rng.uniform(-self.brightness, self.brightness)
        mean = image.mean()
        return np.clip((image.astype(np.float32) - mean) * alpha + mean + beta, 0, 255).astype(np.uint8)

    def __call__(self, record: PairRecord, rng: np.random.Generator) -> PairRecord:
        rgb = self._jitter(record.rgb, rng) if rng.random() < self.p else record.rgb
        thermal = record.thermal
        if self.thermal and rng.random() < self.p:
            thermal = self._jitter(record.thermal, rng)
        return record.replace(rgb=rgb, thermal=thermal)


def train_transform(size: tuple[int, int], rng: np.random.Generator | None = None) -> Compose:
    """Augmentation for training: RGB jitter, SSD expand and crop, flip, then resize to ``size`` (H, W).

    ``rng`` is the generator used when a call passes none (see :class:`Compose`).
    """
    return Compose(
        [
            PhotometricJitter(),
            RandomExpand(max_ratio=2.0, p=0.3),
            RandomCrop(p=0.5),
            RandomHorizontalFlip(),
            Resize(size),
        ],
        rng=rng,
    )


def eval_transform(size: tuple[int, int]) -> Compose:
    """Evaluation and serving: resize to ``size`` (H, W) only (deterministic)."""
    return Compose([Resize(size)])
