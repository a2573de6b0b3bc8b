"""Where jobs run: RQ queues in Redis when ``REDIS_URL`` is set, a background thread of the server otherwise.

Both runners expose the same small interface (:class:`JobRunner`), run the same job functions (given by
dotted name, so RQ workers can import them) and coalesce training requests the same way: at most one pending
training job per project; webhook events are counted and a job is enqueued when ``TRAIN_EVERY_N_ANNOTATIONS``
of them have arrived, or at once on an explicit request. A failed training job backs its project off: the next
one is deferred by ``TRAIN_FAILURE_BACKOFF`` seconds, doubling with every failure in a row (at most
:data:`MAX_TRAIN_BACKOFF`), and the events meanwhile join that deferred job, so an unreachable Label Studio
costs a few failed jobs an hour, not one per threshold of events.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import queue
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from ls_backend.settings import Settings

log = logging.getLogger(__name__)

TRAIN_JOB = "ls_backend.jobs.train_project"

#: The longest a project's next training job is deferred after failures in a row (seconds).
MAX_TRAIN_BACKOFF = 3600.0


_BACKOFF_MESSAGE = "project %s: training failed %d times in a row; the next training job waits %.0f s"


def backoff_delay(base: float, failures: int) -> float:
    """Seconds to defer the next training job after ``failures`` failed ones in a row."""
    if base <= 0 or failures <= 0:
        return 0.0
    return min(MAX_TRAIN_BACKOFF, base * 2 ** min(failures - 1, 30))


class QueueUnavailable(RuntimeError):
    """Redis does not answer: nothing can be queued or looked up right now (HTTP 503; try again later)."""


@dataclass
class JobState:
    """What `rgbt-al jobs` and `/jobs` show of one job."""

    id: str
    func: str
    status: str  # queued | deferred | started | finished | failed | canceled
    description: str = ""
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    progress: float | None = None
    message: str = ""
    error: str | None = None
    retries_left: int = 0
    result: Any = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not isinstance(self.result, (dict, list, str, int, float, type(None))):
            data["result"] = repr(self.result)
        return data


@dataclass
class TrainingRequest:
    """The answer to a webhook: whether it started (or joined) a training job."""

    status: str  # "enqueued" | "deferred" (after failed training: backoff_delay) | "coalesced" | "counted"
    job_id: str | None
    new_annotations: int
    threshold: int
    not_before: str | None = None  # when a deferred job may start (ISO 8601, UTC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class JobRunner(Protocol):
    settings: Settings
    #: The job function a training request enqueues.
    train_job: str
    #: Whether jobs may run in parallel in other processes (pool scoring then splits into shard jobs).
    can_shard: bool

    def enqueue(
        self,
        func: str,
        *args: Any,
        job_id: str | None = None,
        depends_on: list[str] | None = None,
        description: str = "",
        not_before: float | None = None,
    ) -> str: ...

    def request_training(self, project: str, *, force: bool, events: int = 1) -> TrainingRequest: ...

    def release_training(self, project: str, job_id: str) -> None: ...

    def jobs(self, limit: int = 50) -> list[JobState]: ...

    def job(self, job_id: str) -> JobState | None: ...

    def ping(self) -> bool: ...


def resolve(func: str) -> Callable[..., Any]:
    module, _, name = func.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def new_job_id(kind: str, project: str) -> str:
    return f"{kind}-{project}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------- progress
_progress_sink: contextvars.ContextVar[Callable[[float, str], None] | None] = contextvars.ContextVar(
    "progress_sink", default=None
)


_current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job", default=None)


def current_job_id() -> str | None:
    """The id of the job running in this thread (embedded) or process (RQ worker), else None."""
    job_id = _current_job.get()
    if job_id is not None:
        return job_id
    from rq import get_current_job

    job = get_current_job()
    return job.id if job is not None else None


def report_progress(fraction: float, message: str = "") -> None:
    """Record the running job's progress (0..1) where `rgbt-al jobs` can see it; a no-op outside jobs."""
    sink = _progress_sink.get()
    if sink is not None:
        sink(max(0.0, min(1.0, fraction)), message)
        return
    try:
        from rq import get_current_job
    except ImportError:  # pragma: no cover - rq is a dependency
        return
    job = get_current_job()
    if job is not None:
        job.meta["progress"] = max(0.0, min(1.0, fraction))
        job.meta["message"] = message
        job.save_meta()


