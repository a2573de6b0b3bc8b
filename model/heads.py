"""Prediction heads: SSD detection heads with their default boxes, and the 1-conv segmentation head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSDHead

#: Aspect ratios per level (SSD's), each level also has the two square boxes.
DEFAULT_ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
#: A level's square default box is this many times its stride. SSD300's relative scales amount to about
#: 3.75 strides at 300 px; 2.5 suits small multispectral pedestrians (at 512x640: 20, 40, 80, 160, 320 px
#: boxes; KAIST "reasonable" persons are 55 px tall). Tying boxes to strides rather than to the image side
#: keeps them matched to the feature grid at any input size.
BOX_STRIDE_FACTOR = 2.5
#: Largest square box as a fraction of the shorter image side.
MAX_SCALE = 0.95


def stride_scales(image_size: tuple[int, int], feature_sizes: list[tuple[int, int]]) -> list[float]:
    """Per-level box scales (fractions of the image side) for ``DefaultBoxGenerator``, plus the last s'_k."""
    side = min(image_size)
    scales = [min(MAX_SCALE, BOX_STRIDE_FACTOR * (image_size[0] / h) / side) for h, _ in feature_sizes]
    return scales + [min(1.0, scales[-1] * 1.25)]


class DetectionHead(nn.Module):
    """SSD classification and regression convolutions for every level, outputs kept per level.

    Forward: list of (N, C_l, H_l, W_l) -> (cls_logits, bbox_regression), lists of (N, H_l*W_l*A_l, K) and
    (N, H_l*W_l*A_l, 4) in (y, x, anchor) order, the order of :class:`DefaultBoxes`.
    """

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int) -> None:
        super().__init__()
        self.ssd = SSDHead(in_channels, num_anchors, num_classes)
        self.num_anchors = num_anchors

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        out = self.ssd(features)
        counts = [f.shape[-2] * f.shape[-1] * a for f, a in zip(features, self.num_anchors, strict=True)]
        return list(out["cls_logits"].split(counts, dim=1)), list(out["bbox_regression"].split(counts, dim=1))


class DefaultBoxes(nn.Module):
    """SSD default boxes per level for a given input size, cached (they depend on shapes only).

    Forward: (image_size (H, W), feature sizes [(H_l, W_l)], device) -> list of (H_l*W_l*A_l, 4) boxes,
    absolute ``x1, y1, x2, y2`` in input pixels.
    """

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        if num_levels > len(DEFAULT_ASPECT_RATIOS):
            raise ValueError(f"at most {len(DEFAULT_ASPECT_RATIOS)} detection levels are supported")
        self.aspect_ratios = [list(r) for r in DEFAULT_ASPECT_RATIOS[:num_levels]]
        self._cache: dict[tuple, list[Tensor]] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def forward(
        self, image_size: tuple[int, int], feature_sizes: list[tuple[int, int]], device: torch.device
    ) -> list[Tensor]:
        key = (tuple(image_size), tuple(feature_sizes), str(device))
        if key not in self._cache:
            generator = DefaultBoxGenerator(
                self.aspect_ratios, scales=stride_scales(image_size, feature_sizes)
            )
            # The generator reads only the batch's spatial size, so an empty tensor stands in for images.
            images = ImageList(torch.empty((1, 0, *image_size)), [tuple(image_size)])
            maps = [torch.empty((1, 0, h, w)) for h, w in feature_sizes]
            boxes = generator(images, maps)[0]
            counts = [
                h * w * a for (h, w), a in zip(feature_sizes, self.num_anchors_per_location(), strict=False)
            ]
            self._cache[key] = [b.to(device) for b in boxes.split(counts)]
        return self._cache[key]


class SegmentationHead(nn.Module):
    """The paper's one-layer segmentation branch.

    The pyramid is upsampled to the finest level's resolution and concatenated, one 1x1 convolution predicts
    the classes, and the logits are upsampled bilinearly to the input size.

    Forward: (list of (N, C_l, H_l, W_l), output size (H, W)) -> (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(sum(in_channels), num_classes, kernel_size=1)

    def forward(self, features: list[Tensor], output_size: tuple[int, int]) -> Tensor:
        size = features[0].shape[-2:]
        stacked = [features[0]] + [
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]
        ]
        logits = self.classifier(torch.cat(stacked, dim=1))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
