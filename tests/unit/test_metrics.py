"""Metrics on hand-computed cases: COCO AP, KAIST log-average miss rate, segmentation IoU, group splits."""

import math
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.data.sample import IGNORE_INDEX
from model.metrics import (
    ConfusionMatrix,
    coco_detection_metrics,
    log_average_miss_rate,
    metrics_by_group,
    miss_rate_fppi_curve,
    sample_miss_rates,
    segmentation_metrics,
)

NAMES = ["person", "car"]


def pred(boxes, scores, labels=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"boxes": boxes, "scores": np.asarray(scores, np.float32), "labels": labels}


def gt(boxes, labels=None, ignore=None, occlusion=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    target = {
        "boxes": boxes,
        "labels": np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64),
    }
    if ignore is not None:
        target["ignore"] = np.asarray(ignore, bool)
    if occlusion is not None:
        target["occlusion"] = np.asarray(occlusion, np.int64)
    return target


def close(value, expected):
    return math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------------ COCO


def test_coco_perfect_predictions():
    targets = [gt([[0, 0, 10, 20], [30, 30, 80, 60]], [1, 2]), gt([[5, 5, 50, 90]], [1])]
    predictions = [pred(t["boxes"], np.linspace(0.9, 0.5, len(t["boxes"])), t["labels"]) for t in targets]
    metrics = coco_detection_metrics(predictions, targets, NAMES, per_class=True)
    for key in ("mAP", "AP50", "AP75", "AP50/person", "AP50/car"):
        assert close(metrics[key], 1.0), key


def test_coco_single_prediction_iou_0_6():
    # GT 100x100, prediction its left 60x100: IoU = 6000 / 10000 = 0.6 exactly (and COCO's 0.60 threshold,
    # np.linspace(.5, .95, 10)[2], is exactly 0.6 too). COCO matches when IoU >= threshold, so the
    # prediction is a hit at .50, .55 and .60 -> AP 1 there, 0 at the 7 other thresholds:
    # mAP = 3 / 10 = 0.3, AP50 = 1, AP75 = 0.
    targets = [gt([[0, 0, 100, 100]])]
    metrics = coco_detection_metrics([pred([[0, 0, 60, 100]], [0.9])], targets, NAMES)
    assert close(metrics["AP50"], 1.0)
    assert metrics["AP75"] == 0.0
    assert close(metrics["mAP"], 0.3)
    # IoU 0.57 (57x100 box) misses the 0.60 threshold: hits at .50 and .55 only -> mAP = 2 / 10.
    metrics = coco_detection_metrics([pred([[0, 0, 57, 100]], [0.9])], targets, NAMES)
    assert close(metrics["mAP"], 0.2)
    assert close(metrics["AP50"], 1.0)


def test_coco_false_positive_ranked_above_true_positive():
    # Two GT boxes; detections by score: TP (0.9), FP (0.8), TP (0.7).
    # recall    = [0.5, 0.5, 1.0], precision = [1, 1/2, 2/3]; COCO's envelope (max precision to the right)
    # = [1, 2/3, 2/3]. For each of the 101 recall thresholds r = 0, 0.01, ..., 1 the precision is taken at
    # the first point with recall >= r: r <= 0.50 (51 thresholds) -> 1, r in 0.51..1.00 (50) -> 2/3.
    # AP50 = (51 * 1 + 50 * 2/3) / 101 = 84.333 / 101 = 0.83498...
    targets = [gt([[0, 0, 10, 10], [20, 20, 30, 30]])]
    predictions = [pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7])]
    metrics = coco_detection_metrics(predictions, targets, NAMES)
    expected = (51 + 50 * 2 / 3) / 101
    assert close(metrics["AP50"], expected)
    assert close(metrics["mAP"], expected)  # exact boxes: same at every IoU threshold


def test_coco_undetected_ignore_box_is_not_a_miss():
    """An ignore region nobody detected (an object no sensor shows) costs no recall."""
    person, hidden = [0, 0, 10, 10], [100, 100, 150, 150]
    predictions = [pred([person], [0.8])]
    ignored = coco_detection_metrics(predictions, [gt([person, hidden], ignore=[False, True])], NAMES)
    assert close(ignored["AP50"], 1.0)
    counted = coco_detection_metrics(predictions, [gt([person, hidden])], NAMES)
    assert counted["AP50"] < 0.6  # counted, the same box is a miss: recall 1/2


