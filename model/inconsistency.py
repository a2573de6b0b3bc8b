"""Cross-modality prediction inconsistency (Zhang et al., ICIP 2021).

For one prediction (an anchor or a pixel) with probability p_v from the visible branch and p_t from the
thermal branch::

    I = H((p_v + p_t) / 2) - (H(p_v) + H(p_t)) / 2,    H(p) = -p log2 p - (1 - p) log2 (1 - p)

I is the Jensen-Shannon divergence between the two Bernoulli predictions, in bits: 0 when the branches agree,
1 when one says 0 and the other 1. With several classes, I is computed per foreground class on its
one-vs-rest probability and reduced by the max (the paper's rule; the mean is an option).

A pair's score is the scale-balanced mean: the mean of I within each pyramid level, then the mean of those
level means, so the largest (finest) level, which holds most predictions, does not dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from model.data.sample import BACKGROUND_INDEX
from model.network import BranchOutput, NetOutput

#: Per-level class probabilities of the visible and of the thermal branch.
ModalityProbabilities = tuple[list[Tensor], list[Tensor]]

Reduction = Literal["max", "mean"]
Aggregation = Literal["scale_balanced", "flat"]

#: Probabilities are clamped to [EPS, 1 - EPS] so log2 stays finite.
EPS = 1e-6


def binary_entropy(p: Tensor, eps: float = EPS) -> Tensor:
    """Elementwise binary entropy in bits, any shape; p is clamped to [eps, 1 - eps]."""
    p = p.float().clamp(eps, 1.0 - eps)
    q = 1.0 - p
    return -(p * torch.log2(p) + q * torch.log2(q))


def prediction_inconsistency(
    p_visible: Tensor,
    p_thermal: Tensor,
    *,
    class_dim: int | None = None,
    reduction: Reduction = "max",
    background_index: int | None = BACKGROUND_INDEX,
    eps: float = EPS,
) -> Tensor:
    """Inconsistency between two branches' probabilities.

    Args:
        p_visible, p_thermal: same shape. With ``class_dim=None`` they are binary probabilities and I is
            returned elementwise (same shape). Otherwise ``class_dim`` holds class probabilities (e.g. a
            softmax); I is computed per class on its one-vs-rest probability, the background class is dropped
            and the rest reduced by ``reduction`` -> the input shape without ``class_dim``.
        reduction: "max" (the paper) or "mean" over foreground classes.
        background_index: class excluded from the reduction (None keeps every class).

    Returns:
        I in [0, 1] (up to the clamping, I(0, 1) = 1 - O(eps)).
    """
    if p_visible.shape != p_thermal.shape:
        raise ValueError(f"shapes differ: {tuple(p_visible.shape)} vs {tuple(p_thermal.shape)}")
    if class_dim is not None and background_index is not None:
        # I is elementwise per class: drop the background before computing it (less work, and views only,
        # so no index tensor is built and copied to the device for every call).
        p_visible = _drop_class(p_visible, class_dim, background_index)
        p_thermal = _drop_class(p_thermal, class_dim, background_index)
    p_visible = p_visible.float()
    p_thermal = p_thermal.float()
    mixture = binary_entropy((p_visible + p_thermal) / 2, eps)
    inconsistency = (mixture - (binary_entropy(p_visible, eps) + binary_entropy(p_thermal, eps)) / 2).clamp_(
        0, 1
    )
    if class_dim is None:
        return inconsistency
    if reduction == "max":
        return inconsistency.amax(dim=class_dim)
    if reduction == "mean":
        return inconsistency.mean(dim=class_dim)
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


def _drop_class(probabilities: Tensor, class_dim: int, index: int) -> Tensor:
    """``probabilities`` without class ``index`` along ``class_dim`` (a view when it is the first or last)."""
    num_classes = probabilities.shape[class_dim]
    index %= num_classes
    if num_classes < 2:
        raise ValueError("no foreground class left after dropping the background")
    if index == 0:
        return probabilities.narrow(class_dim, 1, num_classes - 1)
    if index == num_classes - 1:
        return probabilities.narrow(class_dim, 0, num_classes - 1)
    before = probabilities.narrow(class_dim, 0, index)
    after = probabilities.narrow(class_dim, index + 1, num_classes - index - 1)
    return torch.cat([before, after], dim=class_dim)


def scale_balanced_mean(levels: Sequence[Tensor]) -> Tensor:
    """Per-level tensors shaped (N, ...) -> (N,): mean within each level, then mean over levels."""
    if not levels:
        raise ValueError("at least one level is needed")
    level_means = torch.stack([level.reshape(level.shape[0], -1).mean(dim=1) for level in levels], dim=1)
    return level_means.mean(dim=1)


def flat_mean(levels: Sequence[Tensor]) -> Tensor:
    """Per-level tensors shaped (N, ...) -> (N,): one mean over all predictions (the ablation baseline)."""
    if not levels:
        raise ValueError("at least one level is needed")
    return torch.cat([level.reshape(level.shape[0], -1) for level in levels], dim=1).mean(dim=1)


def object_masks(
    output: NetOutput, threshold: float = 0.5, *, probabilities: ModalityProbabilities | None = None
) -> list[Tensor]:
    """Per level, True where the visible or the thermal branch predicts an object: foreground probability
    (one minus background) at least ``threshold``. Shapes as :func:`inconsistency_maps`; ``probabilities``:
    :func:`modality_probabilities` of ``output`` when already computed."""
    class_dim = output.visible.class_dim
    masks = []
    for p_v, p_t in zip(*(probabilities or modality_probabilities(output)), strict=True):
        foreground_v = 1.0 - p_v.select(class_dim, BACKGROUND_INDEX)
        foreground_t = 1.0 - p_t.select(class_dim, BACKGROUND_INDEX)
        masks.append(torch.maximum(foreground_v, foreground_t) >= threshold)
    return masks


def masked_scale_balanced_mean(levels: Sequence[Tensor], masks: Sequence[Tensor]) -> Tensor:
    """Per-level tensors (N, ...) and boolean masks of the same shapes -> (N,): the mean over each level's
    masked predictions, then the mean over the levels that have any; 0 for a pair with none.

    The paper's mean over every prediction lets the background's I, non-zero while a network is not yet
    confident, dominate a pair's score; this one scores the regions where a branch sees an object.
    """
    if not levels:
        raise ValueError("at least one level is needed")
    sums, present = [], []
    for level, mask in zip(levels, masks, strict=True):
        values = level.reshape(level.shape[0], -1)
        weights = mask.reshape(mask.shape[0], -1).to(values.dtype)
        count = weights.sum(dim=1)
        sums.append((values * weights).sum(dim=1) / count.clamp(min=1))
        present.append((count > 0).to(values.dtype))
    level_means, levels_present = torch.stack(sums, dim=1), torch.stack(present, dim=1)
    return level_means.sum(dim=1) / levels_present.sum(dim=1).clamp(min=1)


def branch_probabilities(branch: BranchOutput) -> list[Tensor]:
    """Class probabilities per level (softmax over the class dimension), in float32."""
    return [logits.float().softmax(dim=branch.class_dim) for logits in branch.cls_logits]


def modality_probabilities(output: NetOutput) -> ModalityProbabilities:
    """(visible, thermal) class probabilities per level: computed once when several signals need them."""
    return branch_probabilities(output.visible), branch_probabilities(output.thermal)


def inconsistency_maps(
    output: NetOutput,
    *,
    reduction: Reduction = "max",
    probabilities: ModalityProbabilities | None = None,
) -> list[Tensor]:
    """I per prediction of the visible vs thermal branches, per level.

    Returns detection: list of (N, L_l) per anchor; segmentation: [(N, H, W)] per pixel. ``probabilities``:
    :func:`modality_probabilities` of ``output`` when already computed.
    """
    class_dim = output.visible.class_dim
    return [
        prediction_inconsistency(p_v, p_t, class_dim=class_dim, reduction=reduction)
        for p_v, p_t in zip(*(probabilities or modality_probabilities(output)), strict=True)
    ]


def pair_scores(
    output: NetOutput, *, reduction: Reduction = "max", aggregation: Aggregation = "scale_balanced"
) -> Tensor:
    """One inconsistency score per pair, (N,), computed on the outputs' device."""
    maps = inconsistency_maps(output, reduction=reduction)
    if aggregation == "scale_balanced":
        return scale_balanced_mean(maps)
    if aggregation == "flat":
        return flat_mean(maps)
    raise ValueError(f"aggregation must be 'scale_balanced' or 'flat', got {aggregation!r}")


def inconsistency_heatmap(output: NetOutput, *, reduction: Reduction = "max") -> Tensor:
    """A per-pixel picture of I, (N, H, W) at the input size, for figures.

    Detection: each level's per-anchor I is reduced over the anchors of a cell (max), upsampled, and the
    levels are averaged (the scale-balanced view). Segmentation: the per-pixel map itself.
    """
    maps = inconsistency_maps(output, reduction=reduction)
    if output.anchors is None:
        return maps[0]
    height, width = output.image_size
    pictures = []
    for level_map, attention in zip(maps, output.attention, strict=True):
        rows, cols = attention.inter.shape[-2:]
        cells = level_map.reshape(level_map.shape[0], rows, cols, -1).amax(dim=-1)
        pictures.append(
            torch.nn.functional.interpolate(cells[:, None], size=(height, width), mode="bilinear")[:, 0]
        )
    return torch.stack(pictures).mean(dim=0)
