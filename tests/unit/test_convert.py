"""Label Studio JSON <-> arrays on hand-computed cases."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from ls_backend.convert import (
    RegionPolicy,
    annotation_to_target,
    class_names_from_schema,
    detections_to_results,
    latest_annotation,
    mask_to_results,
    prediction_payload,
)
from ls_backend.label_config import schema_from_config

IMAGES = '<Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
DETECTION = schema_from_config(
    f'<View>{IMAGES}<RectangleLabels name="label" toName="rgb">'
    '<Label value="person"/><Label value="car"/></RectangleLabels></View>'
)
BRUSH = schema_from_config(
    f'<View>{IMAGES}<BrushLabels name="brush" toName="rgb"><Label value="road"/><Label value="car"/>'
    "</BrushLabels>"
    '<PolygonLabels name="poly" toName="rgb"><Label value="road"/><Label value="car"/></PolygonLabels></View>'
)
POLYGON = schema_from_config(
    f'<View>{IMAGES}<PolygonLabels name="poly" toName="thermal"><Label value="road"/><Label value="car"/>'
    "</PolygonLabels></View>"
)
H, W = 512, 640


def rect_result(x: float, y: float, w: float, h: float, label: str, **extra) -> dict:
    value = {
        "x": x,
        "y": y,
        "width": w,
        "height": h,
        "rotation": extra.pop("rotation", 0),
        "rectanglelabels": [label],
    }
    return {"from_name": "label", "to_name": "rgb", "type": "rectanglelabels", "value": value, **extra}


# ------------------------------------------------------------------------------------------ detection
def test_box_to_percent_and_back() -> None:
    boxes = np.array([[64, 128, 192, 256]], np.float32)
    results, unknown = detections_to_results(boxes, [0.9], [1], (H, W), DETECTION, ("person", "car"))
    assert unknown == set()
    (result,) = results
    assert result["from_name"] == "label"
    assert result["to_name"] == "rgb"
    assert result["type"] == "rectanglelabels"
    assert (result["original_width"], result["original_height"], result["image_rotation"]) == (640, 512, 0)
    assert result["value"] == {
        "x": 10.0,
        "y": 25.0,
        "width": 20.0,
        "height": 25.0,
        "rotation": 0,
        "rectanglelabels": ["person"],
    }
    assert result["score"] == pytest.approx(0.9)
    assert isinstance(result["id"], str) and result["id"]

    target, unknown = annotation_to_target({"result": results}, DETECTION, ("person", "car"), (H, W))
    assert unknown == set()
    np.testing.assert_allclose(target["boxes"], boxes)
    assert target["boxes"].dtype == np.float32
    assert target["labels"].tolist() == [1] and target["labels"].dtype == np.int64
    assert target["ignore"].tolist() == [False] and target["ignore"].dtype == bool


def test_boxes_are_clipped_and_empty_ones_dropped() -> None:
    boxes = np.array([[-10, -20, 700, 600], [700, 10, 800, 20]], np.float32)
    results, _ = detections_to_results(boxes, [0.5, 0.5], [2, 2], (H, W), DETECTION, ("person", "car"))
    assert len(results) == 1
    value = results[0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == (0.0, 0.0, 100.0, 100.0)


def test_labels_map_by_name_and_unknown_are_reported() -> None:
    # The model's class order differs from the config's, and it has a class the config lacks.
    class_names = ("car", "dog", "person")
    boxes = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [20, 20, 30, 30]], np.float32)
    results, unknown = detections_to_results(
        boxes, [0.9, 0.8, 0.7], [1, 2, 3], (H, W), DETECTION, class_names
    )
    assert [r["value"]["rectanglelabels"] for r in results] == [["car"], ["person"]]
    assert unknown == {"dog"}
    # The config's labels missing at both ends of the model's classes are reported by name too.
    _, unknown = detections_to_results(
        boxes, [0.9, 0.8, 0.7], [1, 2, 3], (H, W), DETECTION, ("dog", "car", "cat")
    )
    assert unknown == {"dog", "cat"}


def test_region_ids_are_stable_and_distinct() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    first, _ = detections_to_results(boxes, [0.9, 0.9], [1, 1], (H, W), DETECTION, ("person", "car"))
    again, _ = detections_to_results(boxes, [0.9, 0.9], [1, 1], (H, W), DETECTION, ("person", "car"))
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert first[0]["id"] != first[1]["id"]


def test_annotation_unknown_labels_are_reported_and_skipped() -> None:
    annotation = {"result": [rect_result(10, 10, 10, 10, "person"), rect_result(20, 20, 5, 5, "truck")]}
    target, unknown = annotation_to_target(annotation, DETECTION, ("person", "car"), (H, W))
    assert unknown == {"truck"}
    assert target["labels"].tolist() == [1]


def test_rotated_rectangle_becomes_its_bounding_box() -> None:
    # 20 x 10 px at (50, 50) in a 100 x 100 image, rotated 90 degrees clockwise about its top-left corner:
    # corners (50,50), (50,70), (40,70), (40,50).
    annotation = {
        "result": [rect_result(50, 50, 20, 10, "car", rotation=90, original_width=100, original_height=100)]
    }
    target, _ = annotation_to_target(annotation, DETECTION, ("person", "car"), (100, 100))
    np.testing.assert_allclose(target["boxes"], [[40, 50, 50, 70]], atol=1e-4)
    # 45 degrees: a 10 x 10 square becomes a diamond hanging from (50, 50), 2 * 10 / sqrt(2) wide and tall.
    annotation = {
        "result": [rect_result(50, 50, 10, 10, "car", rotation=45, original_width=100, original_height=100)]
    }
    target, _ = annotation_to_target(annotation, DETECTION, ("person", "car"), (100, 100))
    d = 10 / np.sqrt(2)
    np.testing.assert_allclose(target["boxes"], [[50 - d, 50, 50 + d, 50 + 2 * d]], atol=1e-4)


def test_regions_use_their_original_size_then_scale_to_the_image() -> None:
    # Annotated on a 200 x 100 image; the training image is 100 x 50.
    annotation = {"result": [rect_result(50, 50, 25, 50, "person", original_width=200, original_height=100)]}
    target, _ = annotation_to_target(annotation, DETECTION, ("person", "car"), (50, 100))
    np.testing.assert_allclose(target["boxes"], [[50, 25, 75, 50]])


def test_empty_and_foreign_results() -> None:
    annotation = {"result": [{"type": "choices", "value": {"choices": ["x"]}}, {"type": "rectanglelabels"}]}
    target, unknown = annotation_to_target(annotation, DETECTION, ("person", "car"), (H, W))
    assert (
        target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["ignore"].shape == (0,)
    )
    assert unknown == set()
    target, _ = annotation_to_target(None, DETECTION, ("person",), (H, W))
    assert target["boxes"].shape == (0, 4)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 2000),
    st.integers(1, 2000),
    st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=0, max_size=5),
)
def test_box_round_trip_property(height: int, width: int, fractions: list[tuple[float, ...]]) -> None:
    boxes = []
    for fx1, fy1, fx2, fy2 in fractions:
        x1, x2 = sorted((fx1 * width, fx2 * width))
        y1, y2 = sorted((fy1 * height, fy2 * height))
        if x2 - x1 > 1e-3 and y2 - y1 > 1e-3:
            boxes.append([x1, y1, x2, y2])
    boxes_a = np.array(boxes, np.float64).reshape(-1, 4)
    n = len(boxes_a)
    results, _ = detections_to_results(boxes_a, [0.5] * n, [1] * n, (height, width), DETECTION, ("person",))
    for result in results:
        for key in ("x", "y", "width", "height"):
            assert 0.0 <= result["value"][key] <= 100.0
    target, _ = annotation_to_target({"result": results}, DETECTION, ("person",), (height, width))
    np.testing.assert_allclose(target["boxes"], boxes_a, atol=1e-2)


# ------------------------------------------------------------------------------------------ segmentation
def test_mask_to_brush_rle_decodes_with_the_sdk() -> None:
    mask = np.zeros((24, 32), np.int64)
    mask[2:10, 3:20] = 1
    mask[12:20, 5:9] = 2
    mask[15, 30] = 2
    results, unknown = mask_to_results(mask, BRUSH, ("road", "car"), scores={1: 0.8, 2: 0.6})
    assert unknown == set()
    assert [r["value"]["brushlabels"] for r in results] == [["road"], ["car"]]
    for class_id, result in zip((1, 2), results, strict=True):
        assert (
            result["type"] == "brushlabels" and result["from_name"] == "brush" and result["to_name"] == "rgb"
        )
        assert (result["original_width"], result["original_height"]) == (32, 24)
        assert result["value"]["format"] == "rle"
        rgba = decode_rle(result["value"]["rle"]).reshape(24, 32, 4)
        np.testing.assert_array_equal(rgba[:, :, 3] > 0, mask == class_id)
    assert results[0]["score"] == pytest.approx(0.8)

    target, unknown = annotation_to_target({"result": results}, BRUSH, ("road", "car"), (24, 32))
    assert unknown == set()
    assert target["mask"].dtype == np.int64
    np.testing.assert_array_equal(target["mask"], mask)


def test_mask_classes_unknown_to_the_config_are_reported() -> None:
    mask = np.zeros((8, 8), np.int64)
    mask[:4] = 1
    mask[4:] = 3
    results, unknown = mask_to_results(mask, BRUSH, ("car", "road", "sky"))
    assert [r["value"]["brushlabels"] for r in results] == [["car"]]
    assert unknown == {"sky"}


def test_polygon_rasterised_area() -> None:
    # Corners at pixels (10, 10) and (20, 20) of a 100 x 50 image: cv2.fillPoly fills boundary pixels too.
    square = {"points": [[10, 20], [20, 20], [20, 40], [10, 40]], "polygonlabels": ["car"]}
    result = {
        "type": "polygonlabels",
        "from_name": "poly",
        "value": square,
        "original_width": 100,
        "original_height": 50,
    }
    target, _ = annotation_to_target({"result": [result]}, BRUSH, ("road", "car"), (50, 100))
    mask = target["mask"]
    assert (mask == 2).sum() == 11 * 11
    assert mask[10:21, 10:21].min() == 2
    # A right triangle with legs of 40 px: 41 * 42 / 2 pixels on or under the diagonal.
    triangle = {"points": [[10, 10], [50, 10], [10, 90]], "polygonlabels": ["road"]}
    result = {"type": "polygonlabels", "value": triangle, "original_width": 100, "original_height": 50}
    target, _ = annotation_to_target({"result": [result]}, BRUSH, ("road", "car"), (50, 100))
    assert (target["mask"] == 1).sum() == 41 * 42 // 2


def test_later_regions_paint_over_earlier_ones_and_unknown_are_reported() -> None:
    whole = {"points": [[0, 0], [100, 0], [100, 100], [0, 100]], "polygonlabels": ["road"]}
    part = {"points": [[0, 0], [40, 0], [40, 40], [0, 40]], "polygonlabels": ["car"]}
    sky = {"points": [[50, 50], [60, 50], [60, 60]], "polygonlabels": ["sky"]}
    results = [{"type": "polygonlabels", "value": v} for v in (whole, part, sky)]
    target, unknown = annotation_to_target({"result": results}, BRUSH, ("road", "car"), (11, 11))
    assert unknown == {"sky"}
    assert target["mask"][0, 0] == 2 and target["mask"][10, 10] == 1 and (target["mask"] == 0).sum() == 0


def test_brush_of_another_size_is_scaled_and_broken_brushes_skipped() -> None:
    small = np.zeros((10, 20), np.uint8)
    small[:, :10] = 255
    brush = {"format": "rle", "rle": mask2rle(small), "brushlabels": ["car"]}
    good = {"type": "brushlabels", "value": brush, "original_width": 20, "original_height": 10}
    wrong_size = {"type": "brushlabels", "value": brush, "original_width": 30, "original_height": 10}
    target, _ = annotation_to_target({"result": [wrong_size, good]}, BRUSH, ("road", "car"), (20, 40))
    expected = np.zeros((20, 40), np.int64)
    expected[:, :20] = 2
    np.testing.assert_array_equal(target["mask"], expected)


def test_polygon_predictions_for_polygon_only_configs_round_trip() -> None:
    mask = np.zeros((30, 40), np.int64)
    mask[5:15, 5:25] = 1
    mask[20:28, 30:38] = 2
    results, _ = mask_to_results(mask, POLYGON, ("road", "car"))
    assert [r["type"] for r in results] == ["polygonlabels", "polygonlabels"]
    assert results[0]["to_name"] == "thermal"
    target, _ = annotation_to_target({"result": results}, POLYGON, ("road", "car"), (30, 40))
    np.testing.assert_array_equal(target["mask"], mask)


def test_mask_results_need_a_mask_control() -> None:
    with pytest.raises(ValueError, match="BrushLabels or PolygonLabels"):
        mask_to_results(np.zeros((4, 4), np.int64), DETECTION, ("person",))
    with pytest.raises(ValueError, match="RectangleLabels"):
        detections_to_results(np.zeros((0, 4)), [], [], (4, 4), BRUSH, ("road",))


# ------------------------------------------------------------------------------------------ tasks
def test_latest_annotation_skips_cancelled() -> None:
    task = {
        "annotations": [
            {"id": 1, "updated_at": "2024-05-01T10:00:00Z", "result": [1]},
            {"id": 2, "updated_at": "2024-05-03T10:00:00.123456Z", "was_cancelled": True, "result": []},
            {"id": 3, "updated_at": "2024-05-02T10:00:00+00:00", "result": [3]},
        ]
    }
    assert latest_annotation(task)["id"] == 3
    assert latest_annotation({"annotations": [{"id": 5, "was_cancelled": True}]}) is None
    assert latest_annotation({"annotations": []}) is None
    assert latest_annotation({}) is None
    # Same or missing timestamps: the higher id wins.
    assert latest_annotation({"annotations": [{"id": 7, "result": []}, {"id": 9, "result": []}]})["id"] == 9


def test_class_names_from_schema() -> None:
    assert class_names_from_schema(DETECTION) == ("person", "car")
    assert class_names_from_schema(BRUSH) == ("road", "car")


@dataclass
class FakePrediction:
    inconsistency: float
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None


def test_prediction_payload_scores_most_inconsistent_lowest() -> None:
    prediction = FakePrediction(0.75, np.array([[0, 0, 64, 51.2]]), np.array([0.9]), np.array([2]))
    payload, unknown = prediction_payload(prediction, DETECTION, ("person", "car"), "v3", image_size=(H, W))
    assert payload["score"] == pytest.approx(0.25)
    assert payload["model_version"] == "v3"
    assert payload["result"][0]["value"]["rectanglelabels"] == ["car"]
    assert unknown == set()
    mask = np.ones((4, 4), np.int64)
    payload, _ = prediction_payload(
        FakePrediction(0.0, np.zeros((0, 4)), np.zeros(0), np.zeros(0), mask),
        BRUSH,
        ("road",),
        "v1",
        image_size=(4, 4),
    )
    assert payload["score"] == 1.0 and payload["result"][0]["type"] == "brushlabels"


@dataclass
class BranchPrediction(FakePrediction):
    branch_scores: np.ndarray | None = None


def test_region_policy_thresholds_by_class_cap_and_order() -> None:
    policy = RegionPolicy(thresholds={"person": 0.55}, fallback=0.45, max_regions=3)
    assert policy.threshold("person") == 0.55 and policy.threshold("car") == 0.45
    assert policy.lowest_threshold == 0.45
    assert RegionPolicy(thresholds={"person": 0.2, "car": 0.6}).lowest_threshold == 0.2
    scores = np.array([0.5, 0.9, 0.55, 0.85, 0.6, 0.44, 0.99])
    labels = np.array([1, 2, 1, 1, 1, 2, 3])  # class 3 is not the model's: never sent
    # person >= 0.55: 0.55, 0.85, 0.6; car >= 0.45: 0.9; the 3 most confident, highest first.
    assert policy.select(scores, labels, ("person", "car")).tolist() == [1, 3, 4]
    assert RegionPolicy(fallback=0.55).select(scores, labels, ("person", "car")).tolist() == [1, 3, 4, 2]
    ties = RegionPolicy(fallback=0.0, max_regions=40).select(
        np.array([0.5, 0.7] * 20), np.ones(40, int), ("a",)
    )
    assert ties.tolist() == [*range(1, 40, 2), *range(0, 40, 2)]  # equal scores keep their order
    # Uncapped: every class's own threshold decides (person 0.5 stays out, car 0.44 too).
    uncapped = RegionPolicy(thresholds={"person": 0.55}, fallback=0.45, max_regions=10)
    assert uncapped.select(scores, labels, ("person", "car")).tolist() == [1, 3, 4, 2]
    gated = RegionPolicy(send=False).select(scores, labels, ("person", "car"))
    assert gated.tolist() == [] and gated.dtype == np.int64  # an index array, even empty
    assert RegionPolicy().select(scores, labels, ("person", "car")).dtype == np.int64


def test_detections_carry_each_branch_confidence_as_meta_text() -> None:
    boxes = np.array([[0, 0, 64, 64], [64, 64, 128, 128]], np.float32)
    results, _ = detections_to_results(
        boxes,
        [0.9, 0.456],
        [1, 2],
        (H, W),
        DETECTION,
        ("person", "car"),
        np.array([[0.12, 0.91], [0.5, 0.0]]),
    )
    assert [r["meta"] for r in results] == [
        {"text": ["RGB 0.12 · thermal 0.91 · fused 0.90"]},
        {"text": ["RGB 0.50 · thermal 0.00 · fused 0.46"]},
    ]
    plain, _ = detections_to_results(boxes, [0.9, 0.5], [1, 2], (H, W), DETECTION, ("person", "car"))
    assert all("meta" not in r for r in plain)


def test_detections_drop_nan_and_report_ids_beyond_the_model() -> None:
    boxes = np.array([[0, 0, 10, 10], [np.nan, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    results, unknown = detections_to_results(
        boxes, [np.nan, 0.8, 0.7, 0.6], [1, 1, 7, 1], (H, W), DETECTION, ("person", "car")
    )
    assert [r["score"] for r in results] == pytest.approx([0.6])
    assert unknown == {"<class id 7>"}
    with pytest.raises(ValueError, match="differ in length: 2, 1, 2"):
        detections_to_results(boxes[:2], [0.5], [1, 1], (H, W), DETECTION, ("person", "car"))


def test_prediction_payload_applies_the_policy_and_passes_branch_scores_along() -> None:
    prediction = BranchPrediction(
        0.2,
        np.array([[0, 0, 10, 10], [10, 10, 20, 20], [20, 20, 30, 30]], np.float32),
        np.array([0.3, 0.9, 0.6]),
        np.array([1, 2, 1]),
        branch_scores=np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]),
    )
    policy = RegionPolicy(fallback=0.5, max_regions=5)
    payload, _ = prediction_payload(
        prediction, DETECTION, ("person", "car"), "v2", image_size=(H, W), policy=policy
    )
    assert [r["score"] for r in payload["result"]] == pytest.approx([0.9, 0.6])
    assert [r["meta"]["text"] for r in payload["result"]] == [
        ["RGB 0.30 · thermal 0.40 · fused 0.90"],
        ["RGB 0.50 · thermal 0.60 · fused 0.60"],
    ]
    assert payload["result"][0]["value"]["x"] == pytest.approx(10 / W * 100)
    # Without a policy every region goes, a negative confidence too.
    prediction.scores = np.array([-0.5, 0.9, 0.6])
    payload, _ = prediction_payload(prediction, DETECTION, ("person", "car"), "v2", image_size=(H, W))
    assert len(payload["result"]) == 3
    # I outside [0, 1] from rounding is clipped; a non-finite I ranks the task last.
    for inconsistency, score in ((1.5, 0.0), (-0.25, 1.0), (float("inf"), 1.0), (float("nan"), 1.0)):
        prediction.inconsistency = inconsistency
        payload, _ = prediction_payload(prediction, DETECTION, ("person", "car"), "v2", image_size=(H, W))
        assert payload["score"] == score


def test_segmentation_payload_needs_a_mask_and_follows_the_gate() -> None:
    mask = np.zeros((4, 4), np.int64)
    mask[:2] = 1
    prediction = FakePrediction(0.5, np.zeros((0, 4)), np.zeros(0), np.zeros(0), mask)
    payload, _ = prediction_payload(prediction, BRUSH, ("road",), "v1", image_size=(4, 4))
    assert [r["value"]["brushlabels"] for r in payload["result"]] == [["road"]]
    gated, unknown = prediction_payload(
        prediction, BRUSH, ("road",), "v1", image_size=(4, 4), policy=RegionPolicy(send=False, reason="gate")
    )
    assert gated == {"result": [], "score": 0.5, "model_version": "v1"} and unknown == set()
    prediction.mask = None
    with pytest.raises(ValueError, match=r"^a segmentation prediction without a mask$"):
        prediction_payload(prediction, BRUSH, ("road",), "v1", image_size=(4, 4))


def test_mask_scores_from_an_array_or_a_mapping() -> None:
    mask = np.zeros((6, 6), np.int64)
    mask[:3] = 1
    mask[3:] = 2
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"), scores=np.array([0.0, 0.7, 0.4]))
    assert [r["score"] for r in results] == pytest.approx([0.7, 0.4])
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"), scores=np.array([0.0, 0.7]))  # no class 2
    assert [r.get("score") for r in results] == [pytest.approx(0.7), None]
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"), scores={2: 0.25})
    assert [r.get("score") for r in results] == [None, 0.25]
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"))
    assert all("score" not in r for r in results)
    with pytest.raises(ValueError, match=r"mask must be \(H, W\), got shape \(6,\)"):
        mask_to_results(mask[0], BRUSH, ("road", "car"))


def test_mask_regions_explain_themselves_when_both_confidences_are_known() -> None:
    mask = np.zeros((6, 6), np.int64)
    mask[:2] = 1
    mask[2:4] = 2
    mask[4:, :3] = 3
    mask[4:, 3:] = 4
    branches = np.array([[0, 0], [0.1, 0.2], [0.3, np.nan], [0.5, 0.6], [0.7, 0.8]])
    scores = np.array([0.0, 0.9, 0.8, np.nan, 0.45])
    results, _ = mask_to_results(mask, POLYGON, ("road", "car", "sky", "bus"), scores, branches)
    # A NaN branch confidence (class 2): no meta.
    assert [(r.get("score"), r.get("meta")) for r in results] == [
        (pytest.approx(0.9), {"text": ["RGB 0.10 · thermal 0.20 · fused 0.90"]}),
        (pytest.approx(0.8), None),
    ]  # sky and bus are not labels of the config
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"), scores, branches[:2])  # no branch for class 2
    assert [r.get("meta") for r in results] == [{"text": ["RGB 0.10 · thermal 0.20 · fused 0.90"]}, None]
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"), None, branches)  # no score: no meta
    assert [r.get("meta") for r in results] == [None, None]
    results, _ = mask_to_results(mask, BRUSH, ("road", "car"), np.array([0, 0.9, np.nan]), branches)
    assert [(r.get("score"), r.get("meta")) for r in results][1] == (None, None)  # a NaN score is no score


@dataclass
class SegmentationPrediction(FakePrediction):
    class_branch_scores: np.ndarray | None = None


def test_segmentation_payload_scores_and_explains_each_class() -> None:
    mask = np.zeros((4, 4), np.int64)
    mask[:2] = 1
    mask[2:] = 2
    by_class = np.array([[0, 0, 0], [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    prediction = SegmentationPrediction(0.5, np.zeros((0, 4)), np.zeros(0), np.zeros(0), mask, by_class)
    payload, _ = prediction_payload(prediction, BRUSH, ("road", "car"), "v1", image_size=(4, 4))
    assert [(r["score"], r["meta"]["text"]) for r in payload["result"]] == [
        (pytest.approx(0.3), ["RGB 0.10 · thermal 0.20 · fused 0.30"]),
        (pytest.approx(0.6), ["RGB 0.40 · thermal 0.50 · fused 0.60"]),
    ]


def test_mask_region_ids_are_stable_and_tell_regions_apart() -> None:
    mask = np.zeros((12, 12), np.int64)
    mask[0:3, 0:3] = 1
    mask[6:9, 6:9] = 1  # a second polygon of class 1
    mask[0:3, 6:12] = 2  # class 2, as many pixels as class 1
    first, _ = mask_to_results(mask, POLYGON, ("road", "car"))
    again, _ = mask_to_results(mask, POLYGON, ("road", "car"))
    ids = [r["id"] for r in first]
    assert ids == [r["id"] for r in again] and len(set(ids)) == 3
    assert all(isinstance(i, str) and len(i) == 10 for i in ids)
    other_control = schema_from_config(
        f'<View>{IMAGES}<PolygonLabels name="outline" toName="thermal"><Label value="road"/>'
        '<Label value="car"/></PolygonLabels></View>'
    )
    assert not set(ids) & {r["id"] for r in mask_to_results(mask, other_control, ("road", "car"))[0]}
    mask[0, 0] = 0  # class 1 changes: its regions' ids too, class 2's stay
    changed = [r["id"] for r in mask_to_results(mask, POLYGON, ("road", "car"))[0]]
    assert changed[2] == ids[2] and not set(changed[:2]) & set(ids)


def test_mask_unknown_classes_before_known_ones_and_beyond_the_model() -> None:
    mask = np.zeros((6, 6), np.int64)
    mask[:2] = 1  # "sky": the model's, not the config's
    mask[2:4] = 2  # "road"
    mask[4:] = 5  # no class of the model
    results, unknown = mask_to_results(mask, BRUSH, ("sky", "road"))
    assert [r["value"]["brushlabels"] for r in results] == [["road"]]
    assert unknown == {"sky", "<class id 5>"}


def test_polygon_vertices_in_percent_and_specks_left_out() -> None:
    mask = np.zeros((30, 40), np.int64)
    mask[5:15, 5:25] = 1
    mask[0, 39] = 1  # a one-pixel speck before the square (contours come bottom-up)
    mask[29, 0] = 1  # and one after it
    mask[20, 30:32] = 2  # an L of 3 pixels: a 3-vertex polygon
    mask[21, 30] = 2
    results, _ = mask_to_results(mask, POLYGON, ("road", "car"))
    values = [r["value"] for r in results]
    assert [v["polygonlabels"] for v in values] == [["road"], ["car"]]
    assert all(v["closed"] is True for v in values)
    assert sorted(map(tuple, values[0]["points"])) == [
        (12.5, 16.6667),
        (12.5, 46.6667),
        (60.0, 16.6667),
        (60.0, 46.6667),
    ]
    assert len(values[1]["points"]) == 3


def test_polygon_masks_at_scale_and_degenerate_polygons() -> None:
    square = {"points": [[50, 50], [90, 50], [90, 90], [50, 90]], "polygonlabels": ["road"]}
    line = {"points": [[0, 0], [90, 90]], "polygonlabels": ["car"]}
    results = [{"type": "polygonlabels", "value": v} for v in (square, line)]
    target, _ = annotation_to_target({"result": results}, BRUSH, ("road", "car"), (200, 200))
    assert (target["mask"] == 1).sum() == 81 * 81 and target["mask"][100:181, 100:181].min() == 1
    assert (target["mask"] == 2).sum() == 0  # two points are no polygon


def test_brush_format_missing_or_foreign_and_half_transparent_pixels() -> None:
    painted = np.zeros((4, 4), np.uint8)
    painted[:2] = 128  # an anti-aliased edge at the threshold counts as painted
    painted[2] = 127
    rle = mask2rle(painted)

    def target_of(value: dict) -> np.ndarray:
        result = {"type": "brushlabels", "value": {**value, "brushlabels": ["car"]}}
        return annotation_to_target({"result": [result]}, BRUSH, ("road", "car"), (4, 4))[0]["mask"]

    assert (target_of({"rle": rle}) == 2).sum() == 8  # no "format": RLE is Label Studio's default
    assert (target_of({"format": "rle", "rle": rle}) == 2).sum() == 8
    assert (target_of({"format": "png", "rle": rle}) == 2).sum() == 0


def test_latest_annotation_by_updated_then_created_then_id() -> None:
    def latest(*annotations: dict) -> object:
        return latest_annotation({"annotations": [{"result": [], **a} for a in annotations]})["id"]

    day = "2024-05-0{}T10:00:00"
    assert latest({"id": 5, "updated_at": day.format(1)}, {"id": 4, "updated_at": day.format(2) + "Z"}) == 4
    assert latest({"id": 5, "updated_at": day.format(2), "created_at": day.format(1)},
                  {"id": 4, "updated_at": day.format(2), "created_at": day.format(2)}) == 4  # fmt: skip
    assert latest({"id": 5, "updated_at": day.format(1), "created_at": day.format(9)},
                  {"id": 4, "updated_at": day.format(2), "created_at": day.format(1)}) == 4  # fmt: skip
    # Missing, unparsable or non-text timestamps count as oldest; a non-integer id as lowest.
    assert latest({"id": 9}, {"id": 2, "updated_at": day.format(1)}) == 2
    assert latest({"id": 9, "updated_at": "yesterday"}, {"id": 2, "updated_at": day.format(1)}) == 2
    assert latest({"id": 9, "updated_at": 12345}, {"id": 2, "updated_at": day.format(1)}) == 2
    assert latest({"id": 0}, {"id": "draft"}) == 0
    assert latest({"id": None}, {"id": 3}) == 3


def test_default_payload_sends_every_region_and_logs_a_non_finite_score(caplog) -> None:
    n = 25
    boxes = np.array([[i, i, i + 5, i + 5] for i in range(n)], np.float32)
    prediction = FakePrediction(float("nan"), boxes, np.full(n, 0.01), np.ones(n, np.int64))
    with caplog.at_level(logging.ERROR, logger="ls_backend.convert"):
        payload, _ = prediction_payload(
            prediction, DETECTION, ("person",), "v7", image_size=(H, W), task_id=11
        )
    assert len(payload["result"]) == n  # no cap and no threshold without a policy
    (record,) = caplog.records
    assert record.getMessage() == "task 11: non-finite inconsistency (nan) from v7; ranked last"


def test_boxes_half_outside_are_clipped_on_every_side() -> None:
    boxes = np.array(
        [[-64, 0, 64, 64], [0, 256, 64, 1024], [10, 600, 20, 700], [600, 10, 700, 20]], np.float32
    )
    results, _ = detections_to_results(boxes, [0.5] * 4, [1] * 4, (H, W), DETECTION, ("person",))
    # The third lies below the image (no height left), the fourth keeps 40 px of its width.
    assert [[r["value"][k] for k in ("x", "y", "width", "height")] for r in results] == [
        pytest.approx([0.0, 0.0, 10.0, 12.5]),
        pytest.approx([0.0, 50.0, 10.0, 50.0]),
        pytest.approx([93.75, 10 / 512 * 100, 6.25, 10 / 512 * 100]),
    ]


def test_a_rotation_of_one_radian_is_applied() -> None:
    # 10 x 0.001 px at (50, 50) of a 100 x 100 image, turned 1 rad clockwise: far end at 10 (cos 1, sin 1).
    annotation = {
        "result": [
            rect_result(
                50, 50, 10, 0.001, "car", rotation=math.degrees(1.0), original_width=100, original_height=100
            )
        ]
    }
    target, _ = annotation_to_target(annotation, DETECTION, ("person", "car"), (100, 100))
    np.testing.assert_allclose(
        target["boxes"], [[50, 50, 50 + 10 * math.cos(1), 50 + 10 * math.sin(1)]], atol=1e-3
    )


def test_malformed_or_undecodable_regions_are_skipped_with_a_warning(caplog) -> None:
    broken = {
        "id": "r1",
        "type": "rectanglelabels",
        "value": {"y": 1, "width": 2, "height": 3, "rectanglelabels": ["car"]},
    }
    good = rect_result(10, 10, 10, 10, "car")
    with caplog.at_level(logging.WARNING, logger="ls_backend.convert"):
        target, _ = annotation_to_target({"result": [broken, good]}, DETECTION, ("person", "car"), (H, W))
        assert target["labels"].tolist() == [2]  # the good region after the broken one is kept
        brush = {
            "id": "b1",
            "type": "brushlabels",
            "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["car"]},
        }
        target, _ = annotation_to_target({"result": [brush]}, BRUSH, ("road", "car"), (10, 30))
        assert (target["mask"] == 0).all()
    assert [r.getMessage() for r in caplog.records] == [
        "skipping malformed rectanglelabels region r1",
        "skipping brushlabels region b1: cannot decode it at 30x10",
    ]


def test_annotation_boxes_are_clipped_and_flat_ones_dropped() -> None:
    regions = [
        rect_result(90, -10, 20, 20, "car"),  # over the right and top edges
        rect_result(10, 10, 0, 10, "car"),  # no width
        rect_result(10, 10, 10, 0, "car"),  # no height
    ]
    target, _ = annotation_to_target({"result": regions}, DETECTION, ("person", "car"), (100, 100))
    np.testing.assert_allclose(target["boxes"], [[90, 0, 100, 10]])


def test_region_frames_labels_and_types_read_defensively() -> None:
    def boxes(*results: dict) -> list:
        return annotation_to_target({"result": list(results)}, DETECTION, ("person", "car"), (50, 100))[0][
            "boxes"
        ].tolist()

    # A frame needs both sizes; with one missing or zero the image's size is used.
    for extra in ({"original_height": 200}, {"original_width": 200, "original_height": 0}):
        assert boxes(rect_result(10, 10, 10, 10, "car", **extra)) == [[10, 5, 20, 10]]
        square = {"points": [[10, 20], [20, 20], [20, 40], [10, 40]], "polygonlabels": ["car"]}
        polygon = {"type": "polygonlabels", "value": square, **extra}
        target, _ = annotation_to_target({"result": [polygon]}, BRUSH, ("road", "car"), (50, 100))
        assert (target["mask"] == 2).sum() == 11 * 11  # rasterised at the image's size
    label_as_text = rect_result(10, 10, 10, 10, "car")
    label_as_text["value"]["rectanglelabels"] = "person"
    no_label = rect_result(10, 10, 10, 10, "car")
    no_label["value"]["rectanglelabels"] = []
    untyped = {"value": rect_result(0, 0, 5, 5, "car")["value"]}
    choice = {"type": "choices", "value": {"choices": ["x"]}}
    target, unknown = annotation_to_target(
        {"result": [untyped, choice, no_label, rect_result(0, 0, 5, 5, "truck"), label_as_text]},
        DETECTION,
        ("person", "car"),
        (50, 100),
    )
    assert target["labels"].tolist() == [1] and unknown == {"truck"}


def test_box_region_ids_follow_control_label_and_corners_to_a_hundredth_of_a_pixel() -> None:
    def ids(boxes: list, labels: list, schema=DETECTION) -> list[str]:
        results, _ = detections_to_results(
            np.array(boxes), [0.5] * len(boxes), labels, (H, W), schema, ("person", "car")
        )
        return [r["id"] for r in results]

    box = [10.0, 20.0, 30.0, 40.0]
    other_control = schema_from_config(
        f'<View>{IMAGES}<RectangleLabels name="boxes" toName="rgb">'
        '<Label value="person"/><Label value="car"/></RectangleLabels></View>'
    )
    assert ids([box], [1]) != ids([box], [2])  # another label
    assert ids([box], [1]) != ids([box], [1], other_control)  # another control
    assert ids([box], [1]) != ids([[10.01, 20.0, 30.0, 40.0]], [1])  # moved by a hundredth of a pixel
    assert ids([box], [1]) == ids([[10.001, 20.0, 30.0, 40.0]], [1])  # float noise below that: the same id
