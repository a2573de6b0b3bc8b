"""How fast the paths that must answer at once answer: `/setup`, annotation webhooks, and the synthetic
generator. The tests check what these paths do; their speed is measured here, never asserted by a test.

* `/setup`: Label Studio gives it 3 seconds; it names the current version without loading a model (the
  published checkpoint is made unreadable, so a `/setup` that loaded it would fail).
* `/webhook` (``ANNOTATION_CREATED``, counted or enqueued): the request only counts and enqueues; training
  runs on the job runner.
* ``SyntheticRGBT``: one pair at 64x80 (tests, smoke runs) and at 512x640 (the paper's size).

The app is ``create_app`` with the embedded job runner, called through Flask's test client (no HTTP server:
what is timed is the route). Targets: `/setup` and webhooks p99 < 1 s; generation < 20 ms per small pair and
< 200 ms per large pair.

    python benchmarks/bench_fast_paths.py          # writes "fast_paths" into results/<device>.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil

from ls_backend.admin import read_label_config
from ls_backend.app import create_app
from ls_backend.backend import RGBTBackend
from ls_backend.queues import ThreadRunner
from ls_backend.settings import Settings
from model.config import NetConfig
from model.data.synthetic import SYNTH_CLASSES, SyntheticRGBT
from model.network import ThreeBranchNet

PROJECT = 7
ANSWER_TARGET_S = 1.0
SMALL_TARGET_S, LARGE_TARGET_S = 0.02, 0.2


def _timed(call: Any, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def routes(root: Path, repeats: int) -> dict[str, Any]:
    settings = Settings.from_env(
        {},
        model_dir=root / "models",
        model_width=0.0625,
        model_image_size=(64, 80),
        device="cpu",
        train_every_n_annotations=1_000_000,  # webhooks only count: the route, not a training job, is timed
        log_level="WARNING",
    )
    backend = RGBTBackend(settings, runner=ThreadRunner(settings))
    client = create_app(settings, backend).test_client()
    config, _ = read_label_config("synthetic_detection")
    model = ThreeBranchNet(NetConfig(class_names=SYNTH_CLASSES, width=0.0625, image_size=(64, 80)))
    version = backend.registry.publish(str(PROJECT), model, num_train_tasks=2).version
    backend.registry.checkpoint_path(str(PROJECT), version).write_bytes(b"not a checkpoint")
    setup_body = {"project": f"{PROJECT}.1700000000", "schema": config, "extra_params": {}}
    webhook_body = {"action": "ANNOTATION_CREATED", "project": {"id": PROJECT, "label_config": config}}

    def setup() -> None:
        answer = client.post("/setup", json=setup_body)
        assert answer.status_code == 200 and answer.get_json() == {"model_version": version}, answer.data

    def webhook() -> None:
        answer = client.post("/webhook", json=webhook_body)
        assert answer.status_code == 200 and answer.get_json()["status"] == "counted", answer.data

    setup(), webhook()  # first requests: Flask's lazy set-up
    return {
        "setup": benchutil.summary(_timed(setup, repeats)),
        "webhook": benchutil.summary(_timed(webhook, repeats)),
        "target_s": ANSWER_TARGET_S,
    }


def generation(small: int, large: int) -> dict[str, Any]:
    sets = {"64x80": (SyntheticRGBT(small + 1, seed=0, image_size=(64, 80)), SMALL_TARGET_S)}
    sets["512x640"] = (SyntheticRGBT(large + 1, seed=0, image_size=(512, 640)), LARGE_TARGET_S)
    figures = {}
    for name, (data, target) in sets.items():
        data[0]  # warm-up
        started = time.perf_counter()
        for i in range(1, len(data)):  # type: ignore[arg-type]
            data[i]
        per_pair = (time.perf_counter() - started) / (len(data) - 1)  # type: ignore[arg-type]
        figures[name] = {
            "pairs": len(data) - 1,  # type: ignore[arg-type]
            "ms_per_pair": round(per_pair * 1000, 2),
            "target_ms": target * 1000,
        }
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    load_before = benchutil.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-fast-") as tmp:
        result = routes(Path(tmp), repeats=20 if args.quick else 100)
    result["generation"] = generation(small=20 if args.quick else 60, large=2 if args.quick else 5)
    result["loadavg_before"], result["loadavg_after"] = load_before, benchutil.load_average()
    out = benchutil.results_path(benchutil.device_name("cpu"), quick=args.quick, out=args.out)
    benchutil.write_section(out, "fast_paths", result)
    rows = [[route, result[route]["p50_ms"], result[route]["p99_ms"]] for route in ("setup", "webhook")]
    benchutil.print_table("Routes that answer at once (p99 < 1 s)", rows, ["route", "p50 ms", "p99 ms"])
    rows = [[size, g["ms_per_pair"], g["target_ms"]] for size, g in result["generation"].items()]
    benchutil.print_table("Synthetic generation", rows, ["size", "ms per pair", "target ms"])
    print(f"results in {out}")


if __name__ == "__main__":
    main()
