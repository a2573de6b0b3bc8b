"""Evaluation metrics: COCO detection AP, KAIST/Caltech log-average miss rate, segmentation IoU.

Every function takes numpy arrays or torch tensors (any device) and returns plain Python floats.

Conventions shared by the module:

- Values are fractions in ``[0, 1]``: an AP of 37.0 in a paper is ``0.370`` here, a miss rate of 8.86% is
  ``0.0886``.
- NaN means "undefined" (nothing to measure against: no ground-truth box of any class, no labelled pixel of a
  class), never a silent 0, so an empty evaluation split is not mistaken for a bad model.
- Detection labels are ``1..C`` (0 is background, see :mod:`model.data.sample`); boxes are absolute pixel
  ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from model.data.sample import IGNORE_INDEX

__all__ = [
    "ConfusionMatrix",
    "coco_detection_metrics",
    "log_average_miss_rate",
    "metrics_by_group",
    "miss_rate_fppi_curve",
    "sample_miss_rates",
    "segmentation_metrics",
]

ArrayLike = np.ndarray | Tensor | Sequence[Any]

P = TypeVar("P")
T = TypeVar("T")
R = TypeVar("R")


def _numpy(x: ArrayLike, dtype: type | np.dtype) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _boxes(x: ArrayLike) -> np.ndarray:
    # float64: COCO thresholds are compared exactly, float32 rounding could flip a hit at IoU == threshold
    return _numpy(x, np.float64).reshape(-1, 4)


def _field(target: Mapping[str, Any], key: str, count: int, dtype: type, default: Any) -> np.ndarray:
    value = target.get(key)
    if value is None:
        return np.full(count, default, dtype=dtype)
    array = _numpy(value, dtype).reshape(-1)
    if len(array) != count:
        raise ValueError(f"target[{key!r}] has {len(array)} entries for {count} boxes")
    return array


# --------------------------------------------------------------------------------------------------------
# COCO detection metrics
# --------------------------------------------------------------------------------------------------------


def _coco_backend() -> tuple[type, type, bool]:
    """(COCO, COCOeval, is_faster): faster-coco-eval's pycocotools-compatible classes, else pycocotools."""
    try:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval

        return COCO, COCOeval, True
    except ImportError:  # pragma: no cover - depends on the environment
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval, False


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pycocotools prints progress to stdout; faster-coco-eval logs it (its print_function is silenced too)
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _make_coco(coco_cls: type, dataset: dict[str, Any]) -> Any:
    # Build through createIndex rather than the constructor / loadRes: works on both backends and with an
    # empty detection list (pycocotools' loadRes indexes anns[0]).
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{where} labels must be in 1..{num_classes}, got {labels.min()}..{labels.max()}")


