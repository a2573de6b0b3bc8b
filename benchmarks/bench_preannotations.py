"""Pre-annotations an annotator keeps: the demo's flow, headless, scored against the generator's truth.

Runs `rgbt-al demo` (fresh data folder, its own ports; Label Studio, the backend and an RQ worker when Redis
answers): the starter model becomes the project's first version, the demo annotates its random initial set,
the backend fine-tunes (the new version becomes current only when it is not worse on the held-out tasks),
scores the pool and pushes the pre-annotations. Once the queue is ready, the predictions the current version
pushed into Label Studio for the unlabelled pool are read back and matched to the generator's ground truth at
IoU 0.5 (class-aware, greedy by confidence): precision, recall, regions per task, overall and per condition.
Also recorded: the held-out AP50 of the first version trained on the annotations (and of the starter on the
same tasks), and the time from `rgbt-al demo --fresh` to "ready" (Label Studio's install is cached here, its
database migration is not), then of a second run that reuses the data folder.

    nice -n 10 python benchmarks/bench_preannotations.py      # a few minutes on a 2-core CPU

Writes benchmarks/results/preannotations.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil
import numpy as np

from ls_backend.admin import WrittenPair, write_synthetic_pairs
from ls_backend.demo import DemoOptions, run_demo
from ls_backend.registry import ModelRegistry
from ls_backend.settings import Settings
from ls_backend.studio import StudioClient
from ls_backend.studio_server import free_port
from model.data.synthetic import SYNTH_CLASSES
from model.metrics import _iou

TARGETS = {"precision": 0.7, "recall": 0.6, "max_regions_per_task": 20, "first_version_ap50": 0.5}


def region_boxes(result: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixel boxes, scores and labels of a prediction's rectangle regions."""
    boxes, scores, labels = [], [], []
    for region in result:
        value = region["value"]
        width, height = region["original_width"], region["original_height"]
        x, y = value["x"] / 100 * width, value["y"] / 100 * height
        boxes.append([x, y, x + value["width"] / 100 * width, y + value["height"] / 100 * height])
        scores.append(region.get("score", 1.0))
        labels.append(value["rectanglelabels"][0])
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores), labels


