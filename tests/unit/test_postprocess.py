"""``model/postprocess.py``: decoding a detection branch (scores, labels, thresholds, class-wise NMS, caps,
clipping, box regression) and a segmentation branch, on hand-made outputs whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from model.network import BranchOutput
from model.postprocess import decode_detections, decode_segmentation, upsample_class_ids

SIZE = (64, 80)  # height, width
#: Two levels of default boxes (xyxy): 0 and 2 overlap (IoU 0.68), 1 and 3 stand alone, 4 leaves the image.
ANCHORS = [
    torch.tensor([[0.0, 0, 10, 10], [50, 30, 60, 40], [1, 1, 11, 11]]),
    torch.tensor([[20.0, 20, 40, 40], [70, 50, 90, 70]]),
]


def branch(probabilities: list[list[float]], regression: torch.Tensor | None = None) -> BranchOutput:
    """One image; ``probabilities`` per anchor over (background, class 1, class 2); logits are their logs
    so the softmax gives them back."""
    logits = torch.tensor([[math.log(max(p, 1e-12)) for p in row] for row in probabilities])[None]
    regression = torch.zeros(1, len(probabilities), 4) if regression is None else regression[None]
    split = len(ANCHORS[0])
    return BranchOutput(
        cls_logits=[logits[:, :split], logits[:, split:]],
        bbox_regression=[regression[:, :split], regression[:, split:]],
    )


def decode(output: BranchOutput, **options) -> dict[str, torch.Tensor]:
    (result,) = decode_detections(output, ANCHORS, SIZE, **options)
    return result


def test_scores_labels_and_boxes_of_each_anchor_sorted_by_score():
    output = branch(
        [
            [0.1, 0.9, 0.0],  # anchor 0: class 1
            [0.4, 0.0, 0.6],  # anchor 1: class 2
            [1.0, 0.0, 0.0],  # anchor 2: background only
            [0.3, 0.0, 0.7],  # anchor 3: class 2
            [1.0, 0.0, 0.0],
        ]
    )
    result = decode(output, score_threshold=0.05)
    torch.testing.assert_close(result["scores"], torch.tensor([0.9, 0.7, 0.6]))
    assert result["labels"].tolist() == [1, 2, 2]  # 1..C: the background column is not a class
    torch.testing.assert_close(result["boxes"], torch.stack([ANCHORS[0][0], ANCHORS[1][0], ANCHORS[0][1]]))


def test_score_threshold_is_strict_and_keeps_the_rest():
    output = branch([[0.5, 0.5, 0.0], [0.7, 0.3, 0.0], [0.8, 0.0, 0.2], [1, 0, 0], [1, 0, 0]])
    assert decode(output, score_threshold=0.25)["scores"].tolist() == pytest.approx([0.5, 0.3])
    assert decode(output, score_threshold=0.5)["scores"].numel() == 0  # 0.5 is not above 0.5
    assert decode(output, score_threshold=0.1)["scores"].numel() == 3


def test_nms_is_class_wise():
    # Anchors 0 and 2 overlap (IoU 0.68 > 0.45): the same class keeps the higher score only ...
    same = branch([[0.2, 0.8, 0.0], [1, 0, 0], [0.4, 0.6, 0.0], [1, 0, 0], [1, 0, 0]])
    result = decode(same)
    assert result["scores"].tolist() == pytest.approx([0.8]) and result["labels"].tolist() == [1]
    # ... below the NMS threshold both stay, and so do two classes on the same spot.
    assert decode(same, nms_threshold=0.7)["scores"].tolist() == pytest.approx([0.8, 0.6])
    different = branch([[0.2, 0.8, 0.0], [1, 0, 0], [0.4, 0.0, 0.6], [1, 0, 0], [1, 0, 0]])
    assert decode(different)["labels"].tolist() == [1, 2]


def test_candidates_and_detections_are_capped_by_score():
    output = branch([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8], [1, 0, 0], [0.3, 0.7, 0.0], [0.4, 0.0, 0.6]])
    assert decode(output)["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert decode(output, candidates_per_image=2)["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert decode(output, max_detections=3)["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_boxes_are_decoded_from_the_regression_and_clipped_to_the_image():
    regression = torch.zeros(5, 4)
    regression[0] = torch.tensor([1.0, 0.5, 0.0, 0.0])  # centre moves by (dx * w, dy * h) / 10
    regression[3] = torch.tensor([0.0, 0.0, 5 * math.log(2), 0.0])  # width doubles (weight 5)
    output = branch([[0.1, 0.9, 0.0], [1, 0, 0], [1, 0, 0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]], regression)
    result = decode(output)
    by_score = result["boxes"].tolist()
    assert by_score[0] == pytest.approx([1.0, 0.5, 11.0, 10.5])
    assert by_score[1] == pytest.approx([10.0, 20.0, 50.0, 40.0])
    assert by_score[2] == pytest.approx([70.0, 50.0, 80.0, 64.0])  # clipped to 80 x 64


def test_a_batch_decodes_each_image_on_its_own():
    first = branch([[0.1, 0.9, 0.0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    second = branch([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0.3, 0.0, 0.7], [1, 0, 0]])
    both = BranchOutput(
        cls_logits=[torch.cat([a, b]) for a, b in zip(first.cls_logits, second.cls_logits, strict=True)],
        bbox_regression=[
            torch.cat([a, b]) for a, b in zip(first.bbox_regression, second.bbox_regression, strict=True)
        ],
    )
    one, two = decode_detections(both, ANCHORS, SIZE)
    assert one["labels"].tolist() == [1] and two["labels"].tolist() == [2]
    torch.testing.assert_close(two["boxes"], ANCHORS[1][:1])


def test_a_segmentation_branch_is_refused_and_decoded_by_argmax():
    logits = torch.zeros(2, 3, 4, 5)
    logits[0, 2, 1, 1] = 5.0
    logits[1, 1] = 1.0
    masks = decode_segmentation(BranchOutput(cls_logits=[logits]))
    assert masks.shape == (2, 4, 5) and masks.dtype == torch.int64
    assert masks[0, 1, 1] == 2 and int(masks[0].sum()) == 2 and bool((masks[1] == 1).all())
    with pytest.raises(ValueError, match=r"^decode_detections needs a detection branch$"):
        decode_detections(BranchOutput(cls_logits=[logits]), ANCHORS, SIZE)


def test_defaults_keep_400_candidates_and_100_detections():
    """450 far-apart boxes (no NMS overlap) of one class, scores falling with the index."""
    count = 450
    corners = torch.arange(count, dtype=torch.float32)[:, None] * 20
    anchors = [torch.cat([corners, corners, corners + 10, corners + 10], dim=1)]
    scores = torch.linspace(0.9, 0.5, count)
    logits = torch.stack([(1 - scores).log(), scores.log()], dim=1)[None]
    output = BranchOutput(cls_logits=[logits], bbox_regression=[torch.zeros(1, count, 4)])
    (result,) = decode_detections(output, anchors, (10_000, 10_000))
    assert len(result["scores"]) == 100
    (result,) = decode_detections(output, anchors, (10_000, 10_000), max_detections=count)
    assert len(result["scores"]) == 400
    torch.testing.assert_close(result["scores"], scores[:400])


# ---------------------------------------------------------------------------------------- class-id upsampling
def test_class_ids_at_the_network_size_are_the_argmax() -> None:
    logits = torch.randn(4, 6, 7, generator=torch.Generator().manual_seed(0))
    ids = upsample_class_ids(logits, (6, 7))
    assert ids.shape == (6, 7) and torch.equal(ids, logits.argmax(dim=0))


def test_banded_upsampling_of_blocky_classes_equals_the_full_upsampling() -> None:
    """Large class regions (a trained model's output): most bands have few boundary pixels, so only those are
    interpolated; the first bands have none at all (a band without boundaries must not end the loop)."""
    height, width, classes = 12, 10, 4
    regions = torch.zeros(height, width, dtype=torch.int64)
    regions[5:, 3:] = 1
    regions[8:, 7:] = 2
    regions[9:11, :2] = 3
    logits = 0.1 * torch.randn(classes, height, width, generator=torch.Generator().manual_seed(1))
    logits.scatter_add_(0, regions[None], torch.full((1, height, width), 4.0))
    for size in ((37, 31), (25, 21), (12, 23)):
        full = torch.nn.functional.interpolate(logits[None], size, mode="bilinear", align_corners=False)[0]
        for max_elements in (classes * size[1], classes * size[1] * 5, 1 << 23):  # 1-row bands .. one band
            ids = upsample_class_ids(logits, size, max_elements=max_elements)
            mismatch = ids != full.argmax(dim=0)
            top2 = full.topk(2, dim=0).values
            assert torch.all((top2[0] - top2[1])[mismatch] < 1e-5), (size, max_elements, mismatch.sum())
            assert {int(c) for c in ids.unique()} == {0, 1, 2, 3}
