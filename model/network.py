"""ThreeBranchNet: two VGG16 trunks, GAFF fusion and three prediction branches in one forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from model.backbone import ImageNetWeights, VGG16Extractor
from model.config import NetConfig
from model.fusion import AttentionLogits, MultiLevelGAFF
from model.heads import DefaultBoxes, DetectionHead, SegmentationHead

BRANCHES: tuple[str, ...] = ("visible", "thermal", "fused")

#: Pyramid levels after fc7: 4 for SSD detection (6 levels), 1 for segmentation (strides 8, 16, 32).
_EXTRA_LEVELS = {"detection": 4, "segmentation": 1}

# ImageNet statistics for RGB; thermal uses their channel mean so summed conv1_1 kernels see the same range.
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)
_THERMAL_MEAN = 0.449
_THERMAL_STD = 0.226


@dataclass
class BranchOutput:
    """One branch's raw predictions.

    Detection: ``cls_logits`` per level (N, L_l, K) and ``bbox_regression`` per level (N, L_l, 4), L_l the
    level's default boxes. Segmentation: ``cls_logits`` is one level, (N, K, H, W), and no regression.
    K = ``NetConfig.num_outputs`` (index 0 background).
    """

    cls_logits: list[Tensor]
    bbox_regression: list[Tensor] | None = None

    @property
    def class_dim(self) -> int:
        """The dimension that holds class scores (-1 for detection, 1 for segmentation)."""
        return -1 if self.bbox_regression is not None else 1


@dataclass
class NetOutput:
    """Everything one forward pass yields.

    ``anchors``: detection default boxes per level, (L_l, 4) input pixels, shared by the batch.
    ``attention``: GAFF logits per level. ``embedding``: (N, C) pooled fused features of the deepest level,
    for diversity-aware selection. ``image_size``: the input's (H, W).
    """

    image_size: tuple[int, int]
    visible: BranchOutput
    thermal: BranchOutput
    fused: BranchOutput
    attention: list[AttentionLogits]
    embedding: Tensor
    anchors: list[Tensor] | None = None

    def branch(self, name: str) -> BranchOutput:
        if name not in BRANCHES:
            raise KeyError(f"unknown branch {name!r}, expected one of {BRANCHES}")
        return getattr(self, name)


class ThreeBranchNet(nn.Module):
    """The paper's network.

    Forward: rgb (N, 3, H, W) and thermal (N, 1, H, W), both float in [0, 1] -> :class:`NetOutput`. The two
    trunks run once; their features feed their own branch and the fusion, so the three branches cost one
    pass. Inputs of any size work; training and serving resize pairs to ``config.image_size``.
    """

    def __init__(
        self, config: NetConfig, imagenet_weights: str | Path | ImageNetWeights | None = None
    ) -> None:
        super().__init__()
        self.config = config
        extra = _EXTRA_LEVELS[config.task]
        self.rgb_trunk = VGG16Extractor(3, config.width, extra)
        self.thermal_trunk = VGG16Extractor(1, config.width, extra)
        if isinstance(imagenet_weights, ImageNetWeights):
            for trunk in (self.rgb_trunk, self.thermal_trunk):
                trunk.load_imagenet(imagenet_weights.state_dict, source_stats=imagenet_weights.source_stats)
        elif imagenet_weights is not None:
            self.rgb_trunk.load_imagenet(imagenet_weights)
            self.thermal_trunk.load_imagenet(imagenet_weights)
        channels = self.rgb_trunk.out_channels
        self.fusion = MultiLevelGAFF(channels)
        num_classes = config.num_outputs
        if config.task == "detection":
            self.default_boxes = DefaultBoxes(len(channels))
            anchors = self.default_boxes.num_anchors_per_location()
            self.heads = nn.ModuleDict({b: DetectionHead(channels, anchors, num_classes) for b in BRANCHES})
        else:
            self.default_boxes = None
            self.heads = nn.ModuleDict({b: SegmentationHead(channels, num_classes) for b in BRANCHES})
        self.register_buffer("rgb_mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(_RGB_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def task(self) -> str:
        return self.config.task

    def forward(self, rgb: Tensor, thermal: Tensor) -> NetOutput:
        if rgb.shape[-2:] != thermal.shape[-2:] or rgb.shape[0] != thermal.shape[0]:
            raise ValueError(f"rgb {tuple(rgb.shape)} and thermal {tuple(thermal.shape)} must be aligned")
        rgb = (rgb - self.rgb_mean) / self.rgb_std
        thermal = (thermal - _THERMAL_MEAN) / _THERMAL_STD
        visible_levels = self.rgb_trunk(rgb)
        thermal_levels = self.thermal_trunk(thermal)
        fused_levels, attention = self.fusion(visible_levels, thermal_levels)
        embedding = fused_levels[-1].mean(dim=(2, 3))
        levels = {"visible": visible_levels, "thermal": thermal_levels, "fused": fused_levels}
        image_size = (int(rgb.shape[-2]), int(rgb.shape[-1]))
        if self.default_boxes is not None:
            branches = {}
            for name in BRANCHES:
                cls_logits, regression = self.heads[name](levels[name])
                branches[name] = BranchOutput(cls_logits, regression)
            sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in fused_levels]
            anchors = self.default_boxes(image_size, sizes, rgb.device)
        else:
            branches = {name: BranchOutput([self.heads[name](levels[name], image_size)]) for name in BRANCHES}
            anchors = None
        return NetOutput(image_size, **branches, attention=attention, embedding=embedding, anchors=anchors)