def test_coco_detection_on_ignore_box_changes_nothing():
    person, crowd = [0, 0, 10, 10], [100, 100, 150, 150]
    predictions = [pred([crowd, person], [0.9, 0.8])]  # the crowd detection ranks first
    with_ignore = coco_detection_metrics(predictions, [gt([person, crowd], ignore=[False, True])], NAMES)
    without_crowd_detection = coco_detection_metrics([pred([person], [0.8])], [gt([person])], NAMES)
    assert with_ignore == without_crowd_detection
    assert close(with_ignore["AP50"], 1.0)
    # Without the ignore region the same detection is a false positive ranked above the true positive:
    # precision 1/2 at recall 1 -> every interpolated precision is 1/2.
    no_region = coco_detection_metrics(predictions, [gt([person])], NAMES)
    assert close(no_region["AP50"], 0.5)


def test_coco_ignore_box_is_neither_miss_nor_false_positive():
    person, crowd = [0, 0, 10, 10], [100, 100, 200, 200]
    inside_crowd = [110, 110, 130, 130]  # IoU with the crowd box 0.04, but wholly inside it
    targets = [gt([person, crowd], ignore=[False, True])]
    # the crowd region left undetected is not a miss; a detection inside it (crowd IoU = intersection over
    # the detection's area = 1) is not a false positive, even ranked first
    predictions = [pred([inside_crowd, person], [0.9, 0.8])]
    assert close(coco_detection_metrics(predictions, targets, NAMES)["AP50"], 1.0)
    # the same box as a normal GT: FP (0.9) above TP (0.8), then recall stays 1/2 -> precision 1/2 up to
    # recall 0.5 (51 thresholds), 0 beyond -> AP50 = 51 * 0.5 / 101
    normal = coco_detection_metrics(predictions, [gt([person, crowd])], NAMES)
    assert close(normal["AP50"], 51 * 0.5 / 101)


def test_coco_empty_and_absent_classes():
    targets = [gt([[0, 0, 10, 10]]), gt(np.zeros((0, 4)))]  # second image has no GT at all
    empty = [pred(np.zeros((0, 4)), []), pred(np.zeros((0, 4)), [])]
    assert coco_detection_metrics(empty, targets, NAMES) == {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}

    # "car" has no GT: excluded from the mean (its per-class value is NaN), even with car detections
    predictions = [pred([[0, 0, 10, 10]], [0.9]), pred([[0, 0, 5, 5]], [0.8], labels=[2])]
    metrics = coco_detection_metrics(predictions, targets, NAMES, per_class=True)
    assert close(metrics["mAP"], 1.0)
    assert close(metrics["AP50/person"], 1.0)
    assert math.isnan(metrics["AP50/car"])

    # no GT of any class: undefined, NaN rather than a misleading 0
    no_gt = coco_detection_metrics(empty, [gt(np.zeros((0, 4)))] * 2, NAMES)
    assert all(math.isnan(v) for v in no_gt.values())


def test_coco_accepts_tensors_and_checks_labels():
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    prediction = {**target, "scores": torch.tensor([0.5])}
    assert close(coco_detection_metrics([prediction], [target], NAMES)["mAP"], 1.0)
    with pytest.raises(ValueError, match="labels"):
        coco_detection_metrics([prediction], [{**target, "labels": torch.tensor([0])}], NAMES)


# ------------------------------------------------------------------------------------------------ LAMR


def person(x, h=100.0, w=40.0):
    return [x, 0.0, x + w, h]


def test_lamr_perfect_detector():
    targets = [gt([person(0), person(100)]), gt([person(50)])]
    predictions = [pred(t["boxes"], [0.9] * len(t["boxes"])) for t in targets]
    # miss rate 0 at every reference, floored at 1e-10 -> exp(mean(log 1e-10)) = 1e-10
    assert log_average_miss_rate(predictions, targets) < 1e-6


def test_lamr_half_missed_no_false_positive():
    targets = [gt([person(0), person(100)]), gt([person(0), person(100)])]
    predictions = [pred([person(0)], [0.9]), pred([person(100)], [0.8])]
    # every point has FPPI 0 and finally recall 2/4: miss rate 0.5 at all 9 references -> LAMR 0.5
    assert close(log_average_miss_rate(predictions, targets), 0.5)