def _add_annotations(
    annotations: list[dict[str, Any]],
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    **per_box: list[Any],
) -> None:
    """Append one COCO annotation per xyxy box (ids continue the list's numbering); ``per_box`` values, one
    per box, become extra keys ("iscrowd", "score")."""
    for index, ((x1, y1, x2, y2), label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
        w, h = x2 - x1, y2 - y1
        annotation = {
            "id": len(annotations) + 1,
            "image_id": image_id,
            "category_id": label,
            "bbox": [x1, y1, w, h],
            "area": w * h,
        }
        annotation.update({key: values[index] for key, values in per_box.items()})
        annotations.append(annotation)


def coco_detection_metrics(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    per_class: bool = False,
    max_detections: int = 100,
) -> dict[str, float]:
    """COCO box AP with the official evaluator (faster-coco-eval, else pycocotools).

    Args:
        predictions: one dict per image with ``boxes`` (M, 4) xyxy pixels, ``scores`` (M,) and
            ``labels`` (M,) in ``1..C``.
        targets: one dict per image, same order, with ``boxes`` (K, 4) xyxy, ``labels`` (K,) in ``1..C`` and
            optionally ``ignore`` (K,) bool. Ignored boxes become COCO ``iscrowd=1`` regions: a detection
            matched to one is neither a true nor a false positive. Other keys are ignored.
        class_names: the C foreground class names; label ``i`` is ``class_names[i - 1]``.
        per_class: also return ``"AP50/<name>"`` for every class.
        max_detections: detections kept per image and class, highest scores first (COCO's maxDets).

    Returns:
        ``{"mAP": AP@[.5:.95], "AP50": AP@.5, "AP75": AP@.75}`` (plus per-class AP50), fractions in [0, 1],
        101-point interpolated as COCO does, averaged over the classes that have at least one non-ignored
        ground-truth box (COCO marks the others -1 and leaves them out). NaN when no class has one, or there
        is no image. With ground truth but no prediction every value is 0. A per-class value is NaN for a
        class without ground truth.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    num_classes = len(class_names)
    keys = ["mAP", "AP50", "AP75"]
    nan = float("nan")
    if not targets or num_classes == 0:
        result = dict.fromkeys(keys, nan)
        if per_class:
            result.update({f"AP50/{name}": nan for name in class_names})
        return result

    images: list[dict[str, Any]] = []
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    for image_id, (prediction, target) in enumerate(zip(predictions, targets, strict=True), start=1):
        images.append({"id": image_id})
        boxes = _boxes(target["boxes"])
        labels = _field(target, "labels", len(boxes), np.int64, 1)
        _check_labels(labels, num_classes, "target")
        crowd = _field(target, "ignore", len(boxes), bool, False).astype(int)
        _add_annotations(gt_anns, image_id, boxes, labels, iscrowd=crowd.tolist())
        boxes = _boxes(prediction["boxes"])
        labels = _field(prediction, "labels", len(boxes), np.int64, 1)
        _check_labels(labels, num_classes, "prediction")
        scores = _field(prediction, "scores", len(boxes), np.float64, 1.0)
        _add_annotations(dt_anns, image_id, boxes, labels, iscrowd=[0] * len(boxes), score=scores.tolist())

    coco_cls, eval_cls, is_faster = _coco_backend()
    categories = [{"id": i, "name": str(name)} for i, name in enumerate(class_names, start=1)]
    with _quiet():
        gt = _make_coco(coco_cls, {"images": images, "annotations": gt_anns, "categories": categories})
        dt = _make_coco(coco_cls, {"images": images, "annotations": dt_anns, "categories": categories})
        options = {"print_function": _silent} if is_faster else {}
        evaluator = eval_cls(gt, dt, "bbox", **options)
        evaluator.params.catIds = list(range(1, num_classes + 1))
        evaluator.params.maxDets = sorted({1, 10, int(max_detections)})
        evaluator.evaluate()
        evaluator.accumulate()

    # (T iou thresholds, R recall thresholds, K classes, A area ranges, M max-dets); area "all" is index 0,
    # the largest maxDets the last. A class without ground truth is -1 everywhere.
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    iou_thresholds = np.asarray(evaluator.params.iouThrs)
    valid = (precision > -1).any(axis=(0, 1))  # (K,)
    ap = precision.mean(axis=1)  # (T, K): AP per IoU threshold and class

    def mean_over_classes(values: np.ndarray) -> float:
        return float(values[valid].mean()) if valid.any() else nan

    t50 = int(np.argmin(np.abs(iou_thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thresholds - 0.75)))
    result = {
        "mAP": mean_over_classes(ap.mean(axis=0)),
        "AP50": mean_over_classes(ap[t50]),
        "AP75": mean_over_classes(ap[t75]),
    }
    if per_class:
        for k, name in enumerate(class_names):
            result[f"AP50/{name}"] = float(ap[t50, k]) if valid[k] else nan
    return result


# --------------------------------------------------------------------------------------------------------
# KAIST / Caltech log-average miss rate
# --------------------------------------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, intersection / area of a) between boxes a (N, 4) and b (M, 4) -> two (N, M) arrays."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / (area_a[:, None] + area_b[None, :] - inter), 0.0)
        ioa = np.where(inter > 0, inter / area_a[:, None], 0.0)
    return iou, ioa


def _match_image(
    prediction: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    label: int | None,
    min_height: float,
    max_occlusion: int,
    iou_threshold: float,
    height_margin: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Caltech matching on one image -> (scores (D,), is_tp (D,) bool, number of counted GT boxes).

    Only counted detections are returned: those matched to an ignore region or too short are dropped.
    """
    gt_boxes = _boxes(target["boxes"])
    gt_labels = _field(target, "labels", len(gt_boxes), np.int64, 1)
    gt_ignore = _field(target, "ignore", len(gt_boxes), bool, False)
    occlusion = _field(target, "occlusion", len(gt_boxes), np.int64, 0)
    if label is not None:
        # Ignore boxes are kept whatever their class (a KAIST "people" crowd box excuses person detections);
        # non-ignored boxes of other classes play no part.
        keep = (gt_labels == label) | gt_ignore
        gt_boxes, gt_ignore, occlusion = gt_boxes[keep], gt_ignore[keep], occlusion[keep]
    heights = gt_boxes[:, 3] - gt_boxes[:, 1]
    gt_ignore = gt_ignore | (heights < min_height) | (occlusion > max_occlusion)
    counted, regions = gt_boxes[~gt_ignore], gt_boxes[gt_ignore]

    dt_boxes = _boxes(prediction["boxes"])
    scores = _field(prediction, "scores", len(dt_boxes), np.float64, 1.0)
    if label is not None:
        dt_labels = _field(prediction, "labels", len(dt_boxes), np.int64, label)
        dt_boxes, scores = dt_boxes[dt_labels == label], scores[dt_labels == label]
    dt_heights = dt_boxes[:, 3] - dt_boxes[:, 1]
    # Far too short to be a reasonable pedestrian: dropped before matching. Those within the margin may still
    # hit a GT just above min_height (a 53 px box on a 56 px person), see below for when they miss.
    near = dt_heights >= min_height / height_margin
    dt_boxes, scores, dt_heights = dt_boxes[near], scores[near], dt_heights[near]
    order = np.argsort(-scores, kind="stable")
    dt_boxes, scores, dt_heights = dt_boxes[order], scores[order], dt_heights[order]

    iou, _ = _iou(dt_boxes, counted)
    _, ioa = _iou(dt_boxes, regions)  # intersection over detection area, the Caltech ignore criterion
    taken = np.zeros(len(counted), dtype=bool)
    status = np.zeros(len(dt_boxes), dtype=np.int8)  # 1 true positive, 0 false positive, -1 not counted
    for d in range(len(dt_boxes)):
        if len(counted):
            candidates = np.where(taken, -1.0, iou[d])
            g = int(np.argmax(candidates))
            if candidates[g] >= iou_threshold:
                taken[g] = True
                status[d] = 1
                continue
        if (len(regions) and ioa[d].max() >= iou_threshold) or dt_heights[d] < min_height:
            status[d] = -1  # on an ignore region, or an unmatched short detection: neither TP nor FP
    counted_dt = status >= 0
    return scores[counted_dt], status[counted_dt] == 1, len(counted)


def _curve(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(fppi, miss_rate, number of counted GT boxes); see :func:`miss_rate_fppi_curve`."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    all_scores, all_tp, num_gt = [], [], 0
    for prediction, target in zip(predictions, targets, strict=True):
        scores, tp, count = _match_image(prediction, target, **options)
        all_scores.append(scores)
        all_tp.append(tp)
        num_gt += count
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    # A threshold cannot separate equal scores: keep the last point of each run of ties.
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else np.zeros(0, int)
    tp_cum = np.cumsum(tp)[last]
    fp_cum = np.cumsum(~tp)[last]
    fppi = fp_cum / max(len(targets), 1)
    miss_rate = 1.0 - tp_cum / num_gt if num_gt else np.full(len(last), np.nan)
    return fppi.astype(np.float64), np.asarray(miss_rate, dtype=np.float64), num_gt


def miss_rate_fppi_curve(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    *,
    label: int | None = 1,
    min_height: float = 55.0,
    max_occlusion: int = 1,
    iou_threshold: float = 0.5,
    height_margin: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Miss rate against false positives per image as the score threshold decreases (Caltech protocol).

    Ground truth (per image: ``boxes`` (K, 4) xyxy, ``labels`` (K,), optional ``ignore`` (K,) bool and
    ``occlusion`` (K,) int, 0 none / 1 partial / 2 heavy) is split into counted boxes and ignore regions: a
    box is an ignore region when flagged ``ignore``, shorter than ``min_height`` pixels, or occluded more than
    ``max_occlusion``. With ``label`` set, predictions and non-ignored boxes of other classes are dropped
    (``label=None``: single-class data, labels unused).

    Per image, detections (``boxes`` (M, 4), ``scores`` (M,), optional ``labels`` (M,)) are matched greedily
    by descending score to the unmatched counted box of highest IoU, a hit when IoU >= ``iou_threshold``.
    An unmatched detection is not counted when it covers an ignore region (intersection over the
    *detection's* area >= ``iou_threshold``) or is shorter than ``min_height``; detections shorter than
    ``min_height / height_margin`` are dropped before matching (Caltech/KAIST evaluation code, margin 1.25).
    Every other unmatched detection is a false positive. Bounding-box aspect-ratio standardisation and image
    border ignore bands of the original toolbox are not applied.

    Returns:
        ``(fppi, miss_rate)``, two (P,) float64 arrays, one point per distinct score (tied scores form one
        threshold), in decreasing score order: fppi non-decreasing, miss rate non-increasing. Empty when no
        detection is counted; miss rate is NaN when no box is counted.
    """
    fppi, miss_rate, _ = _curve(
        predictions,
        targets,
        label=label,
        min_height=min_height,
        max_occlusion=max_occlusion,
        iou_threshold=iou_threshold,
        height_margin=height_margin,
    )
    return fppi, miss_rate


def sample_miss_rates(fppi: np.ndarray, miss_rate: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Miss rate at each reference FPPI: the one at the largest curve FPPI <= reference, 1 where none.

    The curve implicitly starts at miss rate 1 before the first detection, as in the Caltech toolbox: a
    detector whose first false positives already exceed a reference gets a full miss there.
    """
    # prepend the (FPPI -inf, miss rate 1) start point, as the toolbox does, so "no point" needs no case
    fppi = np.concatenate([[-np.inf], np.asarray(fppi, dtype=np.float64)])
    miss_rate = np.concatenate([[1.0], np.asarray(miss_rate, dtype=np.float64)])
    # relative tolerance: 1 FP in 100 images must count at the 1e-2 reference despite float rounding
    index = np.searchsorted(fppi, np.asarray(references, dtype=np.float64) * (1 + 1e-9), side="right") - 1
    return miss_rate[index]


def log_average_miss_rate(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    *,
    label: int | None = 1,
    min_height: float = 55.0,
    iou_threshold: float = 0.5,
    fppi_range: tuple[float, float] = (1e-2, 1.0),
    num_points: int = 9,
    max_occlusion: int = 1,
    height_margin: float = 1.25,
) -> float:
    """KAIST / Caltech log-average miss rate ("reasonable" setting by default), a fraction in [0, 1].

    The miss rate of :func:`miss_rate_fppi_curve` is sampled at ``num_points`` log-spaced FPPI references in
    ``fppi_range`` (:func:`sample_miss_rates`) and averaged in log space:
    ``exp(mean(log(max(mr, 1e-10))))``. A paper's 8.86% is 0.0886 here; a perfect detector gives 1e-10,
    no detection 1. NaN when no ground-truth box is counted.
    """
    fppi, miss_rate, num_gt = _curve(
        predictions,
        targets,
        label=label,
        min_height=min_height,
        max_occlusion=max_occlusion,
        iou_threshold=iou_threshold,
        height_margin=height_margin,
    )
    if num_gt == 0:
        return float("nan")
    references = np.logspace(math.log10(fppi_range[0]), math.log10(fppi_range[1]), num_points)
    sampled = sample_miss_rates(fppi, miss_rate, references)
    return float(np.exp(np.mean(np.log(np.maximum(sampled, 1e-10)))))


# --------------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------------


def _long_tensor(x: ArrayLike) -> Tensor:
    return x.long() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.int64)


class ConfusionMatrix:
    """Pixel confusion matrix accumulated over images: ``mat[target class, predicted class]`` counts.

    Args:
        num_classes: C; predictions and (non-ignored) targets must be in ``0..C-1``.
        ignore_index: target value of pixels that are skipped (unlabelled, padding).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    def update(self, pred: ArrayLike, target: ArrayLike) -> ConfusionMatrix:
        """Add one image or batch: ``pred`` and ``target`` integer class ids of the same shape (any)."""
        pred = _long_tensor(pred)
        target = _long_tensor(target).to(pred.device)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        for name, values in (("pred", pred), ("target", target)):
            if values.numel() and (values.min() < 0 or values.max() >= c):
                raise ValueError(f"{name} values must be in 0..{c - 1} (or the ignore index for targets)")
        # one bincount over flattened (target, pred) pairs instead of a per-class loop
        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        self.mat += counts.cpu()
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker) in place."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.mat += other.mat
        return self

    def iou(self) -> Tensor:
        """(C,) float64 intersection over union; NaN for a class absent from both predictions and targets."""
        mat = self.mat.double()
        tp = mat.diag()
        union = mat.sum(0) + mat.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes that occur (NaN IoUs left out); NaN when none does."""
        iou = self.iou()
        return float(iou.nanmean()) if not iou.isnan().all() else float("nan")

    def class_accuracy(self) -> Tensor:
        """(C,) float64 per-class recall (correct over target pixels); NaN for classes not in targets."""
        mat = self.mat.double()
        total = mat.sum(1)
        return torch.where(total > 0, mat.diag() / total.clamp_min(1), torch.full_like(total, float("nan")))

    def pixel_accuracy(self) -> float:
        """Correct pixels over counted pixels; NaN when no pixel was counted."""
        total = int(self.mat.sum())
        return float(self.mat.diag().sum()) / total if total else float("nan")


def segmentation_metrics(
    preds: Iterable[ArrayLike],
    targets: Iterable[ArrayLike],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU over a set of masks.

    Args:
        preds, targets: same-length iterables of (H, W) class-id masks (or batched (N, H, W) tensors).
        num_classes: C, the classes counted (all of them enter the mean, the "unlabelled" class included
            when it is one of them, as in MFNet's evaluation).
        class_names: C names for the per-class keys (default ``"0".."C-1"``).

    Returns:
        ``{"mIoU", "pixel_acc", "mAcc", "IoU/<name>" ...}``, fractions in [0, 1]; a class absent from both
        predictions and targets has IoU NaN and is left out of mIoU.
    """
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    matrix = ConfusionMatrix(num_classes, ignore_index)
    for pred, target in zip(preds, targets, strict=True):
        matrix.update(pred, target)
    accuracy = matrix.class_accuracy()
    result = {
        "mIoU": matrix.miou(),
        "pixel_acc": matrix.pixel_accuracy(),
        "mAcc": float(accuracy.nanmean()) if not accuracy.isnan().all() else float("nan"),
    }
    result.update({f"IoU/{name}": float(v) for name, v in zip(names, matrix.iou().tolist(), strict=True)})
    return result


# --------------------------------------------------------------------------------------------------------
# Breakdowns
# --------------------------------------------------------------------------------------------------------


def metrics_by_group(
    metric_fn: Callable[[list[P], list[T]], R],
    predictions: Sequence[P],
    targets: Sequence[T],
    groups: Sequence[Hashable | None] | str = "condition",
    *,
    missing: Hashable = "unknown",
) -> dict[Hashable, R]:
    """Evaluate ``metric_fn(predictions, targets)`` on each group's images separately.

    Args:
        metric_fn: e.g. ``functools.partial(coco_detection_metrics, class_names=names)`` or
            :func:`log_average_miss_rate` (FPPI is then per image of the group, as it should be).
        groups: one key per image (e.g. the pair's ``condition``: day / night / crossover...), or the name of
            a key to read from each target mapping.
        missing: the group of images whose key is None.

    Returns:
        ``{group: metric_fn(group's predictions, group's targets)}``, groups in sorted order.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    keys = [t.get(groups) for t in targets] if isinstance(groups, str) else list(groups)  # type: ignore[attr-defined]
    if len(keys) != len(targets):
        raise ValueError(f"{len(keys)} group keys for {len(targets)} images")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(missing if key is None else key, []).append(index)
    return {
        key: metric_fn([predictions[i] for i in members[key]], [targets[i] for i in members[key]])
        for key in sorted(members, key=str)
    }


# --------------------------------------------------------------------------------------------------------
# Score thresholds for pre-annotations
# --------------------------------------------------------------------------------------------------------


def _class_matches(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    label: int,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every image's detections of class ``label`` matched greedily at ``iou_threshold`` (ignore regions
    excused) -> (scores (D,), is_tp (D,), number of counted GT boxes), sorted by descending score."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    all_scores, all_tp, num_gt = [np.zeros(0)], [np.zeros(0, bool)], 0
    for prediction, target in zip(predictions, targets, strict=True):
        scores, tp, count = _match_image(
            prediction,
            target,
            label=label,
            min_height=0.0,
            max_occlusion=1 << 30,
            iou_threshold=iou_threshold,
            height_margin=1.0,
        )
        all_scores.append(scores)
        all_tp.append(tp)
        num_gt += count
    scores, tp = np.concatenate(all_scores), np.concatenate(all_tp)
    order = np.argsort(-scores, kind="stable")
    return scores[order], tp[order], num_gt


def calibrate_thresholds(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Per class, the score threshold whose detections (``score >= threshold``) maximise F1 at IoU 0.5.

    Detections are matched to ground truth per image, highest score first; the F1 of keeping the top k of a
    class is ``2 TP_k / (k + G)``. A threshold sits on a detection's score, so equal scores are kept or
    dropped together. Classes without ground truth or without any true positive on the set are left out:
    nothing there to calibrate on (the caller falls back to a fixed threshold). Ties in F1 go to the higher
    threshold (fewer regions for the annotator to check).

    Returns ``{class name: threshold}``.
    """
    thresholds: dict[str, float] = {}
    for index, name in enumerate(class_names, start=1):
        scores, tp, num_gt = _class_matches(predictions, targets, index, iou_threshold)
        if num_gt == 0 or not tp.any():
            continue
        last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # end of each run of ties
        tp_cum = np.cumsum(tp)[last]
        f1 = 2.0 * tp_cum / (last + 1 + num_gt)
        best = int(np.argmax(f1))  # first maximum = highest score
        thresholds[name] = float(scores[last[best]])
    return thresholds


def thresholded_counts(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    thresholds: Mapping[str, float] | float,
    *,
    iou_threshold: float = 0.5,
) -> dict[str, int]:
    """True positives, false positives and counted ground-truth boxes of the detections kept by per-class
    ``thresholds`` (or one threshold for every class), matched at ``iou_threshold``."""
    totals = {"tp": 0, "fp": 0, "gt": 0}
    for index, name in enumerate(class_names, start=1):
        cut = thresholds if isinstance(thresholds, float) else thresholds.get(name, math.inf)
        scores, tp, num_gt = _class_matches(predictions, targets, index, iou_threshold)
        kept = scores >= cut
        totals["tp"] += int(tp[kept].sum())
        totals["fp"] += int((~tp[kept]).sum())
        totals["gt"] += num_gt
    return totals
