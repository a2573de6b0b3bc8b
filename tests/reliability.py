"""The reliability figures file shared by the fault and fuzz tests.

A plain test run writes the figures to a temporary file (``results_path()``), never to a tracked one:
``make reliability`` runs those tests with ``RGBT_RELIABILITY_RESULTS`` pointing at
``benchmarks/results/reliability.json``, the committed figures. Each test owns one top-level key and merges
it in (read-modify-write under a lock file, replaced atomically), so tests of different files and sessions
never drop each other's figures.
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

#: Where the figures go: the committed file only when asked for (make reliability).
RESULTS_ENV = "RGBT_RELIABILITY_RESULTS"


def results_path() -> Path:
    """``$RGBT_RELIABILITY_RESULTS``, else a file of this user's in the temporary directory."""
    explicit = os.environ.get(RESULTS_ENV, "").strip()
    if explicit:
        return Path(explicit)
    return Path(tempfile.gettempdir()) / f"rgbt-al-reliability-{os.getuid()}.json"


def merge_results(key: str, value: Any, path: Path | None = None) -> None:
    """Set ``key`` of the results file (default ``results_path()``) to ``value`` (with a ``recorded_at``
    stamp when it is a dict)."""
    path = results_path() if path is None else path
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
