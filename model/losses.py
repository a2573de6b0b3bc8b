"""Training losses: SSD per branch, segmentation cross-entropy per branch, GAFF attention guidance.

The three branches are trained jointly: total = L_visible + L_thermal + L_fused + w_aux * L_gaff.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
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


@dataclass
class PaddedBoxes:
    """A batch's ground-truth boxes padded to the most boxes of any image (K >= 1), on one device.

    Shapes: ``boxes`` (N, K, 4) float32 xyxy; ``labels`` (N, K) int64; ``valid`` (N, K) bool, real and not
    ignored; ``ignored`` (N, K) bool, real and flagged ignore (padding is neither).
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    ignored: Tensor


def pad_boxes(targets: list[Target], device: torch.device) -> PaddedBoxes:
    """Stack the targets' "boxes", "labels" and optional "ignore" into :class:`PaddedBoxes` on ``device``.

    Built on the CPU, where the data loader leaves targets, and moved in four copies: per-image copies to a
    GPU would each be a transfer (and a sync).
    """
    count = len(targets)
    most = max([1, *(len(t["boxes"]) for t in targets)])
    boxes = torch.zeros((count, most, 4), dtype=torch.float32)
    labels = torch.zeros((count, most), dtype=torch.int64)
    real = torch.zeros((count, most), dtype=torch.bool)
    flagged = torch.zeros((count, most), dtype=torch.bool)
    for i, target in enumerate(targets):
        k = len(target["boxes"])
        if k == 0:
            continue
        boxes[i, :k] = target["boxes"].detach().to("cpu", torch.float32).reshape(k, 4)
        labels[i, :k] = target["labels"].detach().to("cpu", torch.int64).reshape(k)
        real[i, :k] = True
        ignore = target.get("ignore")
        if ignore is not None:
            flagged[i, :k] = ignore.detach().to("cpu").bool().reshape(k)
    moved = [t.to(device, non_blocking=True) for t in (boxes, labels, real & ~flagged, real & flagged)]
    return PaddedBoxes(*moved)


