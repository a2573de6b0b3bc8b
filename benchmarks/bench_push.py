"""Priority push into a real Label Studio on loopback: bulk pages against one request per task.

A project gets N tasks (default 10,000). Bulk: every task's prediction (a few boxes, ``score = 1 - I``,
``model_version``) through ``StudioClient.import_predictions`` in pages of ``PUSH_PAGE_SIZE`` (one import
request per page), as the scoring jobs push them. Per task: one request per task, measured on a sample
(default 500) and scaled to N - half of the sample before the bulk push and half after it, so both see a
small and a full predictions table. Two per-task variants are timed: the same import endpoint with a
one-item page, and ``POST /api/predictions/`` (Label Studio's create-one-prediction API); the ratio uses the
latter, the faster per-task way.

Label Studio 1.23.2 recounts the annotation and prediction counters of every task of the project on each
prediction import request (unless the feature flag ``EFFICIENT_IMPORT_FLAG`` is set), so the cost of a page
grows with the project. Everything is measured twice: on a Label Studio started as the product starts it
(``ls_backend.studio_server``), and on a second one started with the flag.

    python benchmarks/bench_push.py               # starts its own Label Studio (about 10 s from a template)
    python benchmarks/bench_push.py --clusters --tasks 2000 --sample 200   # QUEUE_CLUSTERS' cost only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil
import numpy as np

from ls_backend.admin import read_label_config
from ls_backend.convert import class_names_from_schema, prediction_payload
from ls_backend.label_config import ProjectSchema
from ls_backend.settings import Settings
from ls_backend.studio import StudioClient
from model.inference import PairPrediction

TARGET_RATIO = 20.0
#: Label Studio 1.23.2 feature flag (off by default): with it, an import request recounts the counters of its
#: own tasks only; without it, of every task of the project (data_import/api.py, ImportPredictionsAPI).
EFFICIENT_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
IMAGE_SIZE = (512, 640)


def make_prediction(rng: np.random.Generator, classes: int) -> PairPrediction:
    """A plausible fused-branch prediction: 3 boxes, an inconsistency in [0, 1]."""
    count = 3
    top_left = rng.uniform(0, 400, (count, 2))
    boxes = np.concatenate([top_left, top_left + rng.uniform(20, 100, (count, 2))], axis=1)
    return PairPrediction(
        inconsistency=float(rng.uniform()),
        embedding=np.zeros(0, np.float32),
        boxes=boxes.astype(np.float32),
        scores=rng.uniform(0.3, 1.0, count).astype(np.float32),
        labels=rng.integers(1, classes + 1, count),
    )


def project_with_tasks(
    studio: StudioClient, title: str, label_config: str, schema: ProjectSchema, tasks: int
) -> tuple[int, list[int]]:
    """A new project of ``tasks`` pool tasks (local-files URLs, imported 2,000 at a time): its id and the
    task ids."""
    project = int(studio.create_project(title=f"{title} {time.time():.0f}", label_config=label_config)["id"])
    task_ids: list[int] = []
    for start in range(0, tasks, 2000):
        chunk = [
            {
                schema.rgb.value_key: f"/data/local-files/?d=pool/rgb/{i:05d}.png",
                schema.thermal.value_key: f"/data/local-files/?d=pool/thermal/{i:05d}.png",
            }
            for i in range(start, min(start + 2000, tasks))
        ]
        task_ids += studio.import_tasks(project, chunk)
    return project, task_ids


def measure(
    url: str,
    token: str,
    args: argparse.Namespace,
    *,
    create_sample: int,
    import_sample: int,
    extra_pages: list[int],
) -> dict[str, Any]:
    """Every push variant against the Label Studio at ``url``."""
    label_config, schema = read_label_config("synthetic_detection")
    class_names = class_names_from_schema(schema)
    page_size = args.page_size or Settings.from_env({}).push_page_size
    rng = np.random.default_rng(0)
    with StudioClient(url, token, timeout=300) as studio:
        started = time.perf_counter()
        project, task_ids = project_with_tasks(studio, "bench push", label_config, schema, args.tasks)
        import_seconds = time.perf_counter() - started

        def payload(task_id: int, version: str) -> dict[str, Any]:
            body, _ = prediction_payload(
                make_prediction(rng, len(class_names)), schema, class_names, version, image_size=IMAGE_SIZE
            )
            return {"task": task_id, **body}

        # Per task: POST /api/predictions/ on the sample; the import endpoint with one-item pages on a smaller
        # one (Label Studio 1.23.2 recounts every task of the project on each import request: slow per task).
        picks = [int(t) for t in rng.choice(task_ids, size=min(create_sample, len(task_ids)), replace=False)]
        samples = {"create_one": picks, "import_one": picks[:import_sample]}
        per_task: dict[str, list[float]] = {name: [] for name in samples}
        halves = {name: len(ids) // 2 for name, ids in samples.items()}
        load_before = benchutil.load_average()

        def per_task_round(first: bool) -> None:
            # Half of each sample before the bulk pushes, half after (an empty, then a full table).
            for name, ids in samples.items():
                chosen = ids[: halves[name]] if first else ids[halves[name] :]
                for task_id in chosen:
                    body = payload(task_id, f"per-task-{name}")
                    began = time.perf_counter()
                    if name == "create_one":
                        studio.request("POST", "api/predictions/", json_body=body)
                    else:
                        studio.import_predictions(project, [body])
                    per_task[name].append(time.perf_counter() - began)

        per_task_round(first=True)
        bulk_runs = []
        for size in [page_size, *extra_pages]:
            version = f"bulk-{size}"
            bulk = [payload(t, version) for t in task_ids]
            page_seconds: list[float] = []
            started = time.perf_counter()
            for start in range(0, len(bulk), size):
                began = time.perf_counter()
                studio.import_predictions(project, bulk[start : start + size])
                page_seconds.append(time.perf_counter() - began)
            seconds = time.perf_counter() - started
            bulk_runs.append(
                {
                    "page_size": size,
                    "pages": len(page_seconds),
                    "seconds": round(seconds, 2),
                    "predictions_per_s": round(len(bulk) / seconds, 1),
                    "page_seconds": benchutil.summary(page_seconds),
                    "first_page_s": round(page_seconds[0], 3),
                    "last_page_s": round(page_seconds[-1], 3),
                }
            )
        per_task_round(first=False)
        load_after = benchutil.load_average()
        counts = studio.model_versions(project)
        for run_ in bulk_runs:
            assert counts.get(f"bulk-{run_['page_size']}") == len(task_ids), counts
        for name, ids in samples.items():
            assert counts.get(f"per-task-{name}", 0) == len(ids), counts
        if not args.keep_project:
            studio.delete_project(project)
    n = len(task_ids)
    bulk_seconds = bulk_runs[0]["seconds"]
    per_task_ms = {}
    scaled = {}
    for name, values in per_task.items():
        half = halves[name]
        mean = float(np.mean(values))
        scaled[name] = mean * n
        per_task_ms[name] = {
            **benchutil.summary(values),
            "mean_before_bulk_ms": round(1000 * float(np.mean(values[:half])), 2) if half else None,
            "mean_after_bulk_ms": round(1000 * float(np.mean(values[half:])), 2),
        }
    return {
        "tasks": n,
        "boxes_per_prediction": 3,
        "import_tasks_seconds": round(import_seconds, 2),
        "page_size": page_size,
        "bulk_seconds": bulk_seconds,
        "bulk": bulk_runs,
        "per_task_samples": {name: len(ids) for name, ids in samples.items()},
        "per_task_ms": per_task_ms,
        "per_task_seconds_scaled": {name: round(value, 1) for name, value in scaled.items()},
        # The target's figure: one request per task (the create-one-prediction API, the faster per-task way)
        # scaled to N, against the bulk push in pages of PUSH_PAGE_SIZE.
        "ratio": round(scaled["create_one"] / bulk_seconds, 1),
        "ratio_vs_import_one": round(scaled["import_one"] / bulk_seconds, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def measure_clusters(url: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """QUEUE_CLUSTERS: what storing each prediction's ``cluster`` costs against the plain bulk push of N
    predictions. The bulk route drops ``cluster``, so the two correct ways are timed: one
    ``POST /api/predictions/`` per prediction with its cluster (the product's way,
    ``ls_backend.jobs.push_predictions``), and the bulk push followed by one listing of the project's
    predictions (their ids) and one ``PATCH /api/predictions/{id}/`` per prediction. POSTs and PATCHes are
    timed in turns on a sample and scaled to N (the bulk pushes and the listing are timed whole); the stored
    clusters are read back."""
    from ls_backend.jobs import push_predictions

    label_config, schema = read_label_config("synthetic_detection")
    class_names = class_names_from_schema(schema)
    page_size = args.page_size or Settings.from_env({}).push_page_size
    rng = np.random.default_rng(0)
    with StudioClient(url, token, timeout=300) as studio:
        project, task_ids = project_with_tasks(studio, "bench clusters", label_config, schema, args.tasks)

        def payloads(ids: list[int], version: str) -> list[dict[str, Any]]:
            out = []
            for task_id in ids:
                prediction = make_prediction(rng, len(class_names))
                body, _ = prediction_payload(prediction, schema, class_names, version, image_size=IMAGE_SIZE)
                out.append({"task": task_id, **body, "cluster": int(task_id % 8)})
            return out

        def bulk(version: str) -> float:
            plain = [{k: v for k, v in p.items() if k != "cluster"} for p in payloads(task_ids, version)]
            began = time.perf_counter()
            for start in range(0, len(plain), page_size):
                studio.import_predictions(project, plain[start : start + page_size])
            return time.perf_counter() - began

        load_before = benchutil.load_average()
        plain_seconds = bulk("plain")
        sample = [int(t) for t in rng.choice(task_ids, size=min(args.sample, len(task_ids)), replace=False)]
        patch_bulk_seconds = bulk("patch-cluster")
        began = time.perf_counter()
        listed = studio.list_predictions(project_id=project)
        list_seconds = time.perf_counter() - began
        to_patch = {int(p["task"]): int(p["id"]) for p in listed if p["model_version"] == "patch-cluster"}
        # POSTs and PATCHes take turns, so both see the same load of a shared machine.
        half = len(sample) // 2
        bodies = iter(payloads(sample, "post-cluster"))
        patches = iter(sample[:half])
        timed = benchutil.interleaved(
            {
                "post": lambda: push_predictions(studio, project, [next(bodies)]),
                "patch": lambda: (t := next(patches), studio.update_prediction(to_patch[t], cluster=t % 8)),
            },
            half,
            warmup=0,
        )
        post_seconds, patch_seconds = timed["post"], timed["patch"]
        push_predictions(studio, project, list(bodies))  # the rest of both samples, untimed
        for task_id in sample[half:]:
            studio.update_prediction(to_patch[task_id], cluster=task_id % 8)
        load_after = benchutil.load_average()
        everything = studio.list_predictions(project_id=project)
        stored = {(p["model_version"], int(p["task"])): p["cluster"] for p in everything}
        for version in ("post-cluster", "patch-cluster"):
            kept = [stored[(version, t)] == t % 8 for t in sample]
            assert all(kept), f"{version}: {kept.count(False)} clusters not stored"
        assert all(stored[("plain", t)] is None for t in sample)  # the bulk route drops it
        if not args.keep_project:
            studio.delete_project(project)
    n = len(task_ids)
    post_scaled = float(np.mean(post_seconds)) * n
    patch_scaled = patch_bulk_seconds + list_seconds + float(np.mean(patch_seconds)) * n
    return {
        "tasks": n,
        "page_size": page_size,
        "sample": len(sample),
        "bulk_seconds": round(plain_seconds, 2),
        "post_ms": benchutil.summary(post_seconds),
        "post_seconds_scaled": round(post_scaled, 1),
        "bulk_then_patch": {
            "bulk_seconds": round(patch_bulk_seconds, 2),
            "list_seconds": round(list_seconds, 2),
            "listed_predictions": len(listed),
            "patch_sample": len(patch_seconds),
            "patch_ms": benchutil.summary(patch_seconds),
            "seconds_scaled": round(patch_scaled, 1),
        },
        "cheapest": "post" if post_scaled <= patch_scaled else "bulk_then_patch",
        "ratio_to_bulk": round(min(post_scaled, patch_scaled) / plain_seconds, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def run_clusters(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure_clusters` on a Label Studio started as the product starts it."""
    with tempfile.TemporaryDirectory(prefix="bench-push-clusters-") as tmp, benchutil.label_studio(
        args.studio_url, args.studio_token, args.files_root, Path(tmp) / "a"
    ) as (url, token, _):
        figures = measure_clusters(url, token, args)
    return {
        "device": benchutil.device_name(),
        "quick": args.quick,
        "label_studio": "1.23.2, SQLite, loopback, as ls_backend.studio_server starts it",
        **figures,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Label Studio with its defaults, then as the product starts it (ls_backend.studio_server: efficient
    prediction import on)."""
    result: dict[str, Any] = {
        "device": benchutil.device_name(),
        "quick": args.quick,
        "ratio_target": TARGET_RATIO,
    }
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        # Label Studio's own default first (the flag off), then as ls_backend.studio_server starts it.
        defaults = {EFFICIENT_IMPORT_FLAG: "false"}
        with benchutil.label_studio(
            args.studio_url, args.studio_token, args.files_root, Path(tmp) / "a", env=defaults
        ) as (url, token, _):
            default = measure(
                url,
                token,
                args,
                create_sample=args.sample,
                import_sample=args.import_sample,
                extra_pages=args.extra_page_sizes,
            )
        result["label_studio"] = "1.23.2, SQLite, loopback, Label Studio's defaults (efficient import off)"
        result.update(default)
        if args.efficient_variant:
            env = {EFFICIENT_IMPORT_FLAG: "true"}
            with benchutil.label_studio(None, None, None, Path(tmp) / "b", env=env) as (url, token, _):
                efficient = measure(
                    url,
                    token,
                    args,
                    create_sample=max(2, args.sample // 5),
                    import_sample=args.import_sample,
                    extra_pages=[],
                )
            result["efficient_import"] = {"label_studio_env": env, **efficient}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, default=None, help="N (default 10,000; 1,000 with --quick)")
    parser.add_argument("--sample", type=int, default=None, help="per-task sample (default 500; 100 quick)")
    parser.add_argument("--import-sample", type=int, default=None, help="one-item import sample (default 6)")
    parser.add_argument(
        "--extra-page-sizes", type=int, nargs="*", default=[], help="more bulk runs with these page sizes"
    )
    parser.add_argument("--page-size", type=int, default=None, help="default: PUSH_PAGE_SIZE's default")
    parser.add_argument("--keep-project", action="store_true")
    parser.add_argument(
        "--no-efficient-variant",
        dest="efficient_variant",
        action="store_false",
        help=f"skip the second Label Studio started with {EFFICIENT_IMPORT_FLAG}=true",
    )
    parser.add_argument(
        "--clusters",
        action="store_true",
        help="only QUEUE_CLUSTERS' cost: the key `push_clusters` (per-prediction POST vs bulk + PATCH)",
    )
    parser.add_argument("--out", type=Path, default=None)
    benchutil.add_studio_arguments(parser)
    args = parser.parse_args(argv)
    args.tasks = args.tasks or (1000 if args.quick else 10_000)
    args.sample = args.sample or (100 if args.quick else 500)
    args.import_sample = args.import_sample or 6
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.clusters:
        figures = run_clusters(args)
        out = benchutil.results_path(figures["device"], quick=args.quick, out=args.out)
        benchutil.write_section(out, "push_clusters", figures)
        after = figures["bulk_then_patch"]
        benchutil.print_table(
            f"Predictions with their cluster (QUEUE_CLUSTERS), {figures['tasks']} tasks "
            f"(loadavg {figures['loadavg_before']} -> {figures['loadavg_after']})",
            [
                [f"bulk, pages of {figures['page_size']} (cluster dropped)", figures["bulk_seconds"], ""],
                [
                    f"one POST per prediction ({figures['post_ms']['n']} timed, scaled)",
                    figures["post_seconds_scaled"],
                    figures["post_ms"]["mean_ms"],
                ],
                [
                    f"bulk + list ({after['list_seconds']} s) + one PATCH per prediction (scaled)",
                    after["seconds_scaled"],
                    after["patch_ms"]["mean_ms"],
                ],
            ],
            ["path", "seconds", "ms/request"],
        )
        print(f"\nwrote the `push_clusters` key of {out}")
        return
    result = run(args)
    out = benchutil.results_path(result["device"], quick=args.quick, out=args.out)
    benchutil.write_section(out, "push", result)
    variants = [("Label Studio as started by the product", result)]
    if "efficient_import" in result:
        variants.append((f"Label Studio with {EFFICIENT_IMPORT_FLAG}=true", result["efficient_import"]))
    for title, figures in variants:
        per = figures["per_task_ms"]
        scaled = figures["per_task_seconds_scaled"]
        rows = [
            [f"bulk, pages of {b['page_size']}", b["pages"], b["seconds"], b["page_seconds"]["mean_ms"]]
            for b in figures["bulk"]
        ]
        rows += [
            [
                f"one POST /api/predictions/ per task ({figures['per_task_samples']['create_one']} sampled)",
                figures["tasks"],
                scaled["create_one"],
                per["create_one"]["mean_ms"],
            ],
            [
                f"one 1-item import per task ({figures['per_task_samples']['import_one']} sampled, scaled)",
                figures["tasks"],
                scaled["import_one"],
                per["import_one"]["mean_ms"],
            ],
        ]
        benchutil.print_table(
            f"Priority push, {figures['tasks']} tasks, {title} "
            f"(loadavg {figures['loadavg_before']} -> {figures['loadavg_after']})",
            rows,
            ["path", "requests", "seconds", "ms/request"],
        )
        print(f"bulk is {figures['ratio']}x faster than one request per task (target >= {TARGET_RATIO:.0f}x)")
    print(f"\nwrote the `push` key of {out}")


if __name__ == "__main__":
    main()
