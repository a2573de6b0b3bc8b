"""Faults against the whole product with a real Label Studio: a worker SIGKILLed mid-training, Redis
restarted under a running backend and worker, Label Studio going away during a prediction push.

Processes are real (`rgbt-al serve` under gunicorn, `rgbt-al worker`, `redis-server`, Label Studio); the
only things in between are two proxies of this file, real TCP and HTTP servers that forward to Label Studio
and can refuse or drop connections on cue. Figures ("worker_sigkill", "redis_restart", "studio_down_push")
go to the reliability figures (``tests/reliability.py``: a temporary file, or
``benchmarks/results/reliability.json`` with ``make reliability``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from rq.registry import FailedJobRegistry

from ls_backend.admin import wait_for
from ls_backend.app import create_app
from ls_backend.backend import RGBTBackend
from ls_backend.jobs import JobContext
from ls_backend.processes import BackendServer, RedisServer, Worker, child_env
from ls_backend.queues import JobState, RQRunner
from ls_backend.registry import ModelRegistry, ProjectInfo
from ls_backend.settings import Settings
from ls_backend.studio import StudioClient, StudioError
from ls_backend.studio_server import LabelStudioServer, free_port
from tests.e2e.conftest import SHARED_REDIS_URL, LabelledProject, stack_settings
from tests.reliability import latency_summary, merge_results

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------------------------------ helpers
def files_of(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (hidden ones included) with the SHA-256 of its content."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def private_redis_stack(
    label_studio: LabelStudioServer, tmp_path: Path, **overrides: str
) -> tuple[RedisServer, dict[str, str]]:
    """A private, non-persistent Redis (not started yet) and the stack settings of a backend on it that
    trains every 3 annotations."""
    redis = RedisServer(free_port(), log_path=tmp_path / "redis" / "redis.log")
    values = stack_settings(
        label_studio.url,
        label_studio.token,
        tmp_path / "models",
        redis_url=redis.url,
        queue="rgbt-al",
        TRAIN_EVERY_N_ANNOTATIONS="3",
        **overrides,
    )
    return redis, values


def job_in(runner: RQRunner, job_id: str, status: str, *alive: Worker | BackendServer) -> JobState | None:
    """The job's state once it has ``status`` (None before); fails at once when a process died."""
    for process in alive:
        process.check_alive()
    state = runner.job(job_id)
    return state if state is not None and state.status == status else None


def registered_project(values: dict[str, str], project: LabelledProject) -> tuple[ModelRegistry, str]:
    """The project known to the backend's registry (what `/setup` does) with a first version published and
    current; returns the registry and that version."""
    settings = Settings.from_env(values)
    registry = ModelRegistry(settings.model_dir)
    registry.save_project(ProjectInfo(project.key, project.label_config))
    model = JobContext(settings).initial_model(project.schema)
    return registry, registry.publish(project.key, model).version


def model_version(label_studio: LabelStudioServer, project: LabelledProject) -> str:
    with StudioClient(label_studio.url, label_studio.token) as client:
        return str(client.get_project(project.id).get("model_version") or "")


def predictions_of(label_studio: LabelStudioServer, project: LabelledProject, version: str) -> set[int]:
    """Tasks with a prediction of ``version`` (read from Label Studio directly, not through a proxy)."""
    with StudioClient(label_studio.url, label_studio.token) as client:
        predictions = client.list_predictions(project_id=project.id)
    return {int(p["task"]) for p in predictions if p["model_version"] == version}


