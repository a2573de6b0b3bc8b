"""Training losses: SSD per branch, segmentation cross-entropy per branch, GAFF attention guidance.

The three branches are trained jointly: total = L_visible + L_thermal + L_fused + w_aux * L_gaff.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from model.config import NetConfig
from model.data.sample import IGNORE_INDEX
from model.fusion import AttentionLogits
from model.network import BRANCHES, BranchOutput, NetOutput

Target = dict[str, Tensor]

#: SSD's box-coding weights for (x, y, w, h).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Anchor targets with this value are neither positives nor negatives (they overlap an ignore box).
IGNORED_ANCHOR = -1


@dataclass
class AnchorTargets:
    """Matching of every default box to the ground truth, shared by the three branches.

    Shapes: ``labels`` (N, A) int64 (0 background, ``IGNORED_ANCHOR`` ignored); ``regression`` (N, A, 4),
    meaningful where ``labels > 0``.
    """

    labels: Tensor
    regression: Tensor

    @property
    def positives(self) -> Tensor:
        return self.labels > 0


class SSDLoss(nn.Module):
    """Matching at IoU 0.5, smooth-L1 box loss and cross-entropy with 3:1 hard negative mining."""

    def __init__(self, iou_threshold: float = 0.5, neg_to_pos_ratio: int = 3, min_negatives: int = 3) -> None:
        super().__init__()
        self.matcher = SSDMatcher(iou_threshold)
        self.iou_threshold = iou_threshold
        self.box_coder = BoxCoder(BOX_CODER_WEIGHTS)
        self.neg_to_pos_ratio = neg_to_pos_ratio
        # Pairs without objects still teach "background" with a few hard negatives (plain SSD learns nothing).
        self.min_negatives = min_negatives

    def match(self, anchors: Tensor, targets: list[Target]) -> AnchorTargets:
        """anchors (A, 4) -> targets for every image of the batch."""
        labels, regression = [], []
        for target in targets:
            boxes = target["boxes"].to(anchors)
            ignore = target.get("ignore")
            ignore = torch.zeros(len(boxes), dtype=torch.bool) if ignore is None else ignore.bool()
            ignore = ignore.to(anchors.device)
            keep_boxes, keep_labels = boxes[~ignore], target["labels"].to(anchors.device)[~ignore]
            image_labels = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
            image_regression = torch.zeros((len(anchors), 4), dtype=anchors.dtype, device=anchors.device)
            if len(keep_boxes):
                matched = self.matcher(box_iou(keep_boxes, anchors))
                positive = matched >= 0
                image_labels[positive] = keep_labels[matched[positive]]
                image_regression[positive] = self.box_coder.encode_single(
                    keep_boxes[matched[positive]], anchors[positive]
                )
            if ignore.any():
                near_ignored = box_iou(boxes[ignore], anchors).amax(dim=0) >= self.iou_threshold
                image_labels[near_ignored & (image_labels == 0)] = IGNORED_ANCHOR
            labels.append(image_labels)
            regression.append(image_regression)
        return AnchorTargets(torch.stack(labels), torch.stack(regression))

    def forward(self, branch: BranchOutput, matched: AnchorTargets) -> tuple[Tensor, Tensor]:
        """Returns (the branch's loss, per-anchor loss (N, A) that guides GAFF's inter-modality attention)."""
        if branch.bbox_regression is None:
            raise ValueError("SSDLoss needs a detection branch")
        cls_logits = torch.cat(branch.cls_logits, dim=1).float()
        regression = torch.cat(branch.bbox_regression, dim=1).float()
        positives = matched.positives
        num_positives = positives.sum(dim=1, keepdim=True)
        box_loss = F.smooth_l1_loss(regression, matched.regression, reduction="none").sum(-1) * positives
        cls_loss = F.cross_entropy(
            cls_logits.flatten(0, 1), matched.labels.flatten(), reduction="none", ignore_index=IGNORED_ANCHOR
        ).view_as(matched.labels)
        negative_loss = cls_loss.masked_fill(matched.labels != 0, -float("inf"))
        num_negatives = (self.neg_to_pos_ratio * num_positives).clamp(min=self.min_negatives)
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
        hard_negatives = (rank < num_negatives) & (matched.labels == 0)
        normaliser = num_positives.sum().clamp(min=1)
        loss = (box_loss.sum() + cls_loss[positives | hard_negatives].sum()) / normaliser
        return loss, (cls_loss + box_loss).detach()


class SegmentationLoss(nn.Module):
    """Pixel cross-entropy with an ignore index. Returns (loss, per-pixel loss (N, H, W))."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, branch: BranchOutput, masks: Tensor) -> tuple[Tensor, Tensor]:
        logits = branch.cls_logits[0].float()
        pixel_loss = F.cross_entropy(logits, masks, reduction="none", ignore_index=self.ignore_index)
        valid = (masks != self.ignore_index).sum().clamp(min=1)
        return pixel_loss.sum() / valid, pixel_loss.detach()


