"""From raw branch outputs to user-facing predictions: decoded boxes after NMS, or class masks."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, clip_boxes_to_image

from model.losses import BOX_CODER_WEIGHTS
from model.network import BranchOutput

Detections = dict[str, Tensor]

_BOX_CODER = BoxCoder(BOX_CODER_WEIGHTS)


def decode_detections(
    branch: BranchOutput,
    anchors: list[Tensor],
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.45,
    candidates_per_image: int = 400,
    max_detections: int = 100,
) -> list[Detections]:
    """Decode one detection branch.

    Returns one dict per image: "boxes" (M, 4) xyxy in input pixels, "scores" (M,), "labels" (M,) in 1..C,
    sorted by descending score, after class-wise NMS, and "anchor_index" (M,): the default box each
    detection was decoded from (so other branches' confidences can be read at the same place).
    """
    if branch.bbox_regression is None:
        raise ValueError("decode_detections needs a detection branch")
    regression = torch.cat(branch.bbox_regression, dim=1).float()
    probabilities = torch.cat(branch.cls_logits, dim=1).float().softmax(dim=-1)[..., 1:]  # drop background
    all_anchors = torch.cat(anchors).to(regression)
    num_foreground = probabilities.shape[-1]
    results = []
    for image_regression, image_probabilities in zip(regression, probabilities, strict=True):
        boxes = clip_boxes_to_image(_BOX_CODER.decode_single(image_regression, all_anchors), image_size)
        flat_scores = image_probabilities.flatten()
        keep = torch.nonzero(flat_scores > score_threshold).squeeze(1)
        if keep.numel() > candidates_per_image:
            keep = keep[flat_scores[keep].topk(candidates_per_image).indices]
        scores = flat_scores[keep]
        anchor_index = keep // num_foreground
        labels = keep % num_foreground + 1
        boxes = boxes[anchor_index]
        kept = batched_nms(boxes, scores, labels, nms_threshold)[:max_detections]
        results.append(
            {
                "boxes": boxes[kept],
                "scores": scores[kept],
                "labels": labels[kept],
                "anchor_index": anchor_index[kept],
            }
        )
    return results


def decode_segmentation(branch: BranchOutput) -> Tensor:
    """(N, H, W) int64 class ids (argmax of the logits)."""
    return branch.cls_logits[0].argmax(dim=1)


def _source_coordinates(size_out: int, size_in: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For each output index: the two source indices around its centre and the weight of the second, as
    bilinear ``interpolate`` with ``align_corners=False`` computes them (negative sources clamped to 0)."""
    source = (torch.arange(size_out, dtype=torch.float32, device=device) + 0.5) * (size_in / size_out) - 0.5
    source = source.clamp(min=0)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    return low, high, source - low


def upsample_class_ids(logits: Tensor, size: tuple[int, int], *, max_elements: int = 1 << 23) -> Tensor:
    """(C, h, w) logits -> (H, W) int64 class ids: the argmax of the logits upsampled bilinearly to ``size``
    (``align_corners=False``, as :func:`torch.nn.functional.interpolate`), without the C x H x W upsampled
    logits (64 classes at 4000x4000: 4 GB).

    A bilinear value is a convex combination of the four source pixels around it, so where those four share
    their argmax class, the upsampled pixel has it too: only pixels whose four source pixels disagree (class
    boundaries) are interpolated (a whole band where most are), in bands of at most about ``max_elements``
    logits. The ids equal the full upsampling's except where two classes' logits tie within float rounding.
    """
    channels, height, width = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return logits.argmax(dim=0)
    device = logits.device
    channels_last = logits.float().permute(1, 2, 0).contiguous()  # (h, w, C): one pixel's logits together
    flat = channels_last.view(height * width, channels)
    source_ids = channels_last.argmax(dim=-1)  # (h, w)
    y_low, y_high, y_weight = _source_coordinates(out_h, height, device)
    x_low, x_high, x_weight = _source_coordinates(out_w, width, device)
    ids = torch.empty((out_h, out_w), dtype=torch.int64, device=device)
    band = max(1, max_elements // max(1, channels * out_w))
    for start in range(0, out_h, band):
        rows = slice(start, min(out_h, start + band))
        top, bottom = source_ids.index_select(0, y_low[rows]), source_ids.index_select(0, y_high[rows])
        corners = [rows_ids.index_select(1, x) for rows_ids in (top, bottom) for x in (x_low, x_high)]
        ids[rows] = corners[0]
        boundary = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
        by, bx = boundary.nonzero(as_tuple=True)
        if by.numel() == 0:
            continue
        if by.numel() * 4 > boundary.numel():  # mostly boundaries (an untrained model): the whole band
            weight = y_weight[rows, None, None]
            vertical = torch.lerp(channels_last[y_low[rows]], channels_last[y_high[rows]], weight)
            left, right = vertical.index_select(1, x_low), vertical.index_select(1, x_high)
            full = torch.lerp(left, right, x_weight[None, :, None])  # (b, W, C)
            ids[rows] = full.argmax(dim=-1)
            continue
        yl, yh, wy = y_low[rows][by] * width, y_high[rows][by] * width, y_weight[rows][by, None]
        xl, xh, wx = x_low[bx], x_high[bx], x_weight[bx, None]
        upper = torch.lerp(flat.index_select(0, yl + xl), flat.index_select(0, yl + xh), wx)  # (n, C)
        lower = torch.lerp(flat.index_select(0, yh + xl), flat.index_select(0, yh + xh), wx)
        ids[rows][by, bx] = torch.lerp(upper, lower, wy).argmax(dim=-1)
    return ids