# ------------------------------------------------------------------------------------------ worker SIGKILL
def test_worker_killed_mid_training_leaves_the_previous_version_and_the_job_is_retried(
    label_studio: LabelStudioServer,
    labelled_project: Callable[..., LabelledProject],
    queue_name: str,
    tmp_path: Path,
) -> None:
    """SIGKILL the worker while it trains: the previous version stays current, the registry holds no new or
    partial file, RQ still believes the job runs; once the dead worker's lease runs out a new worker retries
    the same job, which publishes the next version and pushes its predictions."""
    project = labelled_project("fault sigkill", pairs=10, annotated=6)
    values = stack_settings(
        label_studio.url,
        label_studio.token,
        tmp_path / "models",
        redis_url=SHARED_REDIS_URL,
        queue=queue_name,
        TRAIN_EPOCHS="300",  # long enough to be killed in the middle; the retry trains one epoch
        JOB_MAX_RETRIES="1",
        # No delay: a delayed retry waits for an RQ scheduler, and the killed worker's scheduler lock
        # outlives it by about a minute before another worker's scheduler takes over.
        JOB_RETRY_DELAY="0",
        WORKER_LEASE_SECONDS="3",
        HOLDOUT_FRACTION="0.0",
    )
    registry, previous = registered_project(values, project)
    project_dir = registry.project_dir(project.key)
    before = files_of(project_dir)
    runner = RQRunner(Settings.from_env(values))
    request = runner.request_training(project.key, force=True)
    assert request.status == "enqueued" and request.job_id
    job_id = request.job_id

    doomed = Worker(env=child_env(values), log_path=tmp_path / "worker-killed.log").start()
    try:

        def training() -> str | None:
            doomed.check_alive()
            state = runner.job(job_id)
            return state.message if state is not None and state.message.startswith("epoch") else None

        progress_at_kill = wait_for(training, timeout=180, interval=0.1, what="the training epochs to start")
        doomed.kill(signal.SIGKILL)
        assert doomed.process is not None and doomed.process.wait(30) == -signal.SIGKILL
    finally:
        doomed.stop()
    killed_at = time.monotonic()

    # Right after the kill: nothing changed on disk, and RQ has not noticed yet.
    assert registry.current_version(project.key) == previous
    assert [v.version for v in registry.versions(project.key)] == [previous]
    assert files_of(project_dir) == before, "the killed training left files behind"
    assert runner.job(job_id).status == "started"

    survivor_values = {**values, "TRAIN_EPOCHS": "1"}
    with Worker(env=child_env(survivor_values), log_path=tmp_path / "worker-next.log") as survivor:
        state = wait_for(
            lambda: job_in(runner, job_id, "finished", survivor),
            timeout=240,
            interval=0.2,
            what="the killed job to be retried and finish",
        )
        recovered_after = time.monotonic() - killed_at
        assert state.retries_left == 0  # the same job, on its one retry
        result = state.result
        assert result["status"] == "trained" and result["parent"] == previous
        current = registry.current_version(project.key)
        assert current == result["version"] != previous
        assert [v.version for v in registry.versions(project.key)] == [previous, current]
        assert not [p.name for p in (project_dir / "versions").iterdir() if p.name.startswith(".")]
        assert files_of(project_dir / "versions" / previous) == {
            k.split("/", 2)[2]: v for k, v in before.items() if k.startswith(f"versions/{previous}/")
        }
        scoring = wait_for(
            lambda: job_in(runner, result["score_job"], "finished", survivor),
            timeout=240,
            interval=0.5,
            what="the new version's predictions to be pushed",
        )
    assert model_version(label_studio, project) == current
    assert predictions_of(label_studio, project, current) == project.unlabelled
    merge_results(
        "worker_sigkill",
        {
            "progress_at_kill": progress_at_kill,
            "status_right_after_kill": "started",
            "current_version_after_kill": "previous (unchanged)",
            "files_changed_by_killed_training": 0,
            "worker_lease_seconds": 3,
            "seconds_from_kill_to_retried_job_finished": round(recovered_after, 1),
            "job_retries_used": 1,
            "final_status": state.status,
            "predictions_pushed_after_recovery": scoring.result["scored"],
        },
    )