def box_masks(targets: list[Target], image_size: tuple[int, int], grid: tuple[int, int], device) -> Tensor:
    """(N, 1, h, w) float mask: 1 where a grid cell's centre lies inside a non-ignored ground-truth box."""
    height, width = image_size
    rows, cols = grid
    ys = (torch.arange(rows, device=device) + 0.5) * (height / rows)
    xs = (torch.arange(cols, device=device) + 0.5) * (width / cols)
    masks = []
    for target in targets:
        boxes = target["boxes"].to(device=device, dtype=torch.float32)
        ignore = target.get("ignore")
        if ignore is not None:
            boxes = boxes[~ignore.to(device).bool()]
        inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # (K, w)
        inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # (K, h)
        masks.append((inside_y[:, :, None] & inside_x[:, None, :]).any(dim=0).float())
    return torch.stack(masks)[:, None]


class GAFFGuidanceLoss(nn.Module):
    """Auxiliary losses that guide GAFF's attention maps.

    Intra-modality: each modality's map should light up on objects (BCE against the object mask).
    Inter-modality: the softmax should favour, at each location, the modality whose own branch has the
    lower loss there (cross-entropy; locations where both branches are equally good are skipped).
    """

    def forward(
        self,
        attention: list[AttentionLogits],
        object_masks: list[Tensor],
        visible_loss: list[Tensor],
        thermal_loss: list[Tensor],
    ) -> Tensor:
        """Per level: object mask (N, 1, h, w) in [0, 1]; per-location branch losses (N, h, w)."""
        total = attention[0].inter.new_zeros(())
        for att, mask, loss_v, loss_t in zip(
            attention, object_masks, visible_loss, thermal_loss, strict=True
        ):
            intra = F.binary_cross_entropy_with_logits(
                att.intra_visible.float(), mask
            ) + F.binary_cross_entropy_with_logits(att.intra_thermal.float(), mask)
            better = (loss_t < loss_v).long()  # 0: visible branch better here, 1: thermal
            decided = (loss_t - loss_v).abs() > 1e-4
            inter = F.cross_entropy(att.inter.float(), better, reduction="none")
            inter = (inter * decided).sum() / decided.sum().clamp(min=1)
            total = total + intra + inter
        return total / len(attention)


class ThreeBranchLoss(nn.Module):
    """Sum of the three branches' task losses plus the weighted GAFF guidance.

    Targets are the dataset's target dicts with boxes in network-input pixels ("boxes", "labels", "ignore")
    and, for segmentation, "mask" (H, W). Returns a dict with "total" and each component (detached floats
    except "total").
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.ssd = SSDLoss() if config.task == "detection" else None
        self.segmentation = SegmentationLoss() if config.task == "segmentation" else None
        self.guidance = GAFFGuidanceLoss()

    def forward(self, output: NetOutput, targets: list[Target]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        per_location: dict[str, Tensor] = {}
        if self.ssd is not None:
            assert output.anchors is not None
            matched = self.ssd.match(torch.cat(output.anchors), targets)
            for name in BRANCHES:
                losses[name], per_location[name] = self.ssd(output.branch(name), matched)
        else:
            assert self.segmentation is not None
            masks = torch.stack([t["mask"] for t in targets]).to(output.fused.cls_logits[0].device)
            for name in BRANCHES:
                losses[name], per_location[name] = self.segmentation(output.branch(name), masks)
        total = losses["visible"] + losses["thermal"] + losses["fused"]
        if self.config.aux_loss_weight > 0:
            aux = self.guidance(output.attention, *self._guidance_targets(output, targets, per_location))
            losses["gaff"] = aux
            total = total + self.config.aux_loss_weight * aux
        losses["total"] = total
        return losses

    def _guidance_targets(
        self, output: NetOutput, targets: list[Target], per_location: dict[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        grids = [tuple(a.intra_visible.shape[-2:]) for a in output.attention]
        device = output.attention[0].inter.device
        if self.ssd is not None:
            assert output.anchors is not None
            masks = [box_masks(targets, output.image_size, g, device) for g in grids]
            counts = [len(a) for a in output.anchors]

            def per_cell(loss: Tensor) -> list[Tensor]:
                # Anchors are laid out (y, x, anchor) per level: sum each cell's anchors.
                return [
                    chunk.reshape(chunk.shape[0], h, w, -1).sum(-1)
                    for chunk, (h, w) in zip(loss.split(counts, dim=1), grids, strict=True)
                ]

            return masks, per_cell(per_location["visible"]), per_cell(per_location["thermal"])
        gt = torch.stack([t["mask"] for t in targets]).to(device)
        objects = ((gt != IGNORE_INDEX) & (gt > 0)).float()[:, None]
        masks = [F.adaptive_avg_pool2d(objects, g) for g in grids]

        def pooled(loss: Tensor) -> list[Tensor]:
            return [F.adaptive_avg_pool2d(loss[:, None], g)[:, 0] for g in grids]

        return masks, pooled(per_location["visible"]), pooled(per_location["thermal"])
