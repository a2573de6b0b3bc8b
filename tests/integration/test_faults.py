"""Faults without Label Studio, on real processes: a webhook storm through gunicorn, a model swap under
``/predict`` load, and a worker killed (SIGKILL) in the middle of a job.

The backend is `rgbt-al serve` (gunicorn) on the real Redis with a queue of its own; workers are real
`rgbt-al worker` processes. Figures ("webhook_storm", "model_swap", "worker_sigkill_failed") go to the
reliability figures (``tests/reliability.py``: a temporary file, or ``benchmarks/results/reliability.json``
with ``make reliability``).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis
from rq.job import Job

from ls_backend.admin import read_label_config, wait_for, write_synthetic_pairs
from ls_backend.jobs import JobContext
from ls_backend.processes import BackendServer, Worker, child_env
from ls_backend.queues import JobState, RQRunner
from ls_backend.registry import ModelRegistry
from ls_backend.settings import Settings
from ls_backend.studio_server import free_port
from tests.integration.conftest import REDIS_URL, worker_env
from tests.reliability import latency_summary, merge_results

pytestmark = pytest.mark.integration

DETECTION_CONFIG, DETECTION_SCHEMA = read_label_config("synthetic_detection")
STORM_PROJECT = "41"
SWAP_PROJECT = "42"


@dataclasses.dataclass
class Stack:
    """`rgbt-al serve` and the settings it runs with (the test process shares its registry and queue)."""

    server: BackendServer
    settings: Settings
    images: Path

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.model_dir)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_connection: Redis) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    queue = f"rgbt-faults-{uuid.uuid4().hex[:10]}"
    values = {
        "REDIS_URL": REDIS_URL,
        "RQ_QUEUE": queue,
        "MODEL_DIR": str(root / "models"),
        "LOCAL_FILES_ROOT": str(root / "images"),
        "MODEL_WIDTH": "0.0625",
        "MODEL_IMAGE_SIZE": "64x80",
        "DEVICE": "cpu",
        "TRAIN_EVERY_N_ANNOTATIONS": "10",
        "PREDICTION_SCORE_THRESHOLD": "0.0",
        "LOG_LEVEL": "WARNING",
    }
    (root / "images").mkdir()
    server = BackendServer(free_port(), env=child_env(values), log_path=root / "backend.log", threads=8)
    with server:
        server.wait_ready()
        yield Stack(server, Settings.from_env(values), root / "images")
    keys = list(redis_connection.scan_iter(f"*{queue}*", count=1000))
    if keys:
        redis_connection.delete(*keys)


# ------------------------------------------------------------------------------------------ webhook storm
def annotation_event(index: int, project: str) -> dict[str, Any]:
    """An ANNOTATION_CREATED webhook body as Label Studio 1.23 sends it (the parts the backend reads)."""
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 10_000 + index, "task": index, "result": []},
        "task": {"id": index, "data": {}},
        "project": {"id": int(project), "label_config": DETECTION_CONFIG},
    }


def test_webhook_storm_makes_one_training_job(stack: Stack) -> None:
    """1,000 ANNOTATION_CREATED events through gunicorn, with the threshold (10) reached by a burst from 16
    connections at once: exactly one training job in RQ, every event answered 200."""
    events, senders = 1000, 16
    threshold = stack.settings.train_every_n_annotations
    answers: Counter[tuple[int, str]] = Counter()
    job_ids: set[str] = set()
    failures: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(senders)

    def send(session: requests.Session, index: int) -> None:
        try:
            response = session.post(
                stack.server.url + "/webhook", json=annotation_event(index, STORM_PROJECT), timeout=30
            )
            body = response.json()
        except (requests.RequestException, ValueError) as error:
            with lock:
                failures.append(repr(error))
            return
        with lock:
            answers[(response.status_code, str(body.get("status")))] += 1
            if body.get("job_id"):
                job_ids.add(body["job_id"])

    def burst(indices: range) -> None:
        with stack.server.session() as session:
            session.get(stack.server.url + "/health", timeout=30)  # connected before the start line
            start_line.wait()
            for index in indices:
                send(session, index)

    started = time.perf_counter()
    with stack.server.session() as session:
        for index in range(threshold - 1):  # one short of the threshold: counted, nothing enqueued
            send(session, index)
    # The rest from 16 connections released together: the threshold is crossed by concurrent requests.
    rest = range(threshold - 1, events)
    threads = [threading.Thread(target=burst, args=(rest[i::senders],)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started

    runner = RQRunner(stack.settings)
    queued = runner.queue.job_ids
    known = [state.id for state in runner.jobs(limit=500)]
    merge_results(
        "webhook_storm",
        {
            "events_sent": events,
            "connections": senders,
            "seconds": round(seconds, 2),
            "events_per_second": round(events / seconds, 1),
            "answers": {f"{code} {status}": n for (code, status), n in sorted(answers.items())},
            "errors": len(failures) + sum(n for (code, _), n in answers.items() if code != 200),
            "events_coalesced": sum(n for (_, status), n in answers.items() if status == "coalesced"),
            "training_jobs_created": len(known),
            "threshold": threshold,
            "server": "gunicorn, 1 process x 8 threads; real Redis",
        },
    )
    assert not failures, failures[:5]
    assert sum(answers.values()) == events
    assert {code for code, _ in answers} == {200}, answers
    statuses = Counter({status: n for (_, status), n in answers.items()})
    assert statuses == {"counted": threshold - 1, "enqueued": 1, "coalesced": events - threshold}, answers
    assert len(job_ids) == 1, job_ids
    assert queued == list(job_ids) and known == list(job_ids)
    (job,) = Job.fetch_many(queued, connection=runner.connection)
    assert job is not None and job.func_name == "ls_backend.jobs.train_project"
    assert job.args == (STORM_PROJECT,)


# ------------------------------------------------------------------------------------------ model swap
def test_model_swap_under_predict_load(stack: Stack) -> None:
    """Clients send /predict back to back while two new versions become current: every request answers
    200, and each client's answers move from the old version to the new one, never back."""
    registry = stack.registry
    context = JobContext(stack.settings)
    versions = [registry.publish(SWAP_PROJECT, context.initial_model(DETECTION_SCHEMA)).version]
    write_synthetic_pairs(stack.images / "swap", 1, seed=3, image_size=(64, 80))
    pair = {"rgb": "swap/rgb/pair_00000.png", "thermal": "swap/thermal/pair_00000.png"}
    body = {
        "tasks": [{"id": 1, "data": pair}],
        "project": f"{SWAP_PROJECT}.1700000000",
        "label_config": DETECTION_CONFIG,
    }
    clients, cap, seen_each = 6, 600, 5  # at most 6 x 600 requests; a swap once all saw the version 5 times
    stop = threading.Event()
    lock = threading.Lock()
    answers: list[list[str]] = [[] for _ in range(clients)]
    latencies: list[float] = []
    failures: list[str] = []

    def client(index: int) -> None:
        with stack.server.session() as session:
            for _ in range(cap):
                if stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    response = session.post(stack.server.url + "/predict", json=body, timeout=60)
                    payload = response.json()
                except (requests.RequestException, ValueError) as error:
                    with lock:
                        failures.append(repr(error))
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200 or len(payload.get("results", [])) != 1:
                        failures.append(f"{response.status_code}: {str(payload)[:300]}")
                        continue
                    answers[index].append(payload["model_version"])

    def everyone_saw(version: str) -> bool:
        with lock:
            return all(seen.count(version) >= seen_each for seen in answers) or bool(failures)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            wait_for(lambda: everyone_saw(versions[-1]), timeout=120, interval=0.05, what="every client")
            versions.append(registry.publish(SWAP_PROJECT, context.initial_model(DETECTION_SCHEMA)).version)
        wait_for(lambda: everyone_saw(versions[-1]), timeout=120, interval=0.05, what="every client")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    seconds = time.perf_counter() - started

    sent = sum(len(seen) for seen in answers) + len(failures)
    merge_results(
        "model_swap",
        {
            "requests": sent,
            "clients": clients,
            "failed_requests": len(failures),
            "first_failures": failures[:3],
            "versions_made_current": len(versions) - 1,
            "answers_by_version": dict(Counter(v for seen in answers for v in seen)),
            "seconds": round(seconds, 2),
            "requests_per_second": round(sent / seconds, 1),
            "latency": latency_summary(latencies),
            "server": "gunicorn, 1 process x 8 threads, MODEL_WIDTH 0.0625, 64x80, CPU",
        },
    )
    assert not failures, failures[:5]
    order = {version: rank for rank, version in enumerate(versions)}
    for seen in answers:
        ranks = [order[version] for version in seen]  # a KeyError names a version nobody published
        assert ranks == sorted(ranks), f"a client went back to an older version: {seen}"
        assert set(seen) == set(versions)
    assert registry.current_version(SWAP_PROJECT) == versions[-1]


