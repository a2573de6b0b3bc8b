"""The reliability figures file shared by the fault and fuzz tests: ``benchmarks/results/reliability.json``.

Each test owns one top-level key and merges it in (read-modify-write under a lock file, replaced atomically),
so tests of different files and sessions never drop each other's figures.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "reliability.json"


def merge_results(key: str, value: Any, path: Path = RESULTS) -> None:
    """Set ``key`` of the results file to ``value`` (with a ``recorded_at`` stamp when it is a dict)."""
    if isinstance(value, dict):
        value = {**value, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        data[key] = value
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max / mean of request latencies, in milliseconds."""
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def percentile(q: float) -> float:
        position = (len(ordered) - 1) * q
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        "p50_ms": round(percentile(0.5) * 1000, 1),
        "p99_ms": round(percentile(0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }
