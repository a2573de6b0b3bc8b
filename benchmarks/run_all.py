"""Run every benchmark, merge their figures into ``benchmarks/results/<device>.json`` and rewrite the README's
performance table (between ``<!-- perf-results:start -->`` and ``<!-- perf-results:end -->``).

    python benchmarks/run_all.py                  # everything, full sizes (about 20 minutes on 2 CPU cores)
    python benchmarks/run_all.py --quick          # small sizes: results/<device>-quick.json, README untouched
    python benchmarks/run_all.py --only push predict
    python benchmarks/run_all.py --readme-only    # rebuild the README table from results/*.json

Each benchmark runs as its own process (``benchmarks/bench_*.py``, each also runnable alone); one Label Studio
is started here and shared by the benchmarks that need one. The README table lists every full (not quick)
results file in ``benchmarks/results/``, one per machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchutil


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    key: str
    needs_studio: bool = False
    takes_device: bool = True


BENCHES = (
    Bench("scoring", "bench_scoring.py", "scoring"),
    Bench("predict", "bench_predict.py", "predict_latency"),
    Bench("push", "bench_push.py", "push", needs_studio=True, takes_device=False),
    Bench("training", "bench_training.py", "training"),
    Bench("workers", "bench_workers.py", "workers", needs_studio=True),
    Bench("fast-paths", "bench_fast_paths.py", "fast_paths", takes_device=False),
)
NAMES = tuple(b.name for b in BENCHES)
START, END = "<!-- perf-results:start -->", "<!-- perf-results:end -->"
README = benchutil.REPO / "README.md"


# ------------------------------------------------------------------------------------------ running
def run_benches(args: argparse.Namespace, out: Path) -> int:
    selected = [b for b in BENCHES if b.name in args.only and b.name not in args.skip]
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": benchutil.machine_info(),
        "omp_wait_policy": benchutil.os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_before": benchutil.load_average(),
        "benchmarks": {},
    }
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-studio-") as tmp:
        studio_args: list[str] = []
        context = None
        if any(b.needs_studio for b in selected):
            context = benchutil.label_studio(None, None, None, Path(tmp))
            url, token, files_root = context.__enter__()
            studio_args = ["--studio-url", url, "--studio-token", token, "--files-root", str(files_root)]
        try:
            for bench in selected:
                command = [sys.executable, str(benchutil.BENCH_DIR / bench.script), "--out", str(out)]
                if args.quick:
                    command.append("--quick")
                if bench.takes_device and args.device:
                    command += ["--device", args.device]
                if bench.needs_studio:
                    command += studio_args
                print(f"\n=== {bench.name}: {' '.join(command[1:2] + command[2:4])} ===", flush=True)
                began = time.perf_counter()
                code = subprocess.call(command, cwd=benchutil.REPO)
                seconds = time.perf_counter() - began
                summary["benchmarks"][bench.name] = {"seconds": round(seconds, 1), "exit_code": code}
                if code != 0:
                    failures += 1
                    print(f"!!! {bench.name} failed (exit {code})", flush=True)
        finally:
            if context is not None:
                context.__exit__(None, None, None)
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    summary["loadavg_after"] = benchutil.load_average()
    previous = benchutil.read_results(out).get("run", {})
    if previous and set(summary["benchmarks"]) != set(NAMES):
        # A partial run: keep the other benchmarks' last timings.
        summary["benchmarks"] = {**previous.get("benchmarks", {}), **summary["benchmarks"]}
    benchutil.write_section(out, "run", summary)
    print(f"\nall done in {summary['total_seconds']:.0f} s; results in {out}", flush=True)
    return failures


# ------------------------------------------------------------------------------------------ README
def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def _size(values: list[int] | tuple[int, ...]) -> str:
    return f"{values[1]}x{values[0]}"  # width x height, as image sizes are usually written


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, figure, target, met?) rows from one results file."""
    rows: list[tuple[str, str, str, str]] = []
    scoring = results.get("scoring", {})
    t = scoring.get("throughput")
    if t:
        gpu = t.get("bf16_peak_tflops") is not None or t.get("precision") != "fp32"
        rows.append(
            (
                f"Pool scoring, {_size(t['image_size'])} width {t['width']}: product path "
                f"(batch {t['batch_size']}, {t['precision']}, {t['memory_layout']}) vs naive "
                "(per pair, fp32, 3 networks = 4 trunk passes)",
                f"{t['product_pairs_per_s']:.3g} vs {t['naive_pairs_per_s']:.3g} pairs/s = "
                f"**{t['speedup']}x**",
                f">= {t['speedup_target']:g}x",
                _yes(t["speedup"] >= t["speedup_target"]),
            )
        )
        if gpu:
            target = t.get("h100_target_pairs_per_s", 1000)
            is_h100 = "H100" in str(scoring.get("machine", {}).get("gpu", ""))
            rows.append(
                (
                    "Pool scoring on the GPU, pairs/s (bf16)",
                    f"{t['product_pairs_per_s']:.0f} pairs/s, {t['achieved_tflops']:.0f} TFLOP/s = "
                    f"{100 * (t['fraction_of_peak'] or 0):.0f}% of bf16 peak "
                    f"({t['gflops_per_pair']} GFLOP/pair)",
                    f">= {target:,.0f} pairs/s on an H100",
                    _yes(t["product_pairs_per_s"] >= target) if is_h100 else "n/a (not an H100)",
                )
            )
        else:
            rows.append(
                (
                    "Pool scoring on an H100, 640x512 width 1.0, bf16",
                    "not measured: no GPU on this machine (`make bench` on a GPU machine adds its own table)",
                    f">= {t.get('h100_target_pairs_per_s', 1000):,.0f} pairs/s",
                    "n/a",
                )
            )
            gemm = t.get("measured_gemm_peak")
            rows.append(
                (
                    "Pool scoring compute rate"
                    + (f" against a measured {gemm['dtype']} GEMM peak" if gemm else ""),
                    f"{t['achieved_tflops'] * 1000:.0f} GFLOP/s ({t['gflops_per_pair']} GFLOP/pair)"
                    + (
                        f" vs {gemm['gflops']:.0f} GFLOP/s ({gemm['matrix']}^2 matmul, {gemm['threads']} "
                        f"threads) = {100 * t['fraction_of_measured_peak']['product']:.0f}% of it"
                        if gemm
                        else ""
                    ),
                    "-",
                    "n/a",
                )
            )
        if "onnxruntime_pairs_per_s" in t:
            rows.append(
                (
                    f"Pool scoring, {_size(t['image_size'])}: onnxruntime engine (the network exported to "
                    "ONNX, INFERENCE_ENGINE=onnxruntime) vs naive, and vs the torch product path",
                    f"{t['onnxruntime_pairs_per_s']:.3g} pairs/s = **{t['onnxruntime_speedup']}x** naive, "
                    f"{t['onnxruntime_vs_torch']}x torch",
                    f">= {t['speedup_target']:g}x",
                    _yes(t["onnxruntime_speedup"] >= t["speedup_target"]),
                )
            )
        if "product_with_decode_pairs_per_s" in t:
            rows.append(
                (
                    "Pool scoring with the user-facing boxes decoded (NMS per pair), as scoring jobs run it",
                    f"{t['product_with_decode_pairs_per_s']:.3g} pairs/s",
                    "-",
                    "n/a",
                )
            )
        if "default_layout_gain" in t:
            rows.append(
                (
                    f"Memory layout: {t['memory_layout']} (default) vs {t['other_layout']}",
                    f"{t['product_pairs_per_s']:.3g} vs {t['other_layout_pairs_per_s']:.3g} pairs/s = "
                    f"{t['default_layout_gain']}x",
                    "-",
                    "n/a",
                )
            )
    growth = scoring.get("pool_growth")
    if growth:
        per = ", ".join(
            f"{r['pairs'] // 1000 if r['pairs'] >= 1000 else r['pairs']}"
            f"{'k' if r['pairs'] >= 1000 else ''}: {r['ms_per_pair']:.2f}"
            for r in growth["pools"]
        )
        ratio = growth["largest_vs_smallest_time_per_pair"]
        rows.append(
            (
                f"Pool growth, {_size(growth['image_size'])} width {growth['width']} via `score_dataset`: "
                "ms per pair by pool size",
                f"{per} (largest / smallest = {ratio}x)",
                "linear (<= 1.25x)",
                _yes(ratio <= 1.25),
            )
        )
    p = results.get("predict_latency")
    if p:
        one, bare = p["one_pair"]["http_predict"], p["one_pair"]["bare_predict"]
        m = p["model"]
        rows.append(
            (
                f"`/predict`, one pair, through gunicorn (model width {m['width']} at "
                f"{_size(m['image_size'])}) vs bare `Predictor.predict`: p50 / p99",
                f"{one['p50_ms']:.0f} / {one['p99_ms']:.0f} ms vs {bare['p50_ms']:.0f} / "
                f"{bare['p99_ms']:.0f} ms: overhead {p['overhead_ms']:.1f} ms = "
                f"**{100 * p['overhead_ratio']:.1f}%** "
                f"({100 * p['overhead_ratio_vs_bare_in_thread']:.1f}% against the bare call from a thread, "
                "as gunicorn makes it)",
                f"< {100 * p['overhead_target']:.0f}% of model time",
                _yes(p["overhead_ratio"] < p["overhead_target"]),
            )
        )
        b = p["batched"]
        rows.append(
            (
                f"`/predict` with {p['batch_tasks']} tasks (one batch) vs bare: p50",
                f"{b['http_predict_batch']['p50_ms']:.0f} vs {b['bare_predict_batch']['p50_ms']:.0f} ms "
                f"({100 * p['batched_overhead_ratio']:.1f}%)",
                "-",
                "n/a",
            )
        )
    push = results.get("push")
    if push:
        variants = [("Label Studio 1.23.2 defaults (efficient-import flag off)", push)]
        if "efficient_import" in push:
            variants.append(
                ("Label Studio as the product starts it (efficient-import flag on)", push["efficient_import"])
            )
        for title, figures in variants:
            per = figures["per_task_ms"]["create_one"]
            rows.append(
                (
                    f"Priority push, {figures['tasks']:,} tasks, {title}: bulk (pages of "
                    f"{figures['page_size']}) vs one request per task (POST /api/predictions/, "
                    f"{figures['per_task_samples']['create_one']} sampled, scaled)",
                    f"{figures['bulk_seconds']:.1f} s vs "
                    f"{figures['per_task_seconds_scaled']['create_one']:,.0f} s "
                    f"({per['mean_ms']:.0f} ms/task) = **{figures['ratio']}x**",
                    f">= {push['ratio_target']:g}x",
                    _yes(figures["ratio"] >= push["ratio_target"]),
                )
            )
        pages = push["bulk"][0]
        rows.append(
            (
                f"Bulk push: one page of {pages['page_size']}, first vs last (Label Studio's defaults)",
                f"{pages['first_page_s']:.1f} s vs {pages['last_page_s']:.1f} s (each import request "
                "recounts every task of the project)",
                "-",
                "n/a",
            )
        )
        extra = [b for b in push["bulk"] if b["page_size"] != push["page_size"]]
        if extra:
            rows.append(
                (
                    "Bulk push by page size",
                    ", ".join(f"{b['page_size']}: {b['seconds']:.1f} s" for b in push["bulk"]),
                    "-",
                    "n/a",
                )
            )
    clustered = results.get("push_clusters")
    if clustered:  # `bench_push.py --clusters`, run on its own
        after = clustered["bulk_then_patch"]
        rows.append(
            (
                f"QUEUE_CLUSTERS push, {clustered['tasks']:,} tasks (Label Studio as the product starts it): "
                f"bulk (cluster dropped) vs one POST per prediction with its cluster vs bulk + list + one "
                f"PATCH per prediction ({clustered['post_ms']['n']} of each timed in turns, scaled)",
                f"{clustered['bulk_seconds']:.1f} s vs {clustered['post_seconds_scaled']:,.0f} s "
                f"({clustered['post_ms']['mean_ms']:.0f} ms each) vs {after['seconds_scaled']:,.0f} s "
                f"({after['patch_ms']['mean_ms']:.0f} ms each): the cheapest is "
                f"**{clustered['ratio_to_bulk']}x** the bulk push",
                "-",
                "n/a",
            )
        )
    training = results.get("training")
    if training:
        rates = training["pairs_per_s"]
        figure = ", ".join(f"{mode} {rate:.3g}" for mode, rate in rates.items()) + " pairs/s"
        if "amp_speedup" in training:
            figure += f" (AMP {training['amp_speedup']}x)"
        else:
            figure += " (AMP vs fp32: CUDA only)"
        rows.append(
            (
                f"Training, width {training['width']} at {_size(training['image_size'])}, batch "
                f"{training['batch_size']}",
                figure,
                "-",
                "n/a",
            )
        )
    memory = scoring.get("gpu_memory") if scoring else None
    if memory:
        if "skipped" in memory:
            rows.append(("Peak GPU memory per batch size", "skipped: no GPU on this machine", "-", "n/a"))
        else:
            figure = ", ".join(
                f"{r['batch']}: {r['peak_gib']} GiB"
                if r.get("peak_gib") is not None
                else f"{r['batch']}: OOM"
                for r in memory["per_batch"]
            )
            rows.append(
                (f"Peak GPU memory per batch size, {_size(memory['image_size'])}", figure, "-", "n/a")
            )
    if p:
        heaviest = max(p["server_memory"], key=lambda r: r.get("vmhwm_mib", 0))
        rows.append(
            (
                "Server RSS (gunicorn worker, model loaded, after serving): VmHWM / VmRSS",
                f"{heaviest.get('vmhwm_mib')} / {heaviest.get('vmrss_mib')} MiB (importing torch and the app "
                f"alone: {p['import_baseline_memory']['vmhwm_mib']} MiB)",
                "-",
                "n/a",
            )
        )
    workers = results.get("workers")
    if workers:
        runs = workers["runs"]
        peak = max(m.get("vmhwm_mib", 0) for r in runs for m in r["worker_memory"])
        rows.append(
            (
                "RQ worker RSS after a scoring run: peak VmHWM",
                f"{peak} MiB",
                "-",
                "n/a",
            )
        )
        rows.append(
            (
                f"Sharded pool scoring on RQ workers, {workers['tasks']:,} tasks at "
                f"{_size(workers['image_size'])} (width {workers['width']}, shards of "
                f"{workers['shard_size']}, images from Label Studio)",
                ", ".join(
                    f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}: {r['seconds']:.1f} s"
                    for r in runs
                )
                + " ("
                + ", ".join(f"{k}: {v}x" for k, v in workers["speedup"].items())
                + ")",
                "-",
                "n/a",
            )
        )
    fast = results.get("fast_paths")
    if fast:
        for route in ("setup", "webhook"):
            rows.append(
                (
                    f"`/{route}` answer (route alone, Flask test client)",
                    f"p50 {fast[route]['p50_ms']} ms, p99 {fast[route]['p99_ms']} ms",
                    f"< {fast['target_s'] * 1000:.0f} ms",
                    _yes(fast[route]["p99_ms"] < fast["target_s"] * 1000),
                )
            )
        for size, g in fast["generation"].items():
            rows.append(
                (
                    f"Synthetic pair generation at {size}",
                    f"{g['ms_per_pair']} ms per pair",
                    f"< {g['target_ms']:g} ms",
                    _yes(g["ms_per_pair"] < g["target_ms"]),
                )
            )
    return rows


