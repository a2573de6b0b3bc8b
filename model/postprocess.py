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
