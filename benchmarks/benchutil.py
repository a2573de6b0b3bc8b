"""Shared helpers of the benchmarks: the device name results are filed under, load averages, merged JSON
results, interleaved timing and percentiles, the resident memory of processes.

Every benchmark is a script that can run alone (``python benchmarks/bench_x.py --out FILE``) and writes one
top-level key into the results file, merging with what other benchmarks wrote there.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# libgomp's default spin-waiting makes a 2-thread process several times slower when other processes keep
# the cores busy (measured here: 0.30 s against 0.05 s for one small forward pass); the benchmarks, and the
# servers and workers they start (they inherit this environment), wait passively instead. Set before torch
# is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if str(REPO) not in sys.path:  # `python benchmarks/x.py` from a fresh checkout without `pip install -e`
    sys.path.insert(0, str(REPO))


def device_name(device: str = "auto") -> str:
    """Results file name: ``cpu-<N>core``, or the GPU name as a slug (``nvidia-h100-80gb-hbm3``)."""
    import torch

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        name = torch.cuda.get_device_name(torch.device(device if device != "auto" else "cuda"))
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def load_average() -> list[float]:
    """``os.getloadavg()`` rounded: recorded next to every figure (the machine is shared)."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_results(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def results_path(device: str, *, quick: bool = False, out: Path | None = None) -> Path:
    """Where a run's figures go: ``out`` when given, else ``results/<device>.json`` (``-quick`` added)."""
    return out or RESULTS_DIR / f"{device}{'-quick' if quick else ''}.json"


def write_section(path: Path, key: str, value: dict[str, Any]) -> None:
    """Merge ``{key: value}`` into the JSON file at ``path`` (other keys stay), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_results(path)
    data[key] = value
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean / min in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 2),
        "min_ms": round(min(seconds) * 1000, 2),
    }


def interleaved(
    calls: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each call, ``repeats`` times, the calls taking turns (A B A B ...), after ``warmup`` rounds.

    Taking turns makes the ratio of two calls robust against the load of a shared machine changing during
    the run: both see the same conditions on average.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for call in calls.values():
            call()
            sync()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            sync()
            samples[name].append(time.perf_counter() - started)
    return samples


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# ------------------------------------------------------------------------------------------ processes
def process_group_pids(leader: int) -> list[int]:
    """The pids of ``leader`` and every process in its process group (gunicorn's master and its worker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == leader:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return sorted(pids)


def memory_of(pid: int) -> dict[str, Any]:
    """VmHWM (peak resident) and VmRSS (resident now) of a process, in MiB, with its command line."""
    fields: dict[str, Any] = {"pid": pid}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key.lower() + "_mib"] = round(int(value.split()[0]) / 1024, 1)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        fields["command"] = _short_command(command)
    except OSError:
        fields["error"] = "process gone"
    return fields


def _short_command(command: str) -> str:
    words = command.split()
    keep = [w.rsplit("/", 1)[-1] if i == 0 else w for i, w in enumerate(words)]
    text = " ".join(keep)
    return text[:120]


def group_memory(leader: int) -> list[dict[str, Any]]:
    """:func:`memory_of` for every process of ``leader``'s group, largest peak first."""
    rows = [memory_of(pid) for pid in process_group_pids(leader)]
    return sorted(rows, key=lambda row: -row.get("vmhwm_mib", 0))


def print_table(title: str, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """A plain-text table on stdout."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------ Label Studio
@contextlib.contextmanager
def label_studio(
    url: str | None,
    token: str | None,
    files_root: Path | None,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, Path]]:
    """(URL, token, local-files root) of a Label Studio: the given one (``run_all.py`` shares one between the
    benchmarks), else a fresh server started here (from the migrated database template, with ``env`` added
    to its environment) and stopped after."""
    if url:
        if not token or files_root is None:
            raise SystemExit("--studio-url needs --studio-token and --files-root")
        yield url, token, files_root
        return
    from ls_backend.studio_server import (
        LabelStudioServer,
        ensure_database_template,
        ensure_label_studio,
        free_port,
    )

    executable = ensure_label_studio()
    template = ensure_database_template(executable)
    server = LabelStudioServer(
        executable,
        workdir / "label-studio",
        port=free_port(),
        files_root=workdir / "files",
        database_template=template,
        env=env,
    )
    with server:
        server.wait_ready(timeout=300)
        assert server.files_root is not None
        yield server.url, server.token, server.files_root


def add_studio_arguments(parser: Any) -> None:
    parser.add_argument("--studio-url", default=None, help="a running Label Studio (else one is started)")
    parser.add_argument("--studio-token", default=None, help="its legacy API token")
    parser.add_argument("--files-root", type=Path, default=None, help="its LOCAL_FILES_DOCUMENT_ROOT")
