"""Failed training backs off: with retries off and Label Studio unreachable, a storm of webhook events makes
one failed training job and one deferred one, not a failed job per threshold of events."""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from pathlib import Path

import pytest

from ls_backend.jobs import JobContext, install_context
from ls_backend.queues import MAX_TRAIN_BACKOFF, RQRunner, ThreadRunner, backoff_delay
from ls_backend.registry import ModelRegistry, ProjectInfo
from ls_backend.settings import Settings
from ls_backend.worker import LeasedWorker
from tests.unit.app_support import DETECTION_CONFIG

pytestmark = pytest.mark.integration

ROUNDS, EVENTS = 5, 200  # 1,000 webhook events, a worker pass after every 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_backoff_delay_doubles_up_to_an_hour():
    assert [backoff_delay(30, n) for n in range(5)] == [0, 30, 60, 120, 240]
    assert backoff_delay(30, 40) == MAX_TRAIN_BACKOFF and backoff_delay(0, 3) == 0


def test_rq_failed_training_is_deferred_not_repeated(queue_settings: Settings, tmp_path: Path):
    """The real train_project against a Label Studio that refuses connections, real RQ worker passes (in
    this process) between bursts of events: one failed job in all, the next one scheduled after the
    backoff, every later event joining it."""
    settings = dataclasses.replace(queue_settings, job_retries=0, train_failure_backoff=600.0)
    ModelRegistry(settings.model_dir).save_project(
        ProjectInfo("7", DETECTION_CONFIG, f"http://127.0.0.1:{_closed_port()}", "0" * 40)
    )
    runner = RQRunner(settings)
    install_context(JobContext(settings, runner=runner))
    statuses: Counter[str] = Counter()
    try:
        for _ in range(ROUNDS):
            for _ in range(EVENTS):
                statuses[runner.request_training("7", force=False).status] += 1
            LeasedWorker([runner.queue], connection=runner.connection, lease_seconds=10).work(
                burst=True, with_scheduler=True
            )
    finally:
        install_context(None)
    assert runner.queue.failed_job_registry.count == 1, statuses
    assert runner.queue.scheduled_job_registry.count == 1, statuses
    assert statuses["enqueued"] == 1 and statuses["deferred"] == 1, statuses
    (failed,) = [j for j in runner.jobs(limit=10) if j.status == "failed"]
    assert "Label Studio" in (failed.error or "") or "reach" in (failed.error or ""), failed
    (scheduled,) = [j for j in runner.jobs(limit=10) if j.status == "scheduled"]
    assert scheduled.func == "ls_backend.jobs.train_project"


def test_rq_backoff_is_per_project_and_a_success_ends_it(queue_settings: Settings):
    settings = dataclasses.replace(queue_settings, job_retries=0, train_failure_backoff=600.0)
    failing = RQRunner(settings, train_job="tests.integration.sample_jobs.failing_train")
    assert failing.request_training("3", force=True).status == "enqueued"
    LeasedWorker([failing.queue], connection=failing.connection, lease_seconds=10).work(burst=True)
    working = RQRunner(settings, train_job="tests.integration.sample_jobs.fake_train")
    deferred = working.request_training("3", force=True)
    assert deferred.status == "deferred" and deferred.not_before
    assert working.request_training("4", force=True).status == "enqueued"  # not held back by project 3
    # A training of project 3 that succeeds (started by hand here) ends its backoff.
    working.enqueue(working.train_job, "3", description="train project 3 now")
    LeasedWorker([working.queue], connection=working.connection, lease_seconds=10).work(burst=True)
    working.connection.delete(f"rgbt-al:{settings.queue_name}:pending-train:3")  # drop the deferred claim
    assert working.request_training("3", force=True).status == "enqueued"


def test_embedded_runner_backs_off_too(tmp_path: Path):
    settings = Settings.from_env(
        {},
        model_dir=tmp_path / "models",
        job_retries=0,
        train_failure_backoff=600.0,
        train_every_n_annotations=10,
    )
    runner = ThreadRunner(settings, train_job="tests.integration.sample_jobs.failing_train")
    statuses: Counter[str] = Counter()
    for _ in range(ROUNDS):
        for _ in range(EVENTS):
            statuses[runner.request_training("7", force=False).status] += 1
        assert runner.wait_idle(60)
    jobs = Counter(j.status for j in runner.jobs(limit=200) if j.func.endswith("failing_train"))
    assert jobs == {"failed": 1, "scheduled": 1}, (jobs, statuses)
