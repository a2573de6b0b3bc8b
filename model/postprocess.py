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
    sorted by descending score, after class-wise NMS.
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
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return results


def decode_segmentation(branch: BranchOutput) -> Tensor:
    """(N, H, W) int64 class ids (argmax of the logits)."""
    return branch.cls_logits[0].argmax(dim=1)


def upsample_class_ids(logits: Tensor, size: tuple[int, int], *, max_elements: int = 1 << 23) -> Tensor:
    """(C, h, w) logits -> (H, W) int64 class ids: the argmax of the logits upsampled bilinearly to ``size``
    (``align_corners=False``, as :func:`torch.nn.functional.interpolate`), in bands of output rows.

    Upsampling all C maps at once holds C x H x W floats (64 classes at 4000x4000: 4 GB); a band holds at
    most about ``max_elements`` of them. Each band interpolates its rows from the two source rows around them
    and its columns with ``interpolate``: the same weights as one full-size upsampling, so the ids agree
    except where two classes' logits tie within float rounding.
    """
    channels, height, width = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return logits.argmax(dim=0)
    logits = logits.float()
    # Source row of each output row's centre, clamped at 0 as interpolate does (align_corners=False).
    rows = ((torch.arange(out_h, dtype=torch.float32, device=logits.device) + 0.5) * (height / out_h) - 0.5)
    rows = rows.clamp(min=0)
    low = rows.floor().long().clamp(max=height - 1)
    high = (low + 1).clamp(max=height - 1)
    weight = (rows - low).view(1, -1, 1)
    band = max(1, max_elements // max(1, channels * out_w))
    ids = torch.empty((out_h, out_w), dtype=torch.int64, device=logits.device)
    for start in range(0, out_h, band):
        stop = min(out_h, start + band)
        w = weight[:, start:stop]
        vertical = logits[:, low[start:stop]] * (1 - w) + logits[:, high[start:stop]] * w  # (C, b, w)
        full = torch.nn.functional.interpolate(
            vertical[None], size=(stop - start, out_w), mode="bilinear", align_corners=False
        )[0]
        ids[start:stop] = full.argmax(dim=0)
    return ids