# ------------------------------------------------------------------------------------------ Redis restart
def test_redis_restart_keeps_predict_answering_and_the_next_event_enqueues(
    label_studio: LabelStudioServer,
    labelled_project: Callable[..., LabelledProject],
    tmp_path: Path,
) -> None:
    """Redis (a private, non-persistent one) is killed under a running backend and worker: `/predict` keeps
    answering with predictions, `/webhook` and `/jobs` answer a clear 503 JSON error, `/health` stays up.
    Redis comes back empty on the same port: the next event enqueues training again and the same worker,
    still running, trains and publishes a version that `/predict` then serves."""
    project = labelled_project("fault redis restart", pairs=8, annotated=4)
    redis, values = private_redis_stack(label_studio, tmp_path, HOLDOUT_FRACTION="0.0")
    backend = BackendServer(free_port(), env=child_env(values), log_path=tmp_path / "backend.log", threads=4)
    worker = Worker(env=child_env(values), log_path=tmp_path / "worker.log")
    with StudioClient(label_studio.url, label_studio.token) as client:
        tasks = [{"id": t["id"], "data": t["data"]} for t in client.iter_tasks(project.id, labeled=False)]
    predict = {
        "tasks": tasks[:2],
        "project": f"{project.id}.1700000000",
        "label_config": project.label_config,
    }
    event = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 1, "result": []},
        "task": {"id": project.annotated[0]},
        "project": {"id": project.id, "label_config": project.label_config},
    }
    with redis, backend, worker:
        redis.wait_ready()
        backend.wait_ready()
        session = backend.session()
        assert session.post(backend.url + "/webhook", json=event, timeout=30).json()["status"] == "counted"
        wait_for(
            lambda: worker.check_alive() or "Listening on" in worker.log_path.read_text(),
            timeout=120,
            interval=0.2,
            what="the worker to listen",
        )

        redis.kill(signal.SIGKILL)
        assert redis.process is not None and redis.process.wait(30) == -signal.SIGKILL
        outage: dict[str, Any] = {"predict": [], "webhook": [], "jobs": [], "health": []}
        seconds: dict[str, list[float]] = {"predict": [], "webhook": []}
        for _ in range(5):
            started = time.perf_counter()
            answer = session.post(backend.url + "/predict", json=predict, timeout=60)
            seconds["predict"].append(time.perf_counter() - started)
            outage["predict"].append(answer.status_code)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model_version"] == "rgbt-initial" and len(body["results"]) == 2
            assert all("score" in r for r in body["results"])
        for _ in range(3):
            started = time.perf_counter()
            answer = session.post(backend.url + "/webhook", json=event, timeout=60)
            seconds["webhook"].append(time.perf_counter() - started)
            outage["webhook"].append(answer.status_code)
            assert answer.status_code == 503, answer.text
            assert "job queue" in answer.json()["error"] and answer.headers["Retry-After"]
        answer = session.get(backend.url + "/jobs", timeout=60)
        outage["jobs"].append(answer.status_code)
        assert answer.status_code == 503 and "job queue" in answer.json()["error"]
        answer = session.get(backend.url + "/health", timeout=60)
        outage["health"].append(answer.status_code)
        assert answer.status_code == 200
        metrics = session.get(backend.url + "/metrics", timeout=60)
        assert metrics.status_code == 200 and "rgbt_queue_up 0" in metrics.text

        redis.restart()  # empty: the count of the event before the outage is gone with it
        restarted_at = time.monotonic()
        train = {"action": "START_TRAINING", "project": {"id": project.id}}
        answer = session.post(backend.url + "/webhook", json=train, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "enqueued"
        runner = RQRunner(Settings.from_env(values))
        state = wait_for(
            lambda: job_in(runner, answer.json()["job_id"], "finished", worker, backend),
            timeout=240,
            interval=0.5,
            what="the worker that lived through the restart to train",
        )
        trained_after = time.monotonic() - restarted_at
        version = state.result["version"]
        served = session.post(backend.url + "/predict", json=predict, timeout=60).json()
        assert served["model_version"] == version
        session.close()
    merge_results(
        "redis_restart",
        {
            "during_outage": {
                route: {"requests": len(codes), "answers": sorted(set(codes))}
                for route, codes in outage.items()
            },
            "predict_failures_during_outage": sum(1 for code in outage["predict"] if code != 200),
            "latency_during_outage": {route: latency_summary(samples) for route, samples in seconds.items()},
            "after_restart": "START_TRAINING enqueued; the worker (same process) trained and published",
            "seconds_from_restart_to_new_version": round(trained_after, 1),
            "redis": "private redis-server, no persistence, SIGKILL then restart on the same port",
        },
    )


def test_webhooks_refused_while_redis_was_down_still_start_a_round(
    label_studio: LabelStudioServer,
    labelled_project: Callable[..., LabelledProject],
    tmp_path: Path,
) -> None:
    """Label Studio does not retry a webhook the backend refused with 503 (Redis down). When Redis is back
    (empty: a private, non-persistent one), the next event makes the backend count with Label Studio the
    tasks annotated since the project's current version: enough of them start the round the lost events
    would have started; annotations older than the current version do not."""
    lost = labelled_project("lost webhooks", pairs=6, annotated=4)  # four annotations, no version yet
    trained = labelled_project("trained since", pairs=6, annotated=4)
    redis, values = private_redis_stack(label_studio, tmp_path)
    # The app runs in this process and is called directly: open on purpose (auth has its own tests).
    settings = Settings.from_env(values, allow_unauthenticated=True)

    def event(project: LabelledProject, task: int) -> dict[str, Any]:
        return {
            "action": "ANNOTATION_CREATED",
            "annotation": {"id": task, "result": []},
            "task": {"id": task},
            "project": {"id": project.id, "label_config": project.label_config},
        }

    with redis:
        redis.wait_ready()
        runner = RQRunner(settings)
        backend = RGBTBackend(settings, runner=runner)
        client = create_app(settings, backend).test_client()
        # The second project's annotations all predate its current version.
        backend.registry.publish(trained.key, JobContext(settings).initial_model(trained.schema))
        redis.kill(signal.SIGKILL)
        assert redis.process is not None and redis.process.wait(30) == -signal.SIGKILL
        for project in (lost, trained):
            for task in project.annotated[:3]:
                answer = client.post("/webhook", json=event(project, task))
                assert answer.status_code == 503, answer.get_json()
        redis.restart()
        answer = client.post("/webhook", json=event(lost, lost.annotated[3]))
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["status"] == "enqueued", answer.get_json()
        state = runner.job(answer.get_json()["job_id"])
        assert state is not None and state.description == f"train project {lost.id}"
        answer = client.post("/webhook", json=event(trained, trained.annotated[3]))
        assert answer.status_code == 200 and answer.get_json()["status"] == "counted", answer.get_json()
        assert answer.get_json()["new_annotations"] == 1
        # Reconciled once: later events of the first project join the pending round as usual.
        answer = client.post("/webhook", json=event(lost, lost.annotated[0]))
        assert answer.get_json()["status"] == "coalesced"


# ------------------------------------------------------------------------------------------ proxies
class TcpProxy:
    """A TCP forwarder on a fixed loopback port to Label Studio that can stop listening (connection refused,
    as while Label Studio restarts) and listen again on the same port."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self.open()

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            doomed, self._sockets = self._sockets, []
        for sock in ([listener] if listener else []) + doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_IMPORT = re.compile(r"^/api/projects/\d+/import/predictions")
_PROJECT = re.compile(r"^/api/projects/\d+/?$")


class StudioProxy:
    """An HTTP proxy in front of the real Label Studio that forwards everything, logs what it forwarded, and
    on cue lets Label Studio "die" during a push: after ``outage_after(n)`` the next ``n`` prediction imports
    pass and every later one has its connection closed without an answer, until :meth:`heal`."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.log: list[dict[str, Any]] = []
        self.dropped = 0
        self._imports_left: int | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def outage_after(self, imports: int) -> None:
        with self._lock:
            self._imports_left = imports

    def heal(self) -> None:
        with self._lock:
            self._imports_left = None

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        path = urlsplit(handler.path).path
        entry: dict[str, Any] = {"method": handler.command, "path": path}
        if handler.command == "POST" and _IMPORT.match(path):
            page = json.loads(body)
            entry["tasks"] = sorted(int(p["task"]) for p in page)
            entry["versions"] = sorted({p["model_version"] for p in page})
            with self._lock:
                drop = self._imports_left is not None and self._imports_left <= 0
                if self._imports_left is not None and not drop:
                    self._imports_left -= 1
                if drop:
                    self.dropped += 1
            if drop:
                entry["status"] = "dropped"
                with self._lock:
                    self.log.append(entry)
                handler.close_connection = True  # no answer at all: Label Studio went away mid-request
                return
        if handler.command == "PATCH" and _PROJECT.match(path):
            entry["model_version"] = json.loads(body or b"{}").get("model_version")
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        answer = requests.request(
            handler.command,
            self.target + handler.path,
            data=body,
            headers=headers,
            timeout=60,
            allow_redirects=False,
        )
        entry["status"] = answer.status_code
        with self._lock:
            self.log.append(entry)
        handler.send_response(answer.status_code)
        handler.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        handler.send_header("Content-Length", str(len(answer.content)))
        handler.end_headers()
        handler.wfile.write(answer.content)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------ Label Studio down
def test_studio_client_retries_with_backoff_while_the_port_is_closed(
    label_studio: LabelStudioServer, labelled_project: Callable[..., LabelledProject]
) -> None:
    """Label Studio's port refuses connections during a bulk prediction import: the client retries with
    doubling waits; when the port reopens before the attempts run out the page goes in, otherwise the error
    comes after a bounded number of attempts."""
    project = labelled_project("fault port closed", pairs=3, annotated=0)
    page = [{"task": t, "result": [], "score": 0.5, "model_version": "port-test"} for t in project.task_ids]
    proxy = TcpProxy(label_studio.url)
    warnings: list[str] = []
    reopen = threading.Event()

    class ReopenAfterTwoRetries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())
            if reopen.is_set() and len(warnings) == 2:
                proxy.open()  # Label Studio is back before the third attempt

    studio_log = logging.getLogger("ls_backend.studio")
    handler = ReopenAfterTwoRetries(logging.WARNING)
    studio_log.addHandler(handler)
    level = studio_log.level
    studio_log.setLevel(logging.WARNING)
    try:
        with StudioClient(proxy.url, label_studio.token, retries=4, backoff=0.2) as client:
            assert client.get_project(project.id)["id"] == project.id  # through the proxy
            proxy.close()
            reopen.set()
            assert client.import_predictions(project.id, page) == len(page)
            recovered = list(warnings)

            proxy.close()
            reopen.clear()
            warnings.clear()
            with pytest.raises(StudioError) as info:
                client.import_predictions(project.id, page)
            gave_up = list(warnings)
    finally:
        studio_log.removeHandler(handler)
        studio_log.setLevel(level)
        proxy.close()

    waits = [re.search(r"attempt (\d)/4, retrying in ([\d.]+) s", m).groups() for m in recovered + gave_up]
    expected = [("1", "0.2"), ("2", "0.4"), ("1", "0.2"), ("2", "0.4"), ("3", "0.8")]
    assert waits == expected, recovered + gave_up
    assert info.value.status is None and "after 4 attempts" in str(info.value)
    assert "cannot reach Label Studio" in str(info.value)
    assert predictions_of(label_studio, project, "port-test") == set(project.task_ids)
    merge_results(
        "studio_down_client",
        {
            "recovered": {"attempts": len(recovered) + 1, "waits_s": [float(w) for _, w in waits[:2]]},
            "gave_up": {"attempts": len(gave_up) + 1, "waits_s": [float(w) for _, w in waits[2:]]},
            "error": str(info.value)[:200],
        },
    )