def device_section(name: str, results: dict[str, Any]) -> str:
    run = results.get("run", {})
    machine = run.get("machine") or results.get("scoring", {}).get("machine", {})
    description = (
        machine.get("gpu") or f"{machine.get('cpu_count', '?')} CPU cores ({machine.get('cpu', '?')})"
    )
    lines = [f"**`{name}`**: {description}, torch {machine.get('torch', '?')}."]
    if run:
        lines[0] += (
            f" Run {run.get('started_at', '?')}, {run.get('total_seconds', 0) / 60:.0f} min in all, "
            f"load average {run.get('loadavg_before')} before and {run.get('loadavg_after')} after "
            "(a shared machine)."
        )
    lines += ["", "| Measurement | Figure | Target | Met? |", "| --- | --- | --- | --- |"]
    for row in table_rows(results):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    push = results.get("push", {})
    notes = []
    if "efficient_import" in push:
        flag = next(iter(push["efficient_import"]["label_studio_env"]))
        notes.append(
            "The efficient-import flag is Label Studio's environment variable "
            f"`{flag}=true`: without it (the default in 1.23.2) every prediction import request recounts the "
            "counters of every task of the project, so each page costs more as the project grows. "
            "`rgbt-al demo`, the e2e tests and docker/docker-compose.yml start Label Studio with it on."
        )
    if run.get("omp_wait_policy"):
        notes.append(
            f"The benchmarks run with `OMP_WAIT_POLICY={run['omp_wait_policy']}`: on a CPU shared with other "
            "processes, libgomp's default spin-waiting made a 2-thread forward pass several times slower."
        )
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


