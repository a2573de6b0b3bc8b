"""Job queues on the real Redis with real `rgbt-al worker` processes, and the embedded thread runner."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from rq.job import Job

from ls_backend.queues import RQRunner, ThreadRunner
from ls_backend.settings import Settings
from tests.integration.conftest import run_burst_worker

pytestmark = pytest.mark.integration


def storm(runner, project: str, events: int, threads: int = 8) -> Counter:
    """``events`` webhook-like training requests from several threads at once."""
    statuses: Counter = Counter()
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            result = runner.request_training(project, force=False)
            with lock:
                statuses[(result.status, result.job_id)] += 1

    workers = [threading.Thread(target=send, args=(events // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return statuses


def test_webhook_storm_makes_one_rq_training_job(queue_settings: Settings):
    runner = RQRunner(queue_settings, train_job="tests.integration.sample_jobs.fake_train")
    statuses = storm(runner, "7", 1000)
    job_ids = {job_id for (status, job_id) in statuses if job_id}
    assert len(job_ids) == 1, statuses
    assert sum(n for (status, _), n in statuses.items() if status == "enqueued") == 1
    assert sum(statuses.values()) == 1000
    assert runner.queue.count == 1
    (job_id,) = job_ids
    assert runner.queue.job_ids == [job_id]
    assert Job.fetch(job_id, connection=runner.connection).args == ("7",)


def test_threshold_counts_then_enqueues(queue_settings: Settings):
    runner = RQRunner(queue_settings)
    first = [runner.request_training("3", force=False) for _ in range(9)]
    assert {r.status for r in first} == {"counted"}
    assert first[-1].new_annotations == 9
    tenth = runner.request_training("3", force=False)
    assert tenth.status == "enqueued"
    # Another project is independent; an explicit request does not wait for the threshold.
    assert runner.request_training("4", force=True).status == "enqueued"
    assert runner.queue.count == 2


def test_stale_pending_claim_is_replaced(queue_settings: Settings):
    runner = RQRunner(queue_settings)
    first = runner.request_training("5", force=True)
    # The queued job disappears (Redis flushed it, someone deleted it): once the enqueue grace is over, the
    # next request must not be stuck behind the dead claim.
    Job.fetch(first.job_id, connection=runner.connection).delete()
    assert runner.request_training("5", force=True).status == "coalesced"  # within the grace
    runner.CLAIM_GRACE_SECONDS = 0.0
    second = runner.request_training("5", force=True)
    assert second.status == "enqueued"
    assert second.job_id != first.job_id


def test_release_lets_the_next_event_enqueue_while_training_runs(queue_settings: Settings):
    runner = RQRunner(queue_settings)
    first = runner.request_training("8", force=True)
    assert runner.request_training("8", force=True).status == "coalesced"
    runner.release_training("8", first.job_id)  # what train_project does when it starts
    assert runner.request_training("8", force=True).status == "enqueued"


def test_real_worker_runs_job_reports_progress_and_retries(queue_settings: Settings, tmp_path: Path):
    runner = RQRunner(queue_settings)
    ok = runner.enqueue("tests.integration.sample_jobs.progress_job", 21, description="double")
    flaky = runner.enqueue("tests.integration.sample_jobs.flaky_job", str(tmp_path / "attempts"))
    broken = runner.enqueue("tests.integration.sample_jobs.failing_job")
    dependent = runner.enqueue("tests.integration.sample_jobs.progress_job", 1, depends_on=[broken])
    process = run_burst_worker(queue_settings)
    assert process.returncode == 0, process.stderr[-2000:]
    states = {s.id: s for s in runner.jobs()}
    assert states[ok].status == "finished"
    assert states[ok].result == {"value": 42, "job": ok}
    assert states[ok].progress == 1.0 and states[ok].message == "step 4"
    assert states[flaky].status == "finished"
    assert states[flaky].result == "ok after 2"
    assert states[broken].status == "failed"
    assert "always broken" in (states[broken].error or "")
    assert states[dependent].status == "deferred"  # never runs after a failed dependency


def test_worker_refuses_to_start_without_redis(tmp_path: Path):
    settings = Settings.from_env({}, model_dir=tmp_path)
    process = run_burst_worker(settings, REDIS_URL="")
    assert process.returncode == 2
    assert "REDIS_URL is not set" in process.stderr


def test_thread_runner_coalesces_retries_and_cancels_dependents(tmp_path: Path):
    settings = Settings.from_env(
        {}, model_dir=tmp_path, job_retries=1, job_retry_delay=0.0, train_every_n_annotations=10
    )
    runner = ThreadRunner(settings, train_job="tests.integration.sample_jobs.fake_train")
    blocker = runner.enqueue("tests.integration.sample_jobs.slow_job", 1.0)
    statuses = storm(runner, "9", 1000)
    job_ids = {job_id for (_, job_id) in statuses if job_id}
    assert len(job_ids) == 1, statuses
    flaky = runner.enqueue("tests.integration.sample_jobs.flaky_job", str(tmp_path / "attempts"))
    broken = runner.enqueue("tests.integration.sample_jobs.failing_job")
    dependent = runner.enqueue("tests.integration.sample_jobs.progress_job", 1, depends_on=[broken])
    assert runner.wait_idle(timeout=60)
    assert runner.job(job_ids.pop()).result == "trained 9"
    assert runner.job(blocker).status == "finished"
    assert runner.job(flaky).status == "finished" and runner.job(flaky).result == "ok after 2"
    assert runner.job(broken).status == "failed"
    assert runner.job(dependent).status == "canceled"