def known_curve_case():
    # 10 images, 4 persons (2 in image 0, 2 in image 1). Detections by score:
    #   0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 FP, 0.4 TP
    # cumulative (FP, TP): (0,1) (1,1) (1,2) (2,2) (3,2) (3,3) -> FPPI = FP / 10, miss rate = 1 - TP / 4.
    targets = [gt(np.zeros((0, 4))) for _ in range(10)]
    targets[0] = gt([person(0), person(100)])
    targets[1] = gt([person(0), person(100)])
    predictions = [pred(np.zeros((0, 4)), []) for _ in range(10)]
    predictions[0] = pred([person(0), person(300)], [0.9, 0.8])
    predictions[1] = pred([person(0), person(300), person(100)], [0.7, 0.6, 0.4])
    predictions[2] = pred([person(300)], [0.5])
    return predictions, targets


def test_lamr_known_fppi_curve():
    predictions, targets = known_curve_case()
    fppi, miss_rate = miss_rate_fppi_curve(predictions, targets)
    np.testing.assert_allclose(fppi, [0.0, 0.1, 0.1, 0.2, 0.3, 0.3])
    np.testing.assert_allclose(miss_rate, [0.75, 0.75, 0.5, 0.5, 0.5, 0.25])
    # references 10^(-2:.25:0) = .01 .0178 .0316 .0562 | .1 .178 | .316 .562 1: the miss rate at the largest
    # FPPI <= reference is 0.75 (4 refs, only FPPI 0 reached), 0.5 (2 refs, FPPI 0.1), 0.25 (3 refs, FPPI 0.3)
    expected = math.exp((4 * math.log(0.75) + 2 * math.log(0.5) + 3 * math.log(0.25)) / 9)
    assert close(log_average_miss_rate(predictions, targets), expected)  # 0.4752


def test_lamr_curve_not_reaching_low_fppi_counts_full_miss():
    # One image, one person: an FP (0.9) above the TP (0.8). Curve points: (FPPI 1, mr 1), (FPPI 1, mr 0).
    # The 8 references below 1 see no point -> miss rate 1; the reference 1 sees mr 0 -> floored to 1e-10.
    # LAMR = exp(log(1e-10) / 9) = 1e-10 ** (1/9) = 0.0774
    predictions = [pred([person(300), person(0)], [0.9, 0.8])]
    lamr = log_average_miss_rate(predictions, [gt([person(0)])])
    assert close(lamr, 1e-10 ** (1 / 9))
    sampled = sample_miss_rates(np.array([0.5]), np.array([0.2]), np.array([0.1, 1.0]))
    np.testing.assert_array_equal(sampled, [1.0, 0.2])  # before the curve's first point: a full miss


def test_lamr_fppi_reference_reached_exactly():
    # 100 images, one person in image 0 found at score 0.5, one FP in image 1 at 0.9: curve (0.01, 1),
    # (0.01, 0). The lowest reference is FPPI 1e-2 = 1/100 itself, so it counts: miss rate 0 at all 9
    # references -> 1e-10 floor. (Were 1/100 to fall just above the reference, the lowest point would be a
    # full miss: LAMR = 1e-10 ** (8/9).)
    targets = [gt(np.zeros((0, 4))) for _ in range(100)]
    predictions = [pred(np.zeros((0, 4)), []) for _ in range(100)]
    targets[0] = gt([person(0)])
    predictions[0] = pred([person(0)], [0.5])
    predictions[1] = pred([person(0)], [0.9])
    assert log_average_miss_rate(predictions, targets) < 1e-9


def test_lamr_iou_threshold():
    # 100 px tall person; detections shifted down: IoU = overlap / (200 - overlap).
    # shift 30 -> 70 / 130 = 0.54 (hit); shift 35 -> 65 / 135 = 0.48 (miss, and an FP)
    target = gt([person(0)])
    hit = pred([[0.0, 30.0, 40.0, 130.0]], [0.9])
    assert log_average_miss_rate([hit], [target]) < 1e-6
    fppi, miss_rate = miss_rate_fppi_curve([pred([[0.0, 35.0, 40.0, 135.0]], [0.9])], [target])
    np.testing.assert_allclose(fppi, [1.0])
    np.testing.assert_allclose(miss_rate, [1.0])
    # a stricter threshold turns the 0.54 hit into a miss
    assert close(log_average_miss_rate([hit], [target], iou_threshold=0.6), 1.0)


def test_lamr_tied_scores_form_one_threshold():
    # TP and FP with the same score: no threshold keeps one without the other -> a single curve point
    fppi, miss_rate = miss_rate_fppi_curve([pred([person(300), person(0)], [0.5, 0.5])], [gt([person(0)])])
    np.testing.assert_allclose(fppi, [1.0])
    np.testing.assert_allclose(miss_rate, [0.0])


