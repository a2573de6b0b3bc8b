"""Pool scoring on RQ workers: one worker against two, on one sharded pool of a real Label Studio project.

The stack is the product's: a Label Studio project whose tasks reference generated pairs through a local-files
storage, the real Redis at 127.0.0.1:6379 with a queue of its own, and `rgbt-al worker` processes
(``ls_backend.processes.Worker``). The ``score_pool`` job lists the unlabelled tasks, splits them into shards
of ``SCORE_SHARD_SIZE`` (one RQ job each), and a ``finalize_scoring`` job waits for every shard. Each shard
job fetches its images from Label Studio, scores them and pushes its predictions in bulk pages. Timed: from
enqueueing ``score_pool`` (workers already started and registered) to ``finalize_scoring`` finished. Each run
publishes its own model version (same weights) and starts with a cold image cache.

Two workers share the machine's cores (``OMP_NUM_THREADS`` = cores / workers each); on a 2-core machine that
also runs Label Studio, which serves every image, two workers may not be faster than one: reported as
measured. Also recorded: the resident memory (VmHWM / VmRSS) of every worker after its run.

    python benchmarks/bench_workers.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchutil
from redis import Redis

from ls_backend.admin import read_label_config, set_up_project, tasks_from_folder, write_synthetic_pairs
from ls_backend.convert import class_names_from_schema
from ls_backend.processes import Worker, child_env
from ls_backend.queues import RQRunner
from ls_backend.registry import ModelRegistry, ProjectInfo
from ls_backend.settings import Settings
from ls_backend.studio import StudioClient
from model.config import NetConfig
from model.network import ThreeBranchNet

REDIS_URL = os.environ.get("RGBT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_job(runner: RQRunner, job_id: str, timeout: float, workers: list[Worker]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = runner.job(job_id)
        if state is not None and state.status == "finished":
            return state.result or {}
        if state is not None and state.status in ("failed", "canceled", "stopped"):
            raise RuntimeError(f"job {job_id} {state.status}: {state.error}")
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s ({state})")
        time.sleep(0.2)


def wait_registered(runner: RQRunner, count: int, workers: list[Worker], timeout: float = 180.0) -> None:
    from rq import Worker as RQWorker

    deadline = time.monotonic() + timeout
    while len(RQWorker.all(queue=runner.queue)) < count:
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not register within {timeout:.0f} s")
        time.sleep(0.3)


def score_with(
    count: int, version: str, project: str, base_env: dict[str, str], root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One timed pool scoring with ``count`` workers."""
    from rq.job import Job

    threads = max(1, (os.cpu_count() or 2) // count)
    env = {
        **base_env,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "IMAGE_CACHE_DIR": str(root / f"cache-{count}"),  # every run starts cold
    }
    settings = Settings.from_env(env)
    runner = RQRunner(settings)
    workers = [
        Worker(env=child_env(env), log_path=root / f"worker-{count}-{i}.log").start() for i in range(count)
    ]
    try:
        wait_registered(runner, count, workers)
        load_before = benchutil.load_average()
        started = time.perf_counter()
        pool_job = runner.enqueue("ls_backend.jobs.score_pool", project, version, description="bench")
        pooled = wait_job(runner, pool_job, args.timeout, workers)
        if pooled.get("status") != "sharded":
            raise RuntimeError(f"the pool was not sharded: {pooled}")
        final = wait_job(runner, pooled["finalize"], args.timeout, workers)
        seconds = time.perf_counter() - started
        load_after = benchutil.load_average()
        shards = []
        for shard_id in pooled["shards"]:
            job = Job.fetch(shard_id, connection=runner.connection)
            result = job.return_value() or {}
            shards.append(
                {"worker": job.worker_name, "scored": result.get("scored"), "seconds": result.get("seconds")}
            )
        memory = [benchutil.memory_of(worker.pid) for worker in workers]
    finally:
        for worker in workers:
            worker.stop()
        _clean_queue(runner, settings.queue_name)
    by_worker: dict[str, int] = {}
    for shard in shards:
        by_worker[str(shard["worker"])] = by_worker.get(str(shard["worker"]), 0) + 1
    return {
        "workers": count,
        "threads_per_worker": threads,
        "seconds": round(seconds, 2),
        "pairs_per_s": round(pooled["tasks"] / seconds, 2),
        "tasks": pooled["tasks"],
        "shards": len(shards),
        "shards_per_worker": sorted(by_worker.values(), reverse=True),
        "shard_seconds": [s["seconds"] for s in shards],
        "scored": sum(int(s["scored"] or 0) for s in shards),
        "finalize": final,
        "worker_memory": memory,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def _clean_queue(runner: RQRunner, queue: str) -> None:
    """Remove the run's jobs and the queue's keys from the shared Redis."""
    from rq.job import Job

    connection: Redis = runner.connection
    for job_id in [state.id for state in runner.jobs(limit=10_000)]:
        with contextlib.suppress(Exception):  # best effort: a job may already be gone
            Job.fetch(job_id, connection=connection).delete()
    keys = list(connection.scan_iter(f"*{queue}*", count=1000))
    if keys:
        connection.delete(*keys)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not Redis.from_url(REDIS_URL).ping():
        raise SystemExit(f"Redis does not answer at {REDIS_URL}")
    size = tuple(args.size)
    label_config, schema = read_label_config("synthetic_detection")
    class_names = class_names_from_schema(schema)
    with (
        tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp,
        benchutil.label_studio(args.studio_url, args.studio_token, args.files_root, Path(tmp)) as (
            url,
            token,
            files_root,
        ),
        StudioClient(url, token, timeout=120) as studio,
    ):
        root = Path(tmp)
        pairs_dir = Path(files_root) / f"bench-workers-{uuid.uuid4().hex[:8]}"
        write_synthetic_pairs(pairs_dir, args.tasks, seed=5, image_size=size)
        setup = set_up_project(
            studio,
            title=f"bench workers {time.time():.0f}",
            label_config=label_config,
            tasks=tasks_from_folder(pairs_dir, schema, Path(files_root)),
            storage_folder=pairs_dir,
        )
        project = str(setup.project_id)
        model_dir = root / "models"
        registry = ModelRegistry(model_dir)
        registry.save_project(ProjectInfo(project=project, label_config=label_config))
        model = ThreeBranchNet(NetConfig(class_names=class_names, width=args.width, image_size=size))
        base_env = {
            "LABEL_STUDIO_URL": url,
            "LABEL_STUDIO_API_KEY": token,
            "MODEL_DIR": str(model_dir),
            "MODEL_WIDTH": str(args.width),
            "MODEL_IMAGE_SIZE": f"{size[0]}x{size[1]}",
            "REDIS_URL": REDIS_URL,
            "RQ_QUEUE": f"bench-{uuid.uuid4().hex[:10]}",
            "SCORE_SHARD_SIZE": str(args.shard_size),
            "SCORE_BATCH_SIZE": str(args.batch_size),
            "JOB_MAX_RETRIES": "0",
            "DEVICE": args.device,
            "LOG_LEVEL": "WARNING",
        }
        runs = []
        for count in args.workers:
            version = registry.publish(project, model).version
            result = score_with(count, version, project, base_env, root, args)
            counts = studio.model_versions(int(project))
            result["predictions_in_label_studio"] = counts.get(version, 0)
            if result["predictions_in_label_studio"] != args.tasks:
                raise RuntimeError(f"{version}: {counts.get(version)} predictions for {args.tasks} tasks")
            runs.append(result)
        if not args.keep_project:
            studio.delete_project(int(project))
    base = runs[0]["seconds"]
    return {
        "device": benchutil.device_name(args.device),
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "tasks": args.tasks,
        "image_size": list(size),
        "width": args.width,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "runs": runs,
        "speedup": {str(r["workers"]): round(base / r["seconds"], 2) for r in runs},
        "note": "Label Studio (serving every image), Redis and the workers share the machine's cores",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, default=None, help="pool size (default 600; 200 quick)")
    parser.add_argument(
        "--shard-size", type=int, default=None, help="SCORE_SHARD_SIZE (default 100; 50 quick)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="SCORE_BATCH_SIZE")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 80), metavar=("H", "W"))
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--keep-project", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    benchutil.add_studio_arguments(parser)
    args = parser.parse_args(argv)
    args.tasks = args.tasks or (200 if args.quick else 600)
    args.shard_size = args.shard_size or (50 if args.quick else 100)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    out = benchutil.results_path(result["device"], quick=args.quick, out=args.out)
    benchutil.write_section(out, "workers", result)
    benchutil.print_table(
        f"Pool scoring on RQ workers: {result['tasks']} tasks at {result['image_size'][0]}x"
        f"{result['image_size'][1]}, width {result['width']}, shards of {result['shard_size']}",
        [
            [
                r["workers"],
                r["threads_per_worker"],
                r["seconds"],
                r["pairs_per_s"],
                r["shards_per_worker"],
                result["speedup"][str(r["workers"])],
                f"{r['loadavg_before']} -> {r['loadavg_after']}",
            ]
            for r in result["runs"]
        ],
        ["workers", "threads each", "seconds", "pairs/s", "shards per worker", "speedup", "loadavg"],
    )
    print(f"\nwrote the `workers` key of {out}")


if __name__ == "__main__":
    main()
