"""`/predict` latency through gunicorn against the bare model call, side by side in one run.

A real `rgbt-al serve` (``ls_backend.processes.BackendServer``: gunicorn, one worker process, embedded jobs)
serves a published model version; task images are PNG files under ``LOCAL_FILES_ROOT``. Each round sends one
`/predict` request for one pair, then makes the bare call ``Predictor.predict`` on the same pair (already
decoded, same weights, same thread count) in this process, so both see the same machine load. Also timed: the
image fetch and decode alone (``ImageFetcher.load_pair``), and one request with several tasks (they go through
the network as one batch) against the bare call on the same pairs.

HTTP overhead = (p50 of `/predict` - p50 of the bare call) / p50 of the bare call; the target is < 10%.
Also recorded: the resident memory (VmHWM, VmRSS) of the server's processes after loading the model and
serving.

    python benchmarks/bench_predict.py            # width 0.25 at 256x320 on CPU (the size is recorded)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchutil
import torch

from ls_backend.admin import read_label_config, write_synthetic_pairs
from ls_backend.convert import class_names_from_schema
from ls_backend.images import ImageFetcher
from ls_backend.processes import BackendServer, child_env
from ls_backend.registry import ModelRegistry, ProjectInfo
from ls_backend.studio_server import free_port
from model.config import NetConfig
from model.data.io import load_rgb, load_thermal
from model.device import select_device
from model.inference import Predictor
from model.network import ThreeBranchNet

PROJECT = "1"
TARGET_OVERHEAD = 0.10
SCORE_THRESHOLD = 0.3


def import_baseline() -> dict[str, Any]:
    """Peak RSS of a process that only imports the server's modules (torch, the app): the floor."""
    code = (
        "import ls_backend.app, model.network, pathlib;"
        "print(next(l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmHWM')).split()[1])"
    )
    kib = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {
        "what": "python -c 'import ls_backend.app, model.network'",
        "vmhwm_mib": round(int(kib) / 1024, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = select_device(args.device)
    size = tuple(args.size)
    label_config, schema = read_label_config("synthetic_detection")
    class_names = class_names_from_schema(schema)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        files = root / "files"
        pairs_dir = files / "pairs"
        written = write_synthetic_pairs(pairs_dir, args.pairs, seed=3, image_size=size)
        names = [w.name for w in written]
        tasks = [
            {
                "id": i + 1,
                "data": {
                    schema.rgb.value_key: str(pairs_dir / "rgb" / f"{name}.png"),
                    schema.thermal.value_key: str(pairs_dir / "thermal" / f"{name}.png"),
                },
            }
            for i, name in enumerate(names)
        ]
        # One model, published for the server and used as is for the bare call: same weights, same work.
        torch.manual_seed(0)
        config = NetConfig(class_names=class_names, width=args.width, image_size=size)
        model = ThreeBranchNet(config).eval()
        registry = ModelRegistry(root / "models")
        registry.save_project(ProjectInfo(project=PROJECT, label_config=label_config))
        version = registry.publish(PROJECT, model).version
        threads = torch.get_num_threads()
        env = child_env(
            {
                "MODEL_DIR": str(root / "models"),
                "LOCAL_FILES_ROOT": str(files),
                "IMAGE_CACHE_DIR": str(root / "cache"),
                "DEVICE": str(device),
                "MODEL_WIDTH": str(args.width),
                "MODEL_IMAGE_SIZE": f"{size[0]}x{size[1]}",
                "PREDICT_BATCH_SIZE": str(max(8, args.batch_tasks)),
                "PREDICTION_SCORE_THRESHOLD": str(SCORE_THRESHOLD),
                "LOG_LEVEL": "WARNING",
                # The same intra-op threads as the bare call in this process (child_env would halve them).
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
            }
        )
        env.pop("REDIS_URL", None)
        predictor = Predictor(model, device, score_threshold=SCORE_THRESHOLD)
        fetcher = ImageFetcher(None, local_root=files, cache_dir=None)
        decoded = [
            (load_rgb(pairs_dir / "rgb" / f"{n}.png"), load_thermal(pairs_dir / "thermal" / f"{n}.png"))
            for n in names
        ]
        server = BackendServer(free_port(), env=env, log_path=root / "backend.log", threads=4)
        with server, server.session() as session, ThreadPoolExecutor(1) as side:
            server.wait_ready(timeout=120)

            def body(chosen: list[dict[str, Any]]) -> dict[str, Any]:
                return {
                    "tasks": chosen,
                    "project": f"{PROJECT}.1700000000",
                    "label_config": label_config,
                    "params": {"context": None},
                }

            def post(chosen: list[dict[str, Any]]) -> dict[str, Any]:
                response = session.post(server.url + "/predict", json=body(chosen), timeout=300)
                response.raise_for_status()
                answer = response.json()
                assert answer["model_version"] == version, answer
                assert len(answer["results"]) == len(chosen)
                return answer

            counter = {"i": 0}

            def pick() -> int:
                counter["i"] += 1
                return (counter["i"] // 4) % len(tasks)  # the four calls of a round use the same pair

            calls = {
                "http_predict": lambda: post([tasks[pick()]]),
                "bare_predict": lambda: predictor.predict([decoded[pick()]]),
                # The same call from a thread that is not the main one, as gunicorn's request threads make it.
                "bare_predict_in_thread": lambda: side.submit(predictor.predict, [decoded[pick()]]).result(),
                "fetch_decode": lambda: fetcher.load_pair(tasks[pick()]["data"], schema, 0),
            }
            load_before = benchutil.load_average()
            samples = benchutil.interleaved(calls, args.requests, warmup=2)
            load_mid = benchutil.load_average()
            batch = list(range(min(args.batch_tasks, len(tasks))))
            batch_calls = {
                "http_predict_batch": lambda: post([tasks[i] for i in batch]),
                "bare_predict_batch": lambda: predictor.predict(
                    [decoded[i] for i in batch], batch_size=len(batch)
                ),
            }
            batch_samples = benchutil.interleaved(batch_calls, args.batch_requests, warmup=1)
            load_after = benchutil.load_average()
            memory = benchutil.group_memory(server.pid)
            server.check_alive()
    single = {name: benchutil.summary(values) for name, values in samples.items()}
    baseline = import_baseline()
    batched = {name: benchutil.summary(values) for name, values in batch_samples.items()}
    http, bare = single["http_predict"]["p50_ms"], single["bare_predict"]["p50_ms"]
    http_b, bare_b = batched["http_predict_batch"]["p50_ms"], batched["bare_predict_batch"]["p50_ms"]
    return {
        "device": benchutil.device_name(args.device),
        "quick": args.quick,
        "model": {"width": args.width, "image_size": list(size), "classes": list(class_names)},
        "image_size_on_disk": list(size),
        "torch_threads": threads,
        "server": "gunicorn, 1 worker process, 4 threads, embedded jobs",
        "one_pair": single,
        "overhead_ratio": round((http - bare) / bare, 4),
        "overhead_ms": round(http - bare, 2),
        "overhead_ratio_vs_bare_in_thread": round(
            (http - single["bare_predict_in_thread"]["p50_ms"]) / single["bare_predict_in_thread"]["p50_ms"],
            4,
        ),
        "overhead_target": TARGET_OVERHEAD,
        "batch_tasks": len(batch),
        "batched": batched,
        "batched_overhead_ratio": round((http_b - bare_b) / bare_b, 4),
        "server_memory": memory,
        "import_baseline_memory": baseline,
        "loadavg_before": load_before,
        "loadavg_mid": load_mid,
        "loadavg_after": load_after,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--requests", type=int, default=None, help="timed one-pair rounds")
    parser.add_argument("--batch-tasks", type=int, default=8, help="tasks in the batched request")
    parser.add_argument("--batch-requests", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=8, help="distinct pairs the requests rotate over")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    gpu = select_device(args.device).type == "cuda"
    args.size = tuple(args.size or ((512, 640) if gpu else ((128, 160) if args.quick else (256, 320))))
    args.width = args.width or (1.0 if gpu else 0.25)
    args.requests = args.requests or (10 if args.quick else 30)
    args.batch_requests = args.batch_requests or (2 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    out = benchutil.results_path(result["device"], quick=args.quick, out=args.out)
    benchutil.write_section(out, "predict_latency", result)
    rows = [
        [name, s["n"], s["p50_ms"], s["p99_ms"], s["mean_ms"]]
        for name, s in {**result["one_pair"], **result["batched"]}.items()
    ]
    m = result["model"]
    benchutil.print_table(
        f"/predict latency, width {m['width']} at {m['image_size'][0]}x{m['image_size'][1]} "
        f"(loadavg {result['loadavg_before']} -> {result['loadavg_after']})",
        rows,
        ["call", "n", "p50 ms", "p99 ms", "mean ms"],
    )
    print(
        f"HTTP overhead: {result['overhead_ms']} ms = {100 * result['overhead_ratio']:.1f}% of the bare call "
        f"(target < {100 * TARGET_OVERHEAD:.0f}%); batched: {100 * result['batched_overhead_ratio']:.1f}%; "
        f"against the bare call in a thread: {100 * result['overhead_ratio_vs_bare_in_thread']:.1f}%"
    )
    benchutil.print_table(
        "Server memory",
        [
            [r["pid"], r.get("vmhwm_mib"), r.get("vmrss_mib"), r.get("command", "")]
            for r in result["server_memory"]
        ],
        ["pid", "VmHWM MiB", "VmRSS MiB", "command"],
    )
    print(f"imports alone: VmHWM {result['import_baseline_memory']['vmhwm_mib']} MiB")
    print(f"\nwrote the `predict_latency` key of {out}")


if __name__ == "__main__":
    main()