# ------------------------------------------------------------------------------------------ worker killed
def test_killed_workers_job_is_reported_failed_and_training_can_start_again(
    queue_settings: Settings, tmp_path: Path
) -> None:
    """SIGKILL a worker mid-job (no retries left): once its lease runs out, another worker's maintenance
    reports the job failed; the dead job's pending claim does not block the next training round."""
    # No failure backoff: this is about the dead job's claim (test_training_backoff.py covers the backoff).
    settings = dataclasses.replace(queue_settings, job_retries=0, train_failure_backoff=0.0)
    runner = RQRunner(settings, train_job="tests.integration.sample_jobs.stuck_training")
    release = tmp_path / "release"
    env = worker_env(settings, WORKER_LEASE_SECONDS="3", STUCK_JOB_RELEASE=str(release), LOG_LEVEL="INFO")
    first = runner.request_training("11", force=True)
    assert first.status == "enqueued" and first.job_id

    def status(worker: Worker, job_id: str, wanted: str) -> JobState | None:
        worker.check_alive()
        state = runner.job(job_id)
        return state if state is not None and state.status == wanted else None

    def training_started(worker: Worker) -> bool:
        worker.check_alive()
        state = runner.job(first.job_id)
        return state is not None and state.message.startswith("epoch")

    doomed = Worker(env=env, log_path=tmp_path / "worker-killed.log").start()
    try:
        wait_for(lambda: training_started(doomed), timeout=120, interval=0.1, what="training to start")
        doomed.kill(signal.SIGKILL)
        assert doomed.process is not None and doomed.process.wait(30) == -signal.SIGKILL
    finally:
        doomed.stop()
    killed_at = time.monotonic()
    assert runner.job(first.job_id).status == "started"  # nobody knows yet

    with Worker(env=env, log_path=tmp_path / "worker-next.log") as survivor:
        state = wait_for(
            lambda: status(survivor, first.job_id, "failed"),
            timeout=90,
            interval=0.2,
            what="the killed worker's job to be reported failed",
        )
        detected_after = time.monotonic() - killed_at
        assert "AbandonedJobError" in (state.error or ""), state
        # The dead job still holds the pending claim; it must not swallow the next training request.
        release.touch()
        second = runner.request_training("11", force=True)
        assert second.status == "enqueued" and second.job_id != first.job_id
        finished = wait_for(
            lambda: status(survivor, second.job_id, "finished"),
            timeout=90,
            interval=0.2,
            what="the next training round to finish",
        )
        assert finished.result == "trained 11"
    merge_results(
        "worker_sigkill_failed",
        {
            "job_retries": 0,
            "worker_lease_seconds": 3,
            "status_after_kill": "started",
            "reported": state.status,
            "error": state.error,
            "seconds_from_kill_to_report": round(detected_after, 1),
            "next_training_request": second.status,
        },
    )