def test_lamr_ignore_regions_and_short_boxes_do_not_count():
    counted = person(0)
    crowd = [200.0, 0.0, 400.0, 120.0]  # flagged ignore (e.g. KAIST "people")
    short = [500.0, 0.0, 520.0, 40.0]  # 40 px < 55: ignore region
    occluded = [600.0, 0.0, 640.0, 100.0]  # heavy occlusion (2 > 1): ignore region
    car = [700.0, 0.0, 800.0, 100.0]  # another class, not ignored: plays no part with label=1
    target = gt(
        [counted, crowd, short, occluded, car],
        labels=[1, 1, 1, 1, 2],
        ignore=[False, True, False, False, False],
        occlusion=[0, 0, 0, 2, 0],
    )
    detections = [
        [250.0, 10.0, 290.0, 110.0],  # inside the crowd: IoU with it < 0.5, but intersection / own area = 1
        short,  # exactly on the short person, itself 40 px (< 55 / 1.25 = 44): dropped
        [900.0, 0.0, 925.0, 50.0],  # unmatched, 50 px (< 55): not a false positive
        occluded,  # on the occluded person: ignore region
        car,  # a car box predicted as person would be an FP, but it is labelled 2 here
        counted,
    ]
    prediction = pred(detections, [0.99, 0.98, 0.97, 0.96, 0.95, 0.5], labels=[1, 1, 1, 1, 2, 1])
    fppi, miss_rate = miss_rate_fppi_curve([prediction], [target])
    np.testing.assert_allclose(fppi, [0.0])  # only the true positive is left
    np.testing.assert_allclose(miss_rate, [0.0])
    assert log_average_miss_rate([prediction], [target]) < 1e-6

    # The same detections against the person alone: the 3 high-scoring tall ones are false positives
    # (the 50 px one and the 40 px one still are not, they are short), ranked above the TP -> FPPI 3 at
    # recall 1, nothing at FPPI <= 1: LAMR 1.
    assert close(log_average_miss_rate([prediction], [gt([counted])]), 1.0)


def test_lamr_short_detection_can_match_a_reasonable_person():
    # 50 px detection (>= 55 / 1.25) on a 58 px person: IoU 50/58 >= 0.5 -> a hit, not a miss
    target = gt([[0.0, 0.0, 30.0, 58.0]])
    assert log_average_miss_rate([pred([[0.0, 0.0, 30.0, 50.0]], [0.9])], [target]) < 1e-6
    # a 42 px one (IoU 42/58 = 0.72) is below 55 / 1.25 = 44 px: dropped before matching, the person is missed
    assert close(log_average_miss_rate([pred([[0.0, 0.0, 30.0, 42.0]], [0.9])], [target]), 1.0)
    # without any detection the person is missed at every reference: LAMR 1
    assert close(log_average_miss_rate([pred(np.zeros((0, 4)), [])], [target]), 1.0)
    # nothing counted at all (only an ignore region): undefined
    assert math.isnan(log_average_miss_rate([pred(np.zeros((0, 4)), [])], [gt([person(0)], ignore=[True])]))


# ------------------------------------------------------------------------------------------------ mIoU

TARGET_4X4 = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [IGNORE_INDEX, IGNORE_INDEX, 2, 2],
    ]
)
PRED_4X4 = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 2],
        [2, 2, 0, 2],
        [1, 1, 2, 2],
    ]
)
# Counted pixels: 14 (two ignored). mat[target, pred]:
#   target 0 (4 px): pred 0 x3, pred 1 x1
#   target 1 (4 px): pred 1 x3, pred 2 x1
#   target 2 (6 px): pred 2 x5, pred 0 x1
# IoU = TP / (target px + predicted px - TP):
#   class 0: 3 / (4 + 4 - 3) = 3/5;  class 1: 3 / (4 + 4 - 3) = 3/5;  class 2: 5 / (6 + 6 - 5) = 5/7
#   class 3: in neither -> NaN. mIoU = (3/5 + 3/5 + 5/7) / 3; pixel accuracy = 11 / 14.
EXPECTED_IOU = [3 / 5, 3 / 5, 5 / 7, math.nan]


