"""Label Studio JSON <-> arrays. Pure functions: no I/O, no model, no HTTP.

Conventions (Label Studio 1.23 image regions):

* Region geometry is in percent of the image the annotator saw: ``x, y, width, height`` for rectangles,
  ``points [[x, y], ...]`` for polygons; ``original_width`` / ``original_height`` give that image's size.
* Brush masks are ``{"format": "rle", "rle": [...]}``: Label Studio's RLE of the RGBA image (H, W, 4) uint8,
  flattened; the alpha channel is the mask. Encoding and decoding go through label-studio-sdk
  (:func:`label_studio_sdk.converter.brush.mask2rle` / :func:`~label_studio_sdk.converter.brush.decode_rle`).
* The model's classes are ``class_names`` (foreground, class id ``i + 1`` for ``class_names[i]``; 0 is
  background / unlabelled). They map to the config's labels BY NAME, never by position, so a config edited
  after training (labels added, removed, reordered) never silently mislabels. Names present on one side only
  are skipped and returned to the caller as ``unknown`` sets, so it can warn the user.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from ls_backend.label_config import ControlSpec, ProjectSchema

__all__ = [
    "RegionPolicy",
    "Target",
    "annotation_to_target",
    "class_names_from_schema",
    "detections_to_results",
    "latest_annotation",
    "mask_to_results",
    "prediction_payload",
]

log = logging.getLogger(__name__)

Target = dict[str, np.ndarray]
Result = dict[str, Any]

#: Alpha at or above which a decoded brush pixel counts as painted (the editor anti-aliases stroke edges).
BRUSH_ALPHA_THRESHOLD = 128


def class_names_from_schema(schema: ProjectSchema) -> tuple[str, ...]:
    """The model's foreground classes for a project: the output control's labels, in config order."""
    return tuple(schema.labels)


# ------------------------------------------------------------------------------------------ helpers
def _region_id(*parts: object) -> str:
    """A short id derived from the region's content: the same prediction gets the same ids every time."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def _base_result(control: ControlSpec, image_size: tuple[int, int]) -> Result:
    height, width = image_size
    return {
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
    }


def _class_ids(schema: ProjectSchema, class_names: Sequence[str]) -> tuple[dict[int, str], set[str]]:
    """Model class id -> config label, for the classes the output control has; plus the names it lacks."""
    labels = set(schema.labels)
    known = {i + 1: name for i, name in enumerate(class_names) if name in labels}
    return known, {name for name in class_names if name not in labels}


