"""Peak memory of image decoding and segmentation `/predict`, before and after the bounds, side by side.

Each case runs ``RGBTBackend.predict`` (or the fetcher's decode) in a fresh process, twice: once on the code
of the commit before the memory bounds (``--before``, extracted with ``git archive``), once on this checkout.
The process first serves a small pair (model built, torch warmed), then the peak resident size is reset
(``/proc/self/clear_refs``) and the case runs; ``added_mib`` is the peak (VmHWM) minus the resident size just
before. Task images are PNG files under ``LOCAL_FILES_ROOT`` (no network), so only decoding, inference and
the conversion to Label Studio results are measured.

Cases:

* ``png16_one_task``: one task whose RGB and thermal are a 16-bit RGBA PNG of 6324x6324 (40 Mpx, under
  MAX_IMAGE_PIXELS; a few hundred kB on disk, 320 MB decoded). After: refused by the default MAX_DECODE_BYTES
  (``after``), and decoded with the limit raised to 512 MiB (``after_limit_raised``).
* ``png16_two_tasks``: two such tasks in one request.
* ``png16_concurrent``: ``--concurrent`` threads decoding that PNG at once through the fetcher (the old
  8-thread fetch pool's worst case). The old code is run only where the estimate fits in half the available
  memory (the machine is shared); otherwise its figure is the estimate, marked so.
* ``segmentation_64_labels``: `/predict` with a 64-label BrushLabels config on a 4000x4000 pair (8-bit PNGs).
* ``detection_small_pair``, ``segmentation_64_labels_small_pair``: the same requests on a 64x80 pair: what the
  network's forward pass at ``MODEL_IMAGE_SIZE`` costs whatever the image size (its activations are freed
  after the warm-up request, so they count again), the floor of the cases above.

    python benchmarks/bench_memory.py             # writes "memory" into benchmarks/results/reliability.json
    python benchmarks/bench_memory.py --readme-only   # the README's table from the recorded figures
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The commit the memory bounds were built on (issue 15, items 3 and 4).
BEFORE = "404654c"
PROJECT = "1"
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------ child process
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def run_case(case: str, folder: Path, concurrent: int) -> dict[str, Any]:
    """In the child: serve a small pair, reset the peak, run ``case``; figures in MiB."""
    import gc
    from concurrent.futures import ThreadPoolExecutor

    import ls_backend
    from ls_backend.backend import RGBTBackend
    from ls_backend.images import FetchError
    from ls_backend.settings import Settings

    settings = Settings.from_env()
    backend = RGBTBackend(settings)
    config = (folder / ("seg64.xml" if case.startswith("segmentation") else "det.xml")).read_text()
    small = {"id": 1, "data": {"rgb": str(folder / "small_rgb.png"), "thermal": str(folder / "small_t.png")}}
    backend.predict([small], project=PROJECT, label_config=config)
    gc.collect()
    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    started = time.perf_counter()
    outcome = "ok"
    if case == "png16_concurrent":
        fetcher = backend.context.fetcher(PROJECT)
        path = str(folder / "rgba16.png")

        def decode(_: int) -> str:
            try:
                return str(fetcher.load_image(path, None, thermal=False).shape)
            except FetchError as error:
                return f"HTTP {error.status}: {error}"

        with ThreadPoolExecutor(concurrent) as pool:
            outcomes = sorted(set(pool.map(decode, range(concurrent))))
        outcome = "; ".join(outcomes)
    else:
        if case.endswith("small_pair"):
            tasks = [{**small, "id": 10}]
        elif case.startswith("segmentation"):
            data = {"rgb": str(folder / "seg_rgb.png"), "thermal": str(folder / "seg_t.png")}
            tasks = [{"id": 10, "data": data}]
        else:
            count = 2 if case == "png16_two_tasks" else 1
            data = {"rgb": str(folder / "rgba16.png"), "thermal": str(folder / "rgba16.png")}
            tasks = [{"id": 10 + i, "data": data} for i in range(count)]
        try:
            answer = backend.predict(tasks, project=PROJECT, label_config=config)
            errors = answer.get("errors")
            if errors:
                outcome = f"per-task errors: {errors[0]['error'][:160]}"
        except FetchError as error:
            outcome = f"HTTP {error.status}: {str(error)[:160]}"
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    return {
        "added_mib": round((peak - baseline) / MIB, 1),
        "peak_mib": round(peak / MIB, 1),
        "baseline_mib": round(baseline / MIB, 1),
        "seconds": round(seconds, 2),
        "outcome": outcome,
        "code": str(Path(ls_backend.__file__).parents[1]),
    }


# ------------------------------------------------------------------------------------------ parent
def png16_rgba(side: int) -> bytes:
    """A 16-bit RGBA PNG of ``side`` x ``side``: ramps and bands, every row stored with PNG's "Up" filter, so
    it compresses to a few hundred kB (written chunk by chunk: the image never exists in this process)."""
    import struct
    import zlib

    import numpy as np

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    x = np.arange(side, dtype=np.uint32)
    first = np.stack([(x * (3 + c) + 4000 * c) % 65536 for c in range(4)], axis=1).astype(">u2")
    step = np.zeros((side, 4), ">u2")
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"\x00" + first.tobytes())]
    for row in range(1, side):
        step[:] = 1 if row % 64 == 0 else 0  # a brighter band every 64 rows
        parts.append(compressor.compress(b"\x02" + step.tobytes()))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def write_inputs(folder: Path) -> dict[str, Any]:
    """The images and configs of the cases."""
    import numpy as np

    from model.data.io import save_png

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rgba16.png").write_bytes(png16_rgba(6324))
    side = 4000
    y = np.arange(side, dtype=np.uint32)[:, None]
    x = np.arange(side, dtype=np.uint32)[None, :]
    ramps = [(x + y) // 16 % 256, (x * 2 + 0 * y) // 16 % 256, (y * 3 + 0 * x) // 16 % 256]
    rgb = np.stack(ramps, axis=2)
    save_png(folder / "seg_rgb.png", rgb.astype(np.uint8))
    save_png(folder / "seg_t.png", ((x * y) // 4096 % 256).astype(np.uint8))
    rng = np.random.default_rng(0)
    save_png(folder / "small_rgb.png", rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    save_png(folder / "small_t.png", rng.integers(0, 256, (64, 80), dtype=np.uint8))
    images = '<Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
    (folder / "det.xml").write_text(
        f'<View>{images}<RectangleLabels name="label" toName="rgb"><Label value="person"/>'
        "</RectangleLabels></View>"
    )
    labels = "".join(f'<Label value="class{i:02d}"/>' for i in range(64))
    (folder / "seg64.xml").write_text(
        f'<View>{images}<BrushLabels name="label" toName="rgb">{labels}</BrushLabels></View>'
    )
    return {
        "png16_rgba": {"size": "6324x6324", "file_bytes": (folder / "rgba16.png").stat().st_size},
        "segmentation_pair": {"size": "4000x4000", "labels": 64},
    }


def extract(rev: str, into: Path) -> Path:
    """The ``model`` and ``ls_backend`` packages of ``rev``, as a folder to put on PYTHONPATH."""
    repo = Path(__file__).resolve().parents[1]
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "model", "ls_backend"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def child(code: Path, case: str, folder: Path, env: dict[str, str], concurrent: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", case, "--folder", str(folder)]
    command += ["--concurrent", str(concurrent)]
    full_env = {**os.environ, **env, "PYTHONPATH": str(code)}
    done = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import benchutil

    repo = benchutil.REPO
    after_commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as temp:
        root = Path(temp)
        folder = root / "images"
        inputs = write_inputs(folder)
        before = extract(args.before, root / "before")
        base_env = {
            "LOCAL_FILES_ROOT": str(folder),
            "MODEL_WIDTH": str(args.width),
            "DEVICE": "cpu",
            "LOG_LEVEL": "ERROR",
            "DECODE_WAIT_SECONDS": "600",
            "OMP_NUM_THREADS": str(os.cpu_count() or 1),
        }
        raised = {"MAX_DECODE_BYTES": str(512 * MIB)}
        cases: dict[str, dict[str, Any]] = {}
        for case in args.cases:
            row: dict[str, Any] = {}
            variants = [("before", before, {}), ("after", repo, {})]
            if case.startswith("png16"):
                variants.append(("after_limit_raised", repo, raised))
            for name, code, extra in variants:
                env = {**base_env, **extra, "MODEL_DIR": str(root / f"models-{case}-{name}")}
                if name == "before" and case == "png16_concurrent":
                    one = args.previous.get("png16_one_task", {}).get("before", {}).get("added_mib", 0) * MIB
                    one = cases.get("png16_one_task", {}).get("before", {}).get("added_mib", 0) * MIB or one
                    estimate = one * args.concurrent
                    if estimate > available_bytes() / 2:
                        row[name] = {
                            "skipped": "the estimate does not fit in half the available memory of this "
                            "shared machine",
                            "estimated_added_mib": round(estimate / MIB),
                        }
                        continue
                print(f"{case} / {name} ...", flush=True)
                row[name] = child(code, case, folder, env, args.concurrent)
                row[name]["commit"] = args.before if name == "before" else after_commit
                print(f"  {row[name]}", flush=True)
            cases[case] = row
    return {
        "what": "peak resident memory added by one request or decode (VmHWM minus VmRSS before), MiB",
        "before_commit": args.before,
        "after_commit": after_commit,
        "model_width": args.width,
        "concurrent_decodes": args.concurrent,
        "inputs": inputs,
        "defaults": {"MAX_DECODE_BYTES": 128 * MIB, "DECODE_BUDGET_BYTES": 512 * MIB},
        "cases": cases,
        "machine": benchutil.machine_info(),
        "loadavg": benchutil.load_average(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


CASES = (
    "png16_one_task",
    "png16_two_tasks",
    "png16_concurrent",
    "detection_small_pair",
    "segmentation_64_labels",
    "segmentation_64_labels_small_pair",
)
README_START, README_END = "<!-- memory-results:start -->", "<!-- memory-results:end -->"

CASE_TITLES = {
    "png16_one_task": "`/predict`, 1 task, 16-bit RGBA PNG 6324x6324 (RGB and thermal)",
    "png16_two_tasks": "`/predict`, 2 such tasks",
    "png16_concurrent": "{n} decodes of that PNG at once (fetcher threads)",
    "segmentation_64_labels": "`/predict`, 64-label segmentation, 4000x4000 pair",
    "detection_small_pair": "floor: the first case's request on a 64x80 pair (the network's forward pass)",
    "segmentation_64_labels_small_pair": "floor: the 64-label request on a 64x80 pair",
}


def _cell(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    if "skipped" in row:
        return f"not run (estimate {row['estimated_added_mib'] / 1024:.1f} GiB)"
    if "error" in row:
        return "failed"
    refused = row.get("outcome", "").startswith("HTTP")
    mib = row["added_mib"]
    figure = f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"
    return f"{figure} (refused: {row['outcome'][:8].strip()})" if refused else figure


def readme_table(result: dict[str, Any]) -> str:
    lines = [
        f"Peak resident memory added, old code ({result['before_commit']}) against this branch (the commit "
        f"of each figure is in the JSON), model width {result['model_width']}, "
        f"{result['machine']['cpu_count']} CPU cores:",
        "",
        "| Case | Before | After (defaults) | After, MAX_DECODE_BYTES raised to 512 MiB |",
        "| --- | --- | --- | --- |",
    ]
    for case, row in result["cases"].items():
        title = CASE_TITLES.get(case, case).format(n=result["concurrent_decodes"])
        lines.append(
            f"| {title} | {_cell(row.get('before'))} | {_cell(row.get('after'))} | "
            f"{_cell(row.get('after_limit_raised'))} |"
        )
    return "\n".join(lines)


def write_readme(result: dict[str, Any], readme: Path) -> None:
    """Rewrite the README's block between the memory-results markers with ``result``'s table."""
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + readme_table(result) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the code before the bounds")
    parser.add_argument("--concurrent", type=int, default=8, help="decodes at once in png16_concurrent")
    parser.add_argument("--width", type=float, default=0.25, help="MODEL_WIDTH of the network")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: reliability.json)")
    parser.add_argument("--readme-only", action="store_true", help="rebuild the README table from --out")
    parser.add_argument(
        "--cases", nargs="+", choices=CASES, default=list(CASES), help="run these only (merged with the file)"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # a child: PYTHONPATH selects the code under test
        print(json.dumps(run_case(args.case, args.folder, args.concurrent)))
        return
    import benchutil

    out = args.out or benchutil.RESULTS_DIR / "reliability.json"
    previous = benchutil.read_results(out).get("memory", {})
    args.previous = previous.get("cases", {})
    if args.readme_only:
        result = previous
    else:
        result = run(args)
        if set(args.cases) != set(CASES):  # a subset: the other cases keep their recorded figures
            result["cases"] = {**args.previous, **result["cases"]}
            result["cases"] = {case: result["cases"][case] for case in CASES if case in result["cases"]}
        benchutil.write_section(out, "memory", result)
        print(f"wrote 'memory' to {out}")
    if args.out is None:  # the committed figures only: a trial run elsewhere leaves the README alone
        write_readme(result, benchutil.REPO / "README.md")
        print("rewrote the README's memory table")


if __name__ == "__main__":
    main()