def test_confusion_matrix_hand_case():
    matrix = ConfusionMatrix(4).update(PRED_4X4, TARGET_4X4)
    expected_mat = [[3, 1, 0, 0], [0, 3, 1, 0], [1, 0, 5, 0], [0, 0, 0, 0]]
    assert matrix.mat.tolist() == expected_mat
    np.testing.assert_allclose(matrix.iou().numpy(), EXPECTED_IOU)
    assert close(matrix.miou(), (3 / 5 + 3 / 5 + 5 / 7) / 3)
    assert close(matrix.pixel_accuracy(), 11 / 14)

    metrics = segmentation_metrics([torch.from_numpy(PRED_4X4)], [TARGET_4X4], 4, class_names=list("abcd"))
    assert close(metrics["mIoU"], (3 / 5 + 3 / 5 + 5 / 7) / 3)
    assert close(metrics["pixel_acc"], 11 / 14)
    assert close(metrics["mAcc"], (3 / 4 + 3 / 4 + 5 / 6) / 3)
    assert close(metrics["IoU/c"], 5 / 7)
    assert math.isnan(metrics["IoU/d"])


def test_confusion_matrix_skips_ignore_pixels():
    other = PRED_4X4.copy()
    other[TARGET_4X4 == IGNORE_INDEX] = 3  # whatever is predicted on ignored pixels
    reference = ConfusionMatrix(4).update(PRED_4X4, TARGET_4X4)
    assert torch.equal(ConfusionMatrix(4).update(other, TARGET_4X4).mat, reference.mat)
    assert int(reference.mat.sum()) == 14
    with pytest.raises(ValueError, match="target"):
        ConfusionMatrix(4).update(PRED_4X4, np.where(TARGET_4X4 == IGNORE_INDEX, 7, TARGET_4X4))


def test_iou_nan_only_for_classes_absent_everywhere():
    # class 1 predicted but never in the target: IoU 0, not NaN; class 2 nowhere: NaN
    matrix = ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 0]))
    iou = matrix.iou()
    assert iou[0].item() == 0.5 and iou[1].item() == 0.0 and math.isnan(iou[2].item())
    assert close(matrix.miou(), 0.25)
    assert math.isnan(ConfusionMatrix(3).miou())


def test_merge_equals_single_accumulation():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 5, size=(6, 8, 8))
    targets = rng.integers(0, 5, size=(6, 8, 8))
    targets[rng.random(targets.shape) < 0.1] = IGNORE_INDEX
    single = ConfusionMatrix(5)
    for p, t in zip(preds, targets, strict=True):
        single.update(p, t)
    first, second = ConfusionMatrix(5), ConfusionMatrix(5)
    first.update(preds[:2], targets[:2])
    second.update(preds[2:], targets[2:])
    assert torch.equal(first.merge(second).mat, single.mat)
    assert int(single.mat.sum()) == int((targets != IGNORE_INDEX).sum())


masks = arrays(np.int64, (5, 6), elements=st.integers(0, 3))


@settings(max_examples=50, deadline=None)
@given(pred_mask=masks, target_mask=masks)
def test_iou_bounded_and_perfect_is_one(pred_mask, target_mask):
    iou = ConfusionMatrix(4).update(pred_mask, target_mask).iou()
    finite = iou[~iou.isnan()]
    assert bool(((finite >= 0) & (finite <= 1)).all())
    # every class present in prediction or target has a finite IoU
    present = set(pred_mask.ravel().tolist()) | set(target_mask.ravel().tolist())
    assert {i for i in range(4) if not math.isnan(iou[i].item())} == present

    perfect = ConfusionMatrix(4).update(target_mask, target_mask)
    assert perfect.miou() == 1.0 and perfect.pixel_accuracy() == 1.0


# ------------------------------------------------------------------------------------------------ groups


def test_metrics_by_group_day_night():
    box = [[0, 0, 10, 10]]
    targets = [
        {**gt(box), "condition": "day"},
        {**gt(box), "condition": "night"},
        {**gt(box), "condition": "day"},
        {**gt(box), "condition": None},
    ]
    hit, miss = pred(box, [0.9]), pred(np.zeros((0, 4)), [])
    predictions = [hit, miss, hit, miss]
    coco = partial(coco_detection_metrics, class_names=NAMES)
    result = metrics_by_group(coco, predictions, targets)
    assert list(result) == ["day", "night", "unknown"]
    assert close(result["day"]["AP50"], 1.0) and result["night"]["AP50"] == 0.0

    # explicit keys, metric returning a float
    ap50 = metrics_by_group(lambda p, t: coco(p, t)["AP50"], predictions, targets, ["a", "b", "b", "a"])
    # group "a": hit + miss on two single-person images -> precision 1 up to recall 1/2, then nothing:
    # 51 of the 101 recall thresholds (0..0.50) at 1 -> 51 / 101
    assert close(ap50["a"], 51 / 101) and close(ap50["b"], 51 / 101)
    with pytest.raises(ValueError, match="group keys"):
        metrics_by_group(coco, predictions, targets, ["a"])
