"""GAFF: Guided Attentive Feature Fusion (Zhang, Fromont, Lefèvre, Avignon, WACV 2021).

At one pyramid level, with visible features f_v and thermal features f_t (both (N, C, H, W)):

- intra-modality attention  a_m = sigmoid(conv(f_m)), one map per modality, guided by an object mask;
- inter-modality attention  (w_v, w_t) = softmax(conv([f_v, f_t])) over the modality axis, guided by which
  modality's branch has the lower loss at that location;
- f'_m = f_m + f_m * a_m + f_m * w_m, and fused = conv1x1([f'_v, f'_t]) back to C channels.

The modules return the attention *logits* so the guidance losses can use numerically stable
``binary_cross_entropy_with_logits`` / ``cross_entropy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class AttentionLogits:
    """Logits of one level's attention maps.

    Shapes: ``intra_visible`` and ``intra_thermal`` (N, 1, H, W); ``inter`` (N, 2, H, W), channel 0 visible.
    """

    intra_visible: Tensor
    intra_thermal: Tensor
    inter: Tensor


class GAFF(nn.Module):
    """One level of guided attentive fusion: (N, C, H, W) x 2 -> (N, C, H, W) and its attention logits."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.intra_visible = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        self.intra_thermal = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        self.inter = nn.Conv2d(2 * channels, 2, kernel_size=3, padding=1)
        self.merge = nn.Conv2d(2 * channels, channels, kernel_size=1)
        for conv in (self.intra_visible, self.intra_thermal, self.inter, self.merge):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, visible: Tensor, thermal: Tensor) -> tuple[Tensor, AttentionLogits]:
        intra_v = self.intra_visible(visible)
        intra_t = self.intra_thermal(thermal)
        inter = self.inter(torch.cat((visible, thermal), dim=1))
        weights = inter.softmax(dim=1)
        visible_att = visible * (1 + intra_v.sigmoid() + weights[:, :1])
        thermal_att = thermal * (1 + intra_t.sigmoid() + weights[:, 1:])
        fused = self.merge(torch.cat((visible_att, thermal_att), dim=1))
        return fused, AttentionLogits(intra_v, intra_t, inter)


class MultiLevelGAFF(nn.Module):
    """GAFF at every pyramid level (each level has its own weights)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(GAFF(c) for c in channels)

    def forward(
        self, visible: list[Tensor], thermal: list[Tensor]
    ) -> tuple[list[Tensor], list[AttentionLogits]]:
        fused, attention = [], []
        for gaff, f_v, f_t in zip(self.levels, visible, thermal, strict=True):
            f, a = gaff(f_v, f_t)
            fused.append(f)
            attention.append(a)
        return fused, attention