def test_studio_down_during_push_keeps_the_old_model_version_until_every_prediction_is_in(
    label_studio: LabelStudioServer,
    labelled_project: Callable[..., LabelledProject],
    queue_name: str,
    tmp_path: Path,
) -> None:
    """Label Studio drops every prediction import after the first page of a new version: each push is tried
    a bounded number of times, the job fails after its RQ retry, and the project keeps the old
    ``model_version`` although part of the new version's predictions are in. With Label Studio back, a
    retry of the job pushes every page and only then switches the project to the new version."""
    project = labelled_project("fault studio down", pairs=12, annotated=4)
    proxy = StudioProxy(label_studio.url)
    values = stack_settings(
        proxy.url,
        label_studio.token,
        tmp_path / "models",
        redis_url=SHARED_REDIS_URL,
        queue=queue_name,
        PUSH_PAGE_SIZE="4",
        SCORE_BATCH_SIZE="4",
        JOB_MAX_RETRIES="1",
    )
    registry, old = registered_project(values, project)
    runner = RQRunner(Settings.from_env(values))
    pages = -(-len(project.unlabelled) // 4)
    try:
        with Worker(env=child_env(values), log_path=tmp_path / "worker.log") as worker:
            first = runner.enqueue("ls_backend.jobs.score_pool", project.key, old)
            wait_for(
                lambda: job_in(runner, first, "finished", worker), timeout=180, interval=0.3, what="scoring"
            )
            assert model_version(label_studio, project) == old

            model = JobContext(Settings.from_env(values)).initial_model(project.schema)
            new = registry.publish(project.key, model)
            proxy.outage_after(1)
            started = time.monotonic()
            job_id = runner.enqueue("ls_backend.jobs.score_pool", project.key, new.version)
            failed = wait_for(
                lambda: job_in(runner, job_id, "failed", worker),
                timeout=240,
                interval=0.3,
                what="the push to fail for good",
            )
            failed_after = time.monotonic() - started
            assert failed.retries_left == 0
            assert "after 4 attempts" in (failed.error or "") and "import/predictions" in failed.error
            # 4 attempts per push: the first run lost its second page, the retried run both pages.
            assert proxy.dropped == 4 * (pages - 1) + 4 * pages
            partial = predictions_of(label_studio, project, new.version)
            # Some of the new version's predictions are in, but the project still ranks by the old one.
            assert 0 < len(partial) < len(project.unlabelled)
            assert model_version(label_studio, project) == old

            proxy.heal()
            FailedJobRegistry(queue=runner.queue).requeue(job_id)
            done = wait_for(
                lambda: job_in(runner, job_id, "finished", worker),
                timeout=240,
                interval=0.3,
                what="the retried push",
            )
    finally:
        proxy.close()
    assert done.result["model_version"] == new.version
    assert model_version(label_studio, project) == new.version
    assert predictions_of(label_studio, project, new.version) == project.unlabelled

    # The proxy's log: the switch to the new version came after a successful import of every unlabelled task.
    switches = [i for i, e in enumerate(proxy.log) if e.get("model_version") == new.version]
    assert switches, [e for e in proxy.log if "model_version" in e]
    pushed: set[int] = set()
    for entry in proxy.log[: switches[0]]:
        if entry.get("versions") == [new.version] and entry["status"] in range(200, 300):
            pushed |= set(entry["tasks"])
    assert pushed == project.unlabelled
    imports = [e for e in proxy.log if e.get("versions") == [new.version]]
    merge_results(
        "studio_down_push",
        {
            "unlabelled_tasks": len(project.unlabelled),
            "pages_per_push": pages,
            "attempts_per_page": 4,
            "import_requests_dropped": proxy.dropped,
            "job_runs_before_reported_failed": 2,
            "seconds_until_reported_failed": round(failed_after, 1),
            "new_version_predictions_in_while_failed": len(partial),
            "model_version_while_failed": "old (unchanged)",
            "model_version_after_retry": "new",
            "import_requests_of_new_version": len(imports),
            "switch_after_all_pages": True,
        },
    )
