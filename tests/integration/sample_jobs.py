"""Job functions for queue tests (importable by a real RQ worker process)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ls_backend.queues import current_job_id, report_progress


def progress_job(value: int) -> dict:
    for step in range(4):
        report_progress((step + 1) / 4, f"step {step + 1}")
    return {"value": value * 2, "job": current_job_id()}


def flaky_job(marker: str) -> str:
    """Fails on its first run, succeeds on the retry (the marker file counts attempts)."""
    path = Path(marker)
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempts))
    if attempts == 1:
        raise RuntimeError("first attempt fails")
    return f"ok after {attempts}"


def failing_job() -> None:
    raise ValueError("always broken")


def slow_job(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def record_job(path: str, value: str) -> None:
    with open(path, "a") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def fake_train(project: str) -> str:
    """Stands in for ls_backend.jobs.train_project where no Label Studio is involved."""
    return f"trained {project}"


def stuck_training(project: str) -> str:
    """A training round that hangs after its first epoch (until ``$STUCK_JOB_RELEASE`` exists) and never
    releases its pending claim: what a worker killed mid-training leaves behind."""
    report_progress(0.1, "epoch 1/1000")
    release = Path(os.environ.get("STUCK_JOB_RELEASE", "/nonexistent/never"))
    for _ in range(6000):
        if release.exists():
            return f"trained {project}"
        time.sleep(0.1)
    return f"gave up on {project}"


def failing_train(project: str) -> str:
    """A training round that always fails, as one does while Label Studio is unreachable."""
    raise ConnectionError(f"project {project}: Label Studio does not answer")