def match(result: list[dict[str, Any]], truth: WrittenPair) -> tuple[int, int, int]:
    """(true positives, false positives, missed objects) of one task's regions at IoU 0.5, per class."""
    boxes, scores, labels = region_boxes(result)
    gt_names = [SYNTH_CLASSES[i - 1] for i in truth.labels]
    tp = fp = 0
    taken = np.zeros(len(gt_names), bool)
    iou = _iou(boxes, np.asarray(truth.boxes, np.float64).reshape(-1, 4))[0]
    for d in np.argsort(-scores, kind="stable"):
        candidates = np.where(~taken & (np.array(gt_names) == labels[d]), iou[d], -1.0)
        g = int(np.argmax(candidates)) if len(candidates) else -1
        if g >= 0 and candidates[g] >= 0.5:
            taken[g] = True
            tp += 1
        else:
            fp += 1
    return tp, fp, int((~taken).sum())


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    regions = [r["regions"] for r in rows]
    return {
        "tasks": len(rows),
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "regions_per_task_median": statistics.median(regions) if regions else None,
        "max_regions_per_task": max(regions) if regions else None,
        "true_positives": tp,
        "false_positives": fp,
        "missed": fn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=benchutil.RESULTS_DIR / "preannotations.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the demo's data folder here")
    parser.add_argument("--no-rerun", action="store_true", help="skip the second (reusing) demo run")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-preannotations-"))
    options = DemoOptions(
        data_dir=workdir / "demo-data",
        label_studio_port=free_port(),
        backend_port=free_port(),
        fresh=True,
        exit_when_ready=True,
    )
    found: dict[str, Any] = {}

    def on_ready(studio: StudioClient, project_id: int, registry: ModelRegistry) -> None:
        found["ready_seconds"] = time.perf_counter() - started
        version = registry.current_version(str(project_id))
        tasks = {t["id"]: t for t in studio.iter_tasks(project_id, labeled=False)}
        predictions = {
            p["task"]: p
            for p in studio.list_predictions(project_id=project_id)
            if p["model_version"] == version
        }
        found.update(project=project_id, version=version, tasks=tasks, predictions=predictions)
        found["history"] = registry.history(str(project_id))

    load_before = benchutil.load_average()
    started = time.perf_counter()
    run_demo(DemoOptions(**{**options.__dict__, "on_ready": on_ready}))
    first_run = found["ready_seconds"]
    rerun = None
    if not args.no_rerun:
        started = time.perf_counter()
        run_demo(DemoOptions(**{**options.__dict__, "fresh": False, "on_ready": on_ready}))
        rerun = found["ready_seconds"]

    # The demo's pool, as the demo generated it (deterministic by seed): ground truth by pair name.
    truth_dir = workdir / "truth"
    truth = {
        p.name: p
        for p in write_synthetic_pairs(truth_dir, options.pairs, seed=0, image_size=options.image_size)
    }
    rows = []
    for task_id, task in found["tasks"].items():
        prediction = found["predictions"].get(task_id)
        pair = truth[task["data"]["pair"]]
        result = prediction["result"] if prediction else []
        tp, fp, fn = match(result, pair)
        rows.append({"condition": pair.condition, "tp": tp, "fp": fp, "fn": fn, "regions": len(result)})
    overall = summarise(rows)
    by_condition = {
        c: summarise([r for r in rows if r["condition"] == c]) for c in sorted({r["condition"] for r in rows})
    }
    trained = [v for v in found["history"] if v.num_train_tasks > 0]
    first = trained[0] if trained else None
    starter = next((v for v in found["history"] if v.status == "initial"), None)
    settings = Settings.from_env({})
    results = {
        "precision": overall["precision"],
        "recall": overall["recall"],
        "max_regions_per_task": overall["max_regions_per_task"],
        "regions_per_task_median": overall["regions_per_task_median"],
        "first_version_ap50": first.metrics.get("AP50") if first else None,
        "demo_ready_seconds": round(first_run, 1),
        "demo_ready_seconds_rerun": None if rerun is None else round(rerun, 1),
        "targets": TARGETS,
        "met": {
            "precision": (overall["precision"] or 0) >= TARGETS["precision"],
            "recall": (overall["recall"] or 0) >= TARGETS["recall"],
            "max_regions_per_task": (overall["max_regions_per_task"] or 0) <= TARGETS["max_regions_per_task"],
            "first_version_ap50": bool(
                first and (first.metrics.get("AP50") or 0) >= TARGETS["first_version_ap50"]
            ),
            "demo_ready_within_300_s": first_run <= 300,
        },
        "by_condition": by_condition,
        "overall": overall,
        "served_version": found["version"],
        "first_trained_version": None
        if first is None
        else {
            "version": first.version,
            "status": first.status,
            "train_tasks": first.num_train_tasks,
            "holdout_tasks": first.metrics.get("holdout_tasks"),
            "AP50": first.metrics.get("AP50"),
            "starter_AP50_on_same_tasks": first.baseline.get("AP50"),
            "thresholds": first.thresholds,
            "note": first.note,
        },
        "starter": None
        if starter is None
        else {"version": starter.version, "thresholds": starter.thresholds},
        "demo": {
            "pairs": options.pairs,
            "initial_annotations": options.initial,
            "image_size": list(options.image_size),
            "width": options.width,
            "epochs": options.epochs,
            "max_regions_per_task_setting": settings.max_regions_per_task,
            "preannotation_min_metric": settings.preannotation_min_metric,
        },
        "machine": benchutil.machine_info(),
        "load_average_before": load_before,
        "load_average_after": benchutil.load_average(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("by_condition", "machine")}, indent=2))
    benchutil.print_table(
        "pre-annotations by condition",
        [
            [
                c,
                s["tasks"],
                s["precision"],
                s["recall"],
                s["regions_per_task_median"],
                s["max_regions_per_task"],
            ]
            for c, s in {**by_condition, "all": overall}.items()
        ],
        ["condition", "tasks", "precision", "recall", "median regions", "max regions"],
    )


if __name__ == "__main__":
    main()