def batched_box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU of (N, K, 4) boxes with (A, 4) anchors, both xyxy -> (N, K, A). Zero-size padding boxes get 0."""
    count, most = boxes.shape[:2]
    return box_iou(boxes.reshape(-1, 4), anchors).view(count, most, len(anchors))


class SSDLoss(nn.Module):
    """Matching at IoU 0.5, smooth-L1 box loss and cross-entropy with 3:1 hard negative mining."""

    def __init__(self, iou_threshold: float = 0.5, neg_to_pos_ratio: int = 3, min_negatives: int = 3) -> None:
        super().__init__()
        self.iou_threshold = iou_threshold
        self.box_coder = BoxCoder(BOX_CODER_WEIGHTS)
        self.neg_to_pos_ratio = neg_to_pos_ratio
        # Pairs without objects still teach "background" with a few hard negatives (plain SSD learns nothing).
        self.min_negatives = min_negatives

    def match(self, anchors: Tensor, boxes: PaddedBoxes) -> AnchorTargets:
        """anchors (A, 4) -> targets for every image of the batch, in one pass over the (N, K, A) IoUs.

        SSD's rule (torchvision's ``SSDMatcher``): an anchor takes the box it overlaps most when that IoU is
        at least the threshold, and each box also takes the anchor it overlaps most. Ignored boxes are left
        out of the matching; background anchors that overlap one of them are ignored rather than negative.
        Vectorised over the batch: a loop over images costs hundreds of small kernels and device syncs per
        step on a GPU.
        """
        iou = batched_box_iou(boxes.boxes, anchors)  # (N, K, A)
        matchable = iou.masked_fill(~boxes.valid[:, :, None], -1.0)
        best_iou, matches = matchable.max(dim=1)  # (N, A): best box per anchor
        matches = matches.masked_fill(best_iou < self.iou_threshold, -1)
        # Each valid box keeps its best anchor (invalid rows write into a spare column, dropped after).
        count, anchors_count = matches.shape[0], len(anchors)
        best_anchor = matchable.argmax(dim=2).masked_fill(~boxes.valid, anchors_count)  # (N, K)
        box_index = torch.arange(boxes.valid.shape[1], device=anchors.device).expand_as(best_anchor)
        spare = torch.full((count, 1), -1, dtype=matches.dtype, device=matches.device)
        matches = torch.cat([matches, spare], dim=1).scatter(1, best_anchor, box_index)[:, :anchors_count]
        positive = matches >= 0
        index = matches.clamp(min=0)
        labels = boxes.labels.gather(1, index) * positive
        matched_boxes = boxes.boxes.gather(1, index[:, :, None].expand(-1, -1, 4))  # (N, A, 4)
        encoded = self.box_coder.encode_single(matched_boxes.reshape(-1, 4), anchors.repeat(count, 1))
        # where, not a product: unmatched anchors encode a padding box of zero size (log 0).
        regression = torch.where(positive[:, :, None], encoded.view(count, anchors_count, 4), 0.0)
        near_ignored = iou.masked_fill(~boxes.ignored[:, :, None], -1.0).amax(dim=1) >= self.iou_threshold
        labels = labels.masked_fill(near_ignored & (labels == 0), IGNORED_ANCHOR)
        return AnchorTargets(labels, regression)

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
        # A masked sum, not boolean indexing: indexing would sync with the GPU once per branch.
        counted = torch.where(positives | hard_negatives, cls_loss, torch.zeros_like(cls_loss))
        loss = (box_loss.sum() + counted.sum()) / normaliser
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


def box_masks(boxes: PaddedBoxes, image_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """(N, 1, h, w) float mask: 1 where a grid cell's centre lies inside a non-ignored ground-truth box."""
    height, width = image_size
    rows, cols = grid
    device = boxes.boxes.device
    ys = (torch.arange(rows, device=device) + 0.5) * (height / rows)
    xs = (torch.arange(cols, device=device) + 0.5) * (width / cols)
    b = boxes.boxes[:, :, :, None]  # (N, K, 4, 1)
    inside_x = (xs >= b[:, :, 0]) & (xs <= b[:, :, 2])  # (N, K, w)
    inside_y = (ys >= b[:, :, 1]) & (ys <= b[:, :, 3])  # (N, K, h)
    inside = inside_y[:, :, :, None] & inside_x[:, :, None, :] & boxes.valid[:, :, None, None]
    return inside.any(dim=1, keepdim=True).float()


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
        device = output.fused.cls_logits[0].device
        ground_truth: PaddedBoxes | Tensor
        if self.ssd is not None:
            assert output.anchors is not None
            ground_truth = pad_boxes(targets, device)
            matched = self.ssd.match(torch.cat(output.anchors), ground_truth)
            for name in BRANCHES:
                losses[name], per_location[name] = self.ssd(output.branch(name), matched)
        else:
            assert self.segmentation is not None
            ground_truth = torch.stack([t["mask"] for t in targets]).to(device, non_blocking=True)
            for name in BRANCHES:
                losses[name], per_location[name] = self.segmentation(output.branch(name), ground_truth)
        total = losses["visible"] + losses["thermal"] + losses["fused"]
        if self.config.aux_loss_weight > 0:
            aux = self.guidance(output.attention, *self._guidance_targets(output, ground_truth, per_location))
            losses["gaff"] = aux
            total = total + self.config.aux_loss_weight * aux
        losses["total"] = total
        return losses

    def _guidance_targets(
        self, output: NetOutput, ground_truth: PaddedBoxes | Tensor, per_location: dict[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``ground_truth``: the padded boxes (detection) or the (N, H, W) masks (segmentation)."""
        grids = [tuple(a.intra_visible.shape[-2:]) for a in output.attention]
        if isinstance(ground_truth, PaddedBoxes):
            assert output.anchors is not None
            masks = [box_masks(ground_truth, output.image_size, g) for g in grids]
            counts = [len(a) for a in output.anchors]

            def per_cell(loss: Tensor) -> list[Tensor]:
                # Anchors are laid out (y, x, anchor) per level: sum each cell's anchors.
                return [
                    chunk.reshape(chunk.shape[0], h, w, -1).sum(-1)
                    for chunk, (h, w) in zip(loss.split(counts, dim=1), grids, strict=True)
                ]

            return masks, per_cell(per_location["visible"]), per_cell(per_location["thermal"])
        objects = ((ground_truth != IGNORE_INDEX) & (ground_truth > 0)).float()[:, None]
        masks = [F.adaptive_avg_pool2d(objects, g) for g in grids]

        def pooled(loss: Tensor) -> list[Tensor]:
            return [F.adaptive_avg_pool2d(loss[:, None], g)[:, 0] for g in grids]

        return masks, pooled(per_location["visible"]), pooled(per_location["thermal"])