# --------------------------------------------------------------------------------------------- embedded
@dataclass
class _ThreadJob:
    state: JobState
    args: tuple[Any, ...]
    depends_on: list[str] = field(default_factory=list)


def _enqueue_training(
    runner: JobRunner, project: str, job_id: str, count: int, threshold: int, until: float
) -> TrainingRequest:
    """Enqueue the project's claimed training job, deferred to ``until`` while a failure backoff runs."""
    deferred = until > time.time()
    runner.enqueue(
        runner.train_job,
        project,
        job_id=job_id,
        description=f"train project {project}",
        not_before=until if deferred else None,
    )
    if deferred:
        return TrainingRequest("deferred", job_id, count, threshold, _iso(until))
    return TrainingRequest("enqueued", job_id, count, threshold)


class ThreadRunner:
    """The embedded default: one background thread runs jobs in order, in the server process."""

    can_shard = False  # one thread: shards would only queue behind each other

    def __init__(self, settings: Settings, history: int = 200, train_job: str = TRAIN_JOB) -> None:
        self.settings = settings
        self.train_job = train_job
        self._queue: queue.Queue[str] = queue.Queue()
        self._jobs: OrderedDict[str, _ThreadJob] = OrderedDict()
        self._lock = threading.Lock()
        self._pending_training: dict[str, str] = {}
        self._annotation_counts: dict[str, int] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # project -> (failed in a row, deferred until)
        self._history = history
        self._thread = threading.Thread(target=self._work, name="rgbt-al-jobs", daemon=True)
        self._thread.start()

    def ping(self) -> bool:
        return self._thread.is_alive()

    def enqueue(
        self,
        func: str,
        *args: Any,
        job_id: str | None = None,
        depends_on: list[str] | None = None,
        description: str = "",
        not_before: float | None = None,
    ) -> str:
        resolve(func)  # fail now, not in the thread, if the name is wrong
        delay = max(0.0, not_before - time.time()) if not_before is not None else 0.0
        job_id = job_id or new_job_id(func.rsplit(".", 1)[-1], "x")
        state = JobState(
            id=job_id,
            func=func,
            status="scheduled" if delay > 0 else "queued",
            description=description,
            enqueued_at=_now(),
            retries_left=self.settings.job_retries,
        )
        with self._lock:
            self._jobs[job_id] = _ThreadJob(state, args, list(depends_on or []))
            while len(self._jobs) > self._history:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state.status in ("queued", "scheduled", "started"):
                    break
                self._jobs.pop(oldest)
        if delay > 0:
            timer = threading.Timer(delay, self._release_scheduled, args=(job_id,))
            timer.daemon = True
            timer.start()
        else:
            self._queue.put(job_id)
        return job_id

    def _release_scheduled(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state.status != "scheduled":
                return
            job.state.status = "queued"
        self._queue.put(job_id)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            with self._lock:
                job = self._jobs.get(job_id)
            if job is None:
                continue
            failed_dependency = self._failed_dependency(job)
            if failed_dependency:
                job.state.status = "canceled"
                job.state.error = f"dependency {failed_dependency} did not finish"
                job.state.ended_at = _now()
                continue
            self._run(job)

    def _failed_dependency(self, job: _ThreadJob) -> str | None:
        with self._lock:
            for dependency in job.depends_on:
                state = self._jobs.get(dependency)
                if state is None or state.state.status != "finished":
                    return dependency
        return None

    def _run(self, job: _ThreadJob) -> None:
        state = job.state
        func = resolve(state.func)

        def sink(fraction: float, message: str) -> None:
            state.progress, state.message = fraction, message

        while True:
            state.status, state.started_at = "started", _now()
            token = _progress_sink.set(sink)
            job_token = _current_job.set(state.id)
            try:
                state.result = func(*job.args)
                state.status = "finished"
                state.error = None
            except Exception as error:  # a job's failure must never kill the worker thread
                state.error = f"{type(error).__name__}: {error}"
                log.error("job %s failed: %s\n%s", state.id, state.error, traceback.format_exc())
                if state.retries_left > 0:
                    state.retries_left -= 1
                    state.status = "queued"
                    attempt = self.settings.job_retries - state.retries_left
                    time.sleep(self.settings.job_retry_delay * 2 ** (attempt - 1))
                    continue
                state.status = "failed"
            finally:
                _progress_sink.reset(token)
                _current_job.reset(job_token)
                state.ended_at = _now()
            if state.func == self.train_job and job.args:
                self._training_ended(str(job.args[0]), failed=state.status == "failed")
            return

    def _training_ended(self, project: str, *, failed: bool) -> None:
        with self._lock:
            if not failed:
                self._failures.pop(project, None)
                return
            failures = self._failures.get(project, (0, 0.0))[0] + 1
            delay = backoff_delay(self.settings.train_failure_backoff, failures)
            self._failures[project] = (failures, time.time() + delay)
        log.warning(_BACKOFF_MESSAGE, project, failures, delay)

    def request_training(self, project: str, *, force: bool, events: int = 1) -> TrainingRequest:
        threshold = self.settings.train_every_n_annotations
        with self._lock:
            count = self._annotation_counts.get(project, 0) + events
            self._annotation_counts[project] = count
            pending = self._pending_training.get(project)
            if (
                pending is not None
                and self._jobs.get(pending)
                and self._jobs[pending].state.status in ("queued", "scheduled")
            ):
                return TrainingRequest("coalesced", pending, count, threshold)
            if not force and count < threshold:
                return TrainingRequest("counted", None, count, threshold)
            job_id = new_job_id("train", project)
            self._pending_training[project] = job_id
            self._annotation_counts[project] = 0
            until = self._failures.get(project, (0, 0.0))[1]
        return _enqueue_training(self, project, job_id, count, threshold, until)

    def release_training(self, project: str, job_id: str) -> None:
        with self._lock:
            if self._pending_training.get(project) == job_id:
                del self._pending_training[project]

    def jobs(self, limit: int = 50) -> list[JobState]:
        with self._lock:
            return [j.state for j in reversed(self._jobs.values())][:limit]

    def job(self, job_id: str) -> JobState | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job.state if job else None

    def wait_idle(self, timeout: float = 600.0) -> bool:
        """Block until no job is queued or running (tests, the demo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = any(j.state.status in ("queued", "started") for j in self._jobs.values())
            if not busy:
                return True
            time.sleep(0.1)
        return False


# --------------------------------------------------------------------------------------------- RQ
class RQRunner:
    """RQ queues in Redis; `rgbt-al worker` processes run the jobs (one per GPU)."""

    can_shard = True

    def __init__(self, settings: Settings, connection=None, train_job: str = TRAIN_JOB) -> None:
        from redis import Redis
        from rq import Queue

        self.settings = settings
        self.train_job = train_job
        # A bounded connect: an unreachable Redis (host gone, packets dropped) makes webhooks answer 503 in
        # seconds instead of holding a server thread until the TCP timeout.
        self.connection = connection or Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        self.queue = Queue(settings.queue_name, connection=self.connection)
        self.prefix = f"rgbt-al:{settings.queue_name}"

    @contextmanager
    def _available(self) -> Iterator[None]:
        """Redis outages as :class:`QueueUnavailable` (the web process answers 503, not a crash)."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as error:
            where = self.connection.connection_pool.connection_kwargs
            raise QueueUnavailable(
                f"the job queue (Redis at {where.get('host', '?')}:{where.get('port', '?')}) does not "
                f"answer: {error}"
            ) from error

    def ping(self) -> bool:
        try:
            return bool(self.connection.ping())
        except Exception:
            return False

    def enqueue(
        self,
        func: str,
        *args: Any,
        job_id: str | None = None,
        depends_on: list[str] | None = None,
        description: str = "",
        not_before: float | None = None,
    ) -> str:
        from rq import Callback, Retry

        resolve(func)
        retries = self.settings.job_retries
        delay = self.settings.job_retry_delay
        retry = Retry(max=retries, interval=[int(delay * 2**i) for i in range(retries)]) if retries else None
        options: dict[str, Any] = {}
        if func == self.train_job:
            # The worker reports how training ended, for the project's backoff (see training_failed).
            options = {
                "on_success": Callback(training_succeeded),
                "on_failure": Callback(training_failed),
                "meta": {"failure_backoff": self.settings.train_failure_backoff},
            }
        kwargs = dict(
            job_id=job_id,
            depends_on=depends_on or None,
            description=description or func,
            job_timeout=self.settings.job_timeout,
            result_ttl=7 * 24 * 3600,
            failure_ttl=7 * 24 * 3600,
            retry=retry,
            **options,
        )
        with self._available():
            if not_before is not None and not_before > time.time():
                job = self.queue.enqueue_at(datetime.fromtimestamp(not_before, UTC), func, *args, **kwargs)
            else:
                job = self.queue.enqueue(func, *args, **kwargs)
        return job.id

    def _pending_key(self, project: str) -> str:
        return f"{self.prefix}:pending-train:{project}"

    def _count_key(self, project: str) -> str:
        return f"{self.prefix}:new-annotations:{project}"

    def request_training(self, project: str, *, force: bool, events: int = 1) -> TrainingRequest:
        with self._available():
            return self._request_training(project, force=force, events=events)

    def _request_training(self, project: str, *, force: bool, events: int) -> TrainingRequest:
        threshold = self.settings.train_every_n_annotations
        count = int(self.connection.incrby(self._count_key(project), events))
        pending = self._live_pending(project)
        if pending is not None:
            return TrainingRequest("coalesced", pending, count, threshold)
        if not force and count < threshold:
            return TrainingRequest("counted", None, count, threshold)
        job_id = new_job_id("train", project)
        claim = f"{job_id}|{time.time():.3f}"
        # SET NX: of concurrent webhook requests, exactly one claims the pending slot and enqueues.
        if not self.connection.set(self._pending_key(project), claim, nx=True, ex=self.settings.job_timeout):
            return TrainingRequest("coalesced", self._live_pending(project), count, threshold)
        self.connection.set(self._count_key(project), 0)
        until = float(self.connection.hget(_backoff_key(self.settings.queue_name, project), "until") or 0)
        return _enqueue_training(self, project, job_id, count, threshold, until)

    #: A claim whose job is not in Redis yet is still being enqueued for this long; older, it is stale.
    CLAIM_GRACE_SECONDS = 60.0

    def _live_pending(self, project: str) -> str | None:
        """The pending training job while it still waits to start.

        A claim is stale when its job started or ended (a new round may then be queued) or vanished from
        Redis (flushed, deleted) for longer than the enqueue grace; stale claims are removed so the next
        event can enqueue again.
        """
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        raw = self.connection.get(self._pending_key(project))
        if raw is None:
            return None
        job_id, _, claimed_at = raw.decode().partition("|")
        try:
            status = Job.fetch(job_id, connection=self.connection).get_status(refresh=True)
            status_name = str(getattr(status, "value", status))
        except NoSuchJobError:
            status_name = "missing"
        if status_name in ("queued", "deferred", "scheduled", "created"):
            return job_id
        if status_name == "missing" and time.time() - float(claimed_at or 0) < self.CLAIM_GRACE_SECONDS:
            return job_id
        self._delete_if_equal(self._pending_key(project), raw)
        return None

    def _delete_if_equal(self, key: str, expected: bytes) -> None:
        """Compare-and-delete, so a fresh claim made meanwhile by another request survives."""
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) == expected:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except WatchError:
                pass

    def release_training(self, project: str, job_id: str) -> None:
        key = self._pending_key(project)
        raw = self.connection.get(key)
        if raw is not None and raw.decode().partition("|")[0] == job_id:
            self._delete_if_equal(key, raw)

    def _state(self, job) -> JobState:
        status = job.get_status(refresh=False)
        error = None
        if status is not None and str(getattr(status, "value", status)) == "failed":
            result = job.latest_result()  # (job.exc_info is deprecated in RQ 2+)
            text = result.exc_string if result is not None and result.exc_string else ""
            error = (text.strip().splitlines()[-1:] or ["failed"])[0]
        return JobState(
            id=job.id,
            func=job.func_name,
            status=str(getattr(status, "value", status)),
            description=job.description or "",
            enqueued_at=job.enqueued_at.isoformat(timespec="seconds") if job.enqueued_at else None,
            started_at=job.started_at.isoformat(timespec="seconds") if job.started_at else None,
            ended_at=job.ended_at.isoformat(timespec="seconds") if job.ended_at else None,
            progress=job.meta.get("progress"),
            message=job.meta.get("message", ""),
            error=error,
            retries_left=job.retries_left or 0,
            result=job.return_value() if str(getattr(status, "value", status)) == "finished" else None,
        )

    def jobs(self, limit: int = 50) -> list[JobState]:
        with self._available():
            return self._jobs(limit)

    def _jobs(self, limit: int) -> list[JobState]:
        from rq.job import Job

        ids: list[str] = []
        registries = [
            self.queue.started_job_registry,
            self.queue,
            self.queue.deferred_job_registry,
            self.queue.scheduled_job_registry,
            self.queue.failed_job_registry,
            self.queue.finished_job_registry,
            self.queue.canceled_job_registry,
        ]
        for registry in registries:
            ids.extend(registry.get_job_ids())
        jobs = [j for j in Job.fetch_many(list(dict.fromkeys(ids)), connection=self.connection) if j]
        jobs.sort(key=lambda j: j.enqueued_at or j.created_at, reverse=True)
        return [self._state(j) for j in jobs[:limit]]

    def job(self, job_id: str) -> JobState | None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            with self._available():
                return self._state(Job.fetch(job_id, connection=self.connection))
        except NoSuchJobError:
            return None


def _backoff_key(queue_name: str, project: str) -> str:
    return f"rgbt-al:{queue_name}:train-backoff:{project}"


def training_failed(job: Any, connection: Any, *exc_info: Any) -> None:
    """RQ failure callback of training jobs (runs in the worker): one more failure in a row for the
    project; its next training job waits :func:`backoff_delay` seconds."""
    project = str(job.args[0]) if job.args else ""
    base = float(job.meta.get("failure_backoff", 0.0))
    if not project or base <= 0:
        return
    key = _backoff_key(job.origin, project)
    failures = int(connection.hincrby(key, "failures", 1))
    delay = backoff_delay(base, failures)
    connection.hset(key, "until", f"{time.time() + delay:.3f}")
    connection.expire(key, int(delay) + 24 * 3600)
    log.warning(_BACKOFF_MESSAGE, project, failures, delay)


def training_succeeded(job: Any, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """RQ success callback of training jobs: the project's backoff is over."""
    if job.args:
        connection.delete(_backoff_key(job.origin, str(job.args[0])))


def make_runner(settings: Settings) -> JobRunner:
    """RQ when REDIS_URL is set, else the embedded thread."""
    return RQRunner(settings) if settings.redis_url else ThreadRunner(settings)