# ------------------------------------------------------------------------------------------ predictions
def detections_to_results(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    image_size: tuple[int, int],
    schema: ProjectSchema,
    class_names: Sequence[str],
    branch_scores: npt.ArrayLike | None = None,
) -> tuple[list[Result], set[str]]:
    """Boxes in pixels -> ``rectanglelabels`` results.

    Args:
        boxes: (M, 4) ``x1, y1, x2, y2`` in pixels of an image of ``image_size``.
        scores: (M,) confidences, sent as each region's ``score``.
        labels: (M,) model class ids in ``1..C``.
        image_size: (H, W) of the image the boxes refer to.
        schema: the project's schema (its output control must be ``RectangleLabels``).
        class_names: the model's foreground classes.
        branch_scores: optional (M, 2) visible and thermal confidences of each box, shown to the annotator
            as the region's meta text ("RGB 0.12 · thermal 0.91 · fused 0.85").

    Returns:
        (results, unknown): boxes are clipped to the image, empty ones dropped; ``unknown`` holds the model
        classes that were predicted but are not labels of the config (those boxes are skipped).
    """
    if schema.control.tag != "RectangleLabels":
        raise ValueError(f"detections need a RectangleLabels control, the project has {schema.control.tag}")
    height, width = image_size
    boxes_a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores_a = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_a = np.asarray(labels).reshape(-1).astype(np.int64)
    if not len(boxes_a) == len(scores_a) == len(labels_a):
        raise ValueError(
            f"boxes, scores, labels differ in length: {len(boxes_a)}, {len(scores_a)}, {len(labels_a)}"
        )
    names, _ = _class_ids(schema, class_names)
    results: list[Result] = []
    unknown: set[str] = set()
    clipped = boxes_a.clip(0.0, None)
    clipped[:, 0::2] = clipped[:, 0::2].clip(None, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(None, height)
    # Vectorised once per task (pool scoring converts every box of every task): percentages, validity and the
    # rounded corners the region ids hash, then one cheap loop over plain Python numbers.
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(clipped).all(axis=1) & np.isfinite(scores_a)
        usable &= (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        percent = np.stack(
            [
                clipped[:, 0] / width * 100.0,
                clipped[:, 1] / height * 100.0,
                (clipped[:, 2] - clipped[:, 0]) / width * 100.0,
                (clipped[:, 3] - clipped[:, 1]) / height * 100.0,
            ],
            axis=1,
        ).clip(0.0, 100.0)
    rounded = np.round(clipped, 2).tolist()
    branches = None if branch_scores is None else np.asarray(branch_scores, dtype=np.float64).reshape(-1, 2)
    for index, (label, ok, (x, y, w, h), score) in enumerate(
        zip(labels_a.tolist(), usable.tolist(), percent.tolist(), scores_a.tolist(), strict=True)
    ):
        if label not in names:
            unknown.add(class_names[label - 1] if 1 <= label <= len(class_names) else f"<class id {label}>")
            continue
        if not ok:
            continue  # empty after clipping, or NaN (which JSON cannot carry)
        value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [names[label]]}
        result = _base_result(schema.control, image_size)
        result["id"] = _region_id(schema.control.name, index, names[label], *rounded[index])
        result["value"] = value
        result["score"] = score
        if branches is not None:
            result["meta"] = {"text": [meta_text(*branches[index], score)]}
        results.append(result)
    return results, unknown


def meta_text(visible: float, thermal: float, fused: float) -> str:
    """A region's explanation for the annotator: each branch's confidence in it."""
    return f"RGB {visible:.2f} · thermal {thermal:.2f} · fused {fused:.2f}"


@dataclass(frozen=True)
class RegionPolicy:
    """Which of a version's regions are sent as pre-annotations.

    ``thresholds``: per-class confidence calibrated on held-out tasks; classes without one use ``fallback``.
    ``max_regions``: most regions per task, highest confidence first. ``send`` False (the version is below
    the quality gate, or untrained): predictions carry the priority score with an empty result; ``reason``
    says why.
    """

    thresholds: Mapping[str, float] = field(default_factory=dict)
    fallback: float = 0.3
    max_regions: int = 20
    send: bool = True
    reason: str = ""

    def threshold(self, name: str) -> float:
        return float(self.thresholds.get(name, self.fallback))

    @property
    def lowest_threshold(self) -> float:
        """What the decoder must keep so every class's own threshold can be applied afterwards."""
        return min([self.fallback, *self.thresholds.values()])

    def select(self, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Indices of the detections to send: above their class's threshold, the ``max_regions`` most
        confident, in descending confidence."""
        if not self.send:
            return np.zeros((0,), np.int64)
        cut = np.array(
            [self.threshold(class_names[c - 1]) if 1 <= c <= len(class_names) else np.inf for c in labels]
        ).reshape(-1)
        keep = np.flatnonzero(np.asarray(scores, np.float64) >= cut)
        order = keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]
        return order[: self.max_regions]


def _class_score(scores: Mapping[int, float] | npt.ArrayLike | None, class_id: int) -> float | None:
    if scores is None:
        return None
    if isinstance(scores, Mapping):
        value = scores.get(class_id)
        return None if value is None else float(value)
    array = np.asarray(scores).reshape(-1)
    value = float(array[class_id]) if class_id < len(array) else math.nan
    return value if math.isfinite(value) else None


def mask_to_results(
    mask: npt.ArrayLike,
    schema: ProjectSchema,
    class_names: Sequence[str],
    scores: Mapping[int, float] | npt.ArrayLike | None = None,
    branch_scores: npt.ArrayLike | None = None,
) -> tuple[list[Result], set[str]]:
    """A class-id mask -> one region per class present.

    ``brushlabels`` regions (RLE of the RGBA image Label Studio's brush uses) when the output control is
    ``BrushLabels``; with a ``PolygonLabels``-only config, one ``polygonlabels`` region per outer contour
    (holes are not representable as Label Studio polygons and are filled).

    Args:
        mask: (H, W) class ids, 0 = background, ``1..C`` = ``class_names``.
        schema: the project's schema.
        class_names: the model's foreground classes.
        scores: optional per-class confidence, indexed by class id (a mapping or an array of C + 1).
        branch_scores: optional (C + 1, 2) visible and thermal confidence of each class id; with ``scores``,
            each region's meta text ("RGB 0.12 · thermal 0.91 · fused 0.85"), as for boxes.

    Returns:
        (results, unknown): ``unknown`` holds the classes present in the mask that the config lacks.
    """
    mask_a = np.asarray(mask)
    if mask_a.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask_a.shape}")
    image_size = (int(mask_a.shape[0]), int(mask_a.shape[1]))
    names, _ = _class_ids(schema, class_names)
    tag = schema.control.tag
    if tag not in ("BrushLabels", "PolygonLabels"):
        raise ValueError(f"masks need a BrushLabels or PolygonLabels control, the project has {tag}")
    results: list[Result] = []
    unknown: set[str] = set()
    branches = None if branch_scores is None else np.asarray(branch_scores, dtype=np.float64).reshape(-1, 2)
    for class_id in (int(c) for c in np.unique(mask_a)):
        if class_id == 0:
            continue
        if class_id not in names:
            unknown.add(
                class_names[class_id - 1] if 1 <= class_id <= len(class_names) else f"<class id {class_id}>"
            )
            continue
        binary = (mask_a == class_id).astype(np.uint8)
        score = _class_score(scores, class_id)
        explained = branches is not None and score is not None and class_id < len(branches)
        meta = None
        if explained and np.isfinite(branches[class_id]).all():
            meta = {"text": [meta_text(*branches[class_id], score)]}
        if tag == "BrushLabels":
            # mask2rle repeats each value into the 4 RGBA channels; 255 = opaque = painted.
            value = {"format": "rle", "rle": mask2rle(binary * 255), "brushlabels": [names[class_id]]}
            regions = [value]
        else:
            regions = _polygons(binary, names[class_id])
        for index, value in enumerate(regions):
            result = _base_result(schema.control, image_size)
            result["id"] = _region_id(schema.control.name, class_id, index, int(binary.sum()))
            result["value"] = value
            if score is not None:
                result["score"] = score
            if meta is not None:
                result["meta"] = meta
            results.append(result)
    return results, unknown


def _polygons(binary: np.ndarray, label: str) -> list[dict[str, Any]]:
    """Outer contours of a binary mask as polygon values (vertices at pixel coordinates, in percent)."""
    height, width = binary.shape
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    values = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)
        if len(points) < 3:
            continue  # a 1-2 pixel speck: no area as a polygon
        percent = points / np.array([width, height]) * 100.0
        values.append({"points": percent.round(4).tolist(), "closed": True, "polygonlabels": [label]})
    return values


class _Prediction(Protocol):
    """What :func:`prediction_payload` reads of :class:`model.inference.PairPrediction`."""

    inconsistency: float
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None


def prediction_payload(
    prediction: _Prediction,
    schema: ProjectSchema,
    class_names: Sequence[str],
    model_version: str,
    *,
    image_size: tuple[int, int],
    policy: RegionPolicy | None = None,
    task_id: Any = None,
) -> tuple[dict[str, Any], set[str]]:
    """One task's Label Studio prediction: fused-branch regions, ``score = 1 - inconsistency``.

    Label Studio's uncertainty sampling serves the lowest ``score`` first, so the most inconsistent pair
    (I close to 1) gets a score close to 0; a non-finite I (a diverged model) gets 1.0, last in the queue,
    and an error in the log. ``policy`` decides which regions go (per-class thresholds, a cap, the quality
    gate); without one every region given is sent. Returns (payload, unknown model classes).
    """
    policy = policy or RegionPolicy(fallback=-math.inf, max_regions=1 << 30)
    if schema.task == "detection":
        chosen = policy.select(np.asarray(prediction.scores), np.asarray(prediction.labels), class_names)
        branch_scores = getattr(prediction, "branch_scores", None)
        result, unknown = detections_to_results(
            np.asarray(prediction.boxes).reshape(-1, 4)[chosen],
            np.asarray(prediction.scores).reshape(-1)[chosen],
            np.asarray(prediction.labels).reshape(-1)[chosen],
            image_size,
            schema,
            class_names,
            None if branch_scores is None else np.asarray(branch_scores).reshape(-1, 2)[chosen],
        )
    else:
        if prediction.mask is None:
            raise ValueError("a segmentation prediction without a mask")
        # Per class id: the visible, thermal and fused branches' mean probability inside the class's mask.
        class_scores = getattr(prediction, "class_branch_scores", None)
        by_class = None if class_scores is None else np.asarray(class_scores, dtype=np.float64).reshape(-1, 3)
        result, unknown = (
            mask_to_results(
                prediction.mask,
                schema,
                class_names,
                scores=None if by_class is None else by_class[:, 2],
                branch_scores=None if by_class is None else by_class[:, :2],
            )
            if policy.send
            else ([], set())
        )
    inconsistency = float(prediction.inconsistency)
    if math.isfinite(inconsistency):
        score = float(np.clip(1.0 - inconsistency, 0.0, 1.0))
    else:
        log.error(
            "task %s: non-finite inconsistency (%s) from %s; ranked last",
            task_id,
            inconsistency,
            model_version,
        )
        score = 1.0
    return {"result": result, "score": score, "model_version": model_version}, unknown


# ------------------------------------------------------------------------------------------ annotations
def _timestamp(value: Any) -> float:
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return -math.inf
    return -math.inf


def latest_annotation(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """The task's most recent annotation that was not cancelled (skipped), by ``updated_at`` (then
    ``created_at``, then ``id``); ``None`` when there is none."""
    candidates = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled") and isinstance(a.get("result", []), list)
    ]
    if not candidates:
        return None

    def key(annotation: dict[str, Any]) -> tuple[float, float, int]:
        annotation_id = annotation.get("id")
        return (
            _timestamp(annotation.get("updated_at")),
            _timestamp(annotation.get("created_at")),
            annotation_id if isinstance(annotation_id, int) else -1,
        )

    return max(candidates, key=key)


def _region_label(
    value: Mapping[str, Any], key: str, class_ids: Mapping[str, int]
) -> tuple[int | None, str | None]:
    """(class id, None) for the first label of the region the model knows; (None, name) when it knows none."""
    names = value.get(key) or []
    if isinstance(names, str):
        names = [names]
    for name in names:
        if name in class_ids:
            return class_ids[name], None
    return None, (str(names[0]) if names else None)


def _frame(result: Mapping[str, Any], image_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) the region's percentages refer to: its original size when recorded, else the image's."""
    height, width = image_size
    try:
        original_w = int(result.get("original_width") or 0)
        original_h = int(result.get("original_height") or 0)
    except (TypeError, ValueError):
        return height, width
    return (original_h, original_w) if original_w > 0 and original_h > 0 else (height, width)


def _rectangle_box(value: Mapping[str, Any], frame: tuple[int, int]) -> np.ndarray:
    """Pixel ``x1, y1, x2, y2`` in ``frame`` of a (possibly rotated) Label Studio rectangle.

    Label Studio rotates a rectangle by ``rotation`` degrees (clockwise on screen) about its top-left corner
    ``(x, y)``; the training target is the axis-aligned box around the rotated one.
    """
    height, width = frame
    x = float(value["x"]) / 100.0 * width
    y = float(value["y"]) / 100.0 * height
    w = float(value["width"]) / 100.0 * width
    h = float(value["height"]) / 100.0 * height
    angle = math.radians(float(value.get("rotation") or 0.0))
    if angle == 0.0:
        return np.array([x, y, x + w, y + h])
    cos, sin = math.cos(angle), math.sin(angle)
    corners = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    # Image axes point right and down, so this standard rotation matrix turns clockwise on screen.
    xs = x + corners[:, 0] * cos - corners[:, 1] * sin
    ys = y + corners[:, 0] * sin + corners[:, 1] * cos
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def _brush_mask(value: Mapping[str, Any], frame: tuple[int, int]) -> np.ndarray | None:
    """The painted pixels of a brush region, (H, W) bool in ``frame``; None when the RLE does not fit it."""
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        return None
    flat = decode_rle(rle)
    height, width = frame
    if flat.size != height * width * 4:
        return None
    return flat.reshape(height, width, 4)[:, :, 3] >= BRUSH_ALPHA_THRESHOLD


def _polygon_mask(value: Mapping[str, Any], frame: tuple[int, int]) -> np.ndarray | None:
    """A polygon region rasterised with cv2.fillPoly, (H, W) bool in ``frame``.

    Vertices are ``percent * size`` in pixel coordinates; cv2.fillPoly fills the pixels inside and on the
    boundary, so corners at pixels (10, 10) and (20, 20) fill 11 x 11 pixels (the convention of contours
    from cv2.findContours, which :func:`mask_to_results` uses, so masks survive a round trip).
    """
    points = np.asarray(value.get("points") or [], dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 3 or points.shape[1] != 2:
        return None
    height, width = frame
    pixels = points / 100.0 * np.array([width, height])
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(pixels * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _labelled_regions(
    results: Sequence[dict[str, Any]],
    accepted: frozenset[str],
    class_ids: Mapping[str, int],
    image_size: tuple[int, int],
    unknown: set[str],
) -> Iterator[tuple[dict[str, Any], str, dict[str, Any], int, tuple[int, int]]]:
    """The regions of accepted result types whose label the model knows, as (result, type, value, class id,
    frame size); labels the model does not know are added to ``unknown``."""
    for result in results:
        kind = str(result.get("type", "")).lower()
        value = result.get("value")
        if kind not in accepted or not isinstance(value, dict):
            continue
        class_id, missing = _region_label(value, kind, class_ids)
        if class_id is None:
            if missing is not None:
                unknown.add(missing)
            continue
        yield result, kind, value, class_id, _frame(result, image_size)


def annotation_to_target(
    annotation: Mapping[str, Any] | None,
    schema: ProjectSchema,
    class_names: Sequence[str],
    image_size: tuple[int, int],
) -> tuple[Target, set[str]]:
    """A Label Studio annotation -> the training target of the pair, in pixels of ``image_size``.

    Detection: ``{"boxes": (K, 4) float32 xyxy, "labels": (K,) int64 in 1..C, "ignore": (K,) bool}`` from
    ``rectanglelabels`` regions; rotated rectangles become their axis-aligned bounding box; boxes are clipped
    to the image and empty ones dropped. ``ignore`` is all False (Label Studio has no "ignore" flag; a
    project that wants one adds it as a label, which the model then learns as a class).

    Segmentation: ``{"mask": (H, W) int64}``, 0 = unlabelled background, ``1..C`` = ``class_names``, from
    ``brushlabels`` (RLE decoded with the SDK) and ``polygonlabels`` regions, painted in annotation order
    (a later region wins where two overlap).

    Regions are read in the frame of their ``original_width`` / ``original_height`` when recorded (else
    ``image_size``) and scaled to ``image_size``. Regions of other types, or not decodable, are skipped with
    a warning.

    Returns:
        (target, unknown): ``unknown`` holds region labels the model has no class for (those regions are
        skipped).
    """
    height, width = image_size
    class_ids = {name: i + 1 for i, name in enumerate(class_names)}
    unknown: set[str] = set()
    results = [r for r in (annotation or {}).get("result") or [] if isinstance(r, dict)]
    accepted = schema.result_types

    if schema.task == "detection":
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        for result, kind, value, class_id, frame in _labelled_regions(
            results, accepted, class_ids, image_size, unknown
        ):
            try:
                box = _rectangle_box(value, frame)
            except (KeyError, TypeError, ValueError):
                log.warning("skipping malformed %s region %s", kind, result.get("id"))
                continue
            box = box * np.array([width / frame[1], height / frame[0]] * 2)
            box = np.clip(box, 0.0, [width, height, width, height])
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
                labels.append(class_id)
        return {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "ignore": np.zeros(len(labels), dtype=bool),
        }, unknown

    mask = np.zeros((height, width), dtype=np.int64)
    for result, kind, value, class_id, frame in _labelled_regions(
        results, accepted, class_ids, image_size, unknown
    ):
        try:
            region = _brush_mask(value, frame) if kind == "brushlabels" else _polygon_mask(value, frame)
        except (TypeError, ValueError, IndexError):
            region = None
        if region is None:
            log.warning(
                "skipping %s region %s: cannot decode it at %dx%d", kind, result.get("id"), *frame[::-1]
            )
            continue
        if region.shape != (height, width):
            region = cv2.resize(region.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        mask[region] = class_id
    return {"mask": mask}, unknown
