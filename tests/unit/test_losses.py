"""The detection loss: batched matching against torchvision's per-image SSD matcher; no host syncs."""

from collections import Counter

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from model.config import NetConfig
from model.losses import (
    BOX_CODER_WEIGHTS,
    IGNORED_ANCHOR,
    SSDLoss,
    ThreeBranchLoss,
    batched_box_iou,
    box_masks,
    pad_boxes,
)
from model.network import ThreeBranchNet

SIZE = (64, 80)


def _anchors() -> torch.Tensor:
    net = ThreeBranchNet(
        NetConfig(task="detection", class_names=("a", "b", "c"), width=0.0625, image_size=SIZE)
    )
    with torch.no_grad():
        output = net(torch.rand(1, 3, *SIZE), torch.rand(1, 1, *SIZE))
    return torch.cat(output.anchors)


def _random_targets(rng: np.random.Generator, count: int) -> list[dict[str, torch.Tensor]]:
    targets = []
    for _ in range(count):
        k = int(rng.integers(0, 6))
        x1 = rng.uniform(0, SIZE[1] - 8, k)
        y1 = rng.uniform(0, SIZE[0] - 8, k)
        w, h = rng.uniform(4, 40, k), rng.uniform(4, 50, k)
        boxes = np.stack([x1, y1, np.minimum(x1 + w, SIZE[1]), np.minimum(y1 + h, SIZE[0])], axis=1)
        targets.append(
            {
                "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.as_tensor(rng.integers(1, 4, k), dtype=torch.int64),
                "ignore": torch.as_tensor(rng.random(k) < 0.25),
            }
        )
    return targets


def _reference_match(
    anchors: torch.Tensor, target: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD's matching for one image, written plainly with torchvision's matcher (the oracle)."""
    matcher, coder = SSDMatcher(0.5), BoxCoder(BOX_CODER_WEIGHTS)
    boxes, ignore = target["boxes"], target["ignore"]
    keep_boxes, keep_labels = boxes[~ignore], target["labels"][~ignore]
    labels = torch.zeros(len(anchors), dtype=torch.int64)
    regression = torch.zeros((len(anchors), 4))
    if len(keep_boxes):
        matched = matcher(box_iou(keep_boxes, anchors))
        positive = matched >= 0
        labels[positive] = keep_labels[matched[positive]]
        regression[positive] = coder.encode_single(keep_boxes[matched[positive]], anchors[positive])
    if ignore.any():
        near = box_iou(boxes[ignore], anchors).amax(dim=0) >= 0.5
        labels[near & (labels == 0)] = IGNORED_ANCHOR
    return labels, regression


def test_batched_matching_equals_torchvision_matcher_per_image():
    anchors = _anchors()
    targets = _random_targets(np.random.default_rng(3), 24)
    assert any(len(t["boxes"]) == 0 for t in targets) and any(t["ignore"].any() for t in targets)
    matched = SSDLoss().match(anchors, pad_boxes(targets, torch.device("cpu")))
    assert matched.labels.shape == (24, len(anchors)) and matched.regression.shape == (24, len(anchors), 4)
    for i, target in enumerate(targets):
        labels, regression = _reference_match(anchors, target)
        torch.testing.assert_close(matched.labels[i], labels)
        torch.testing.assert_close(matched.regression[i], regression, atol=1e-4, rtol=1e-4)
    assert (matched.labels > 0).any() and (matched.labels == IGNORED_ANCHOR).any()


def test_every_box_gets_an_anchor_even_below_the_threshold():
    anchors = _anchors()
    # A sliver no anchor overlaps at IoU 0.5: SSD still gives it its best anchor.
    target = {"boxes": torch.tensor([[10.0, 10.0, 12.0, 40.0]]), "labels": torch.tensor([2])}
    matched = SSDLoss().match(anchors, pad_boxes([target], torch.device("cpu")))
    assert batched_box_iou(target["boxes"][None], anchors).max() < 0.5
    assert int((matched.labels[0] == 2).sum()) == 1


def test_empty_batch_has_no_positives():
    anchors = _anchors()
    targets = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}] * 3
    padded = pad_boxes(targets, torch.device("cpu"))
    assert padded.boxes.shape == (3, 1, 4) and not padded.valid.any()
    matched = SSDLoss().match(anchors, padded)
    assert (matched.labels == 0).all() and (matched.regression == 0).all()


def test_batched_box_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    boxes = torch.as_tensor(rng.uniform(0, 50, (2, 5, 4)), dtype=torch.float32)
    boxes[..., 2:] = boxes[..., :2] + torch.as_tensor(rng.uniform(1, 30, (2, 5, 2)), dtype=torch.float32)
    anchors = _anchors()[:300]
    for i in range(2):
        torch.testing.assert_close(batched_box_iou(boxes, anchors)[i], box_iou(boxes[i], anchors))


def test_box_masks_mark_cells_inside_non_ignored_boxes():
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 40.0, 32.0], [40.0, 32.0, 80.0, 64.0]]),
            "labels": torch.tensor([1, 1]),
            "ignore": torch.tensor([False, True]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    masks = box_masks(pad_boxes(targets, torch.device("cpu")), SIZE, (2, 2))  # cell centres (16|48, 20|60)
    assert masks.shape == (2, 1, 2, 2)
    torch.testing.assert_close(masks[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # ignored box: no cell
    assert masks[1].sum() == 0


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_loss_makes_no_host_syncs(task):
    """Boolean indexing, ``.item()`` and ``.nonzero()`` each wait for the GPU: the loss must not use them
    (a per-image loop made ~500 per detection step of 32 pairs)."""
    net = ThreeBranchNet(NetConfig(task=task, class_names=("a", "b", "c"), width=0.0625, image_size=SIZE))
    targets = _random_targets(np.random.default_rng(1), 8)
    for target in targets:
        target["mask"] = torch.randint(0, 4, SIZE)
    output = net(torch.rand(8, 3, *SIZE), torch.rand(8, 1, *SIZE))
    criterion = ThreeBranchLoss(net.config)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        losses = criterion(output, targets)
    syncing = {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select"}
    counts = Counter(event.name for event in profile.events() if event.name in syncing)
    assert not counts, counts
    assert torch.isfinite(losses["total"]) and losses["total"] > 0