def render_results(results_dir: Path) -> str:
    keys = {b.key for b in BENCHES}
    found = [
        (p.stem, benchutil.read_results(p))
        for p in sorted(results_dir.glob("*.json"))
        if not p.stem.endswith("-quick")
    ]
    found = [(name, results) for name, results in found if keys & set(results)]  # other benchmarks' files
    if not found:
        return "_No results yet: run `make bench`._"
    sections = [device_section(name, results) for name, results in found]
    note = (
        "Generated by `benchmarks/run_all.py` from `benchmarks/results/*.json` (all figures there, with "
        "the load average next to each)."
    )
    return "\n\n".join([note, *sections])


def rewrite_readme(readme: Path, results_dir: Path) -> None:
    """Replace the text between the markers; add a Performance section with them when they are missing."""
    text = readme.read_text()
    block = f"{START}\n{render_results(results_dir)}\n{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = before + block + after
    else:
        intro = (
            "## Performance\n\n"
            "`make bench` (or `.venv/bin/python benchmarks/run_all.py`) runs every benchmark in "
            "`benchmarks/`, writes `benchmarks/results/<device>.json` and regenerates the table below; "
            "`--quick` shrinks every size for a smoke run, `--only scoring predict push training workers` "
            "picks some. Each `benchmarks/bench_*.py` also runs alone (`--help`).\n\n"
        )
        text = text.rstrip("\n") + "\n\n" + intro + block + "\n"
    readme.write_text(text)


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; writes <device>-quick.json")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--skip", nargs="+", choices=NAMES, default=[])
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda...")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<device>.json")
    parser.add_argument("--readme", dest="readme", action="store_true", default=None, help="rewrite README")
    parser.add_argument("--no-readme", dest="readme", action="store_false")
    parser.add_argument("--readme-only", action="store_true", help="only rebuild the README table")
    args = parser.parse_args(argv)
    if args.readme_only:
        rewrite_readme(README, benchutil.RESULTS_DIR)
        print(f"rewrote the performance table of {README}")
        return 0
    device = benchutil.device_name(args.device or "auto")
    out = benchutil.results_path(device, quick=args.quick, out=args.out)
    failures = run_benches(args, out)
    if args.readme if args.readme is not None else not args.quick:
        rewrite_readme(README, benchutil.RESULTS_DIR)
        print(f"rewrote the performance table of {README}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
