"""HTTP routes of Label Studio's ML backend protocol (Flask 3, served by gunicorn via ``rgbt-al serve``).

Label Studio 1.23 calls ``/health`` (1 s timeout), ``/setup`` (3 s), ``/predict`` (100 s) and ``/webhook``;
older flows call ``/train``. Every error is a JSON object ``{"error": message}`` with a 4xx status when the
request is at fault.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ls_backend.backend import BadRequest, RGBTBackend, project_key
from ls_backend.images import FetchError
from ls_backend.label_config import LabelConfigError
from ls_backend.queues import QueueUnavailable
from ls_backend.registry import RegistryError
from ls_backend.settings import Settings

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)


class RequestMetrics:
    """Request counts and latency histograms of this process, in Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(_LATENCY_BUCKETS))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.sums[route] += seconds
            self.counts[route] += 1
            for i, bound in enumerate(_LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[route][i] += 1

    def render(self) -> list[str]:
        lines = [
            "# HELP rgbt_requests_total HTTP requests by method, route and status.",
            "# TYPE rgbt_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(
                    f'rgbt_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}'
                )
            lines += [
                "# HELP rgbt_request_seconds Request latency by route.",
                "# TYPE rgbt_request_seconds histogram",
            ]
            for route in sorted(self.counts):
                for bound, count in zip(_LATENCY_BUCKETS, self.buckets[route], strict=True):
                    lines.append(f'rgbt_request_seconds_bucket{{route="{route}",le="{bound}"}} {count}')
                lines.append(f'rgbt_request_seconds_bucket{{route="{route}",le="+Inf"}} {self.counts[route]}')
                lines.append(f'rgbt_request_seconds_sum{{route="{route}"}} {self.sums[route]:.6f}')
                lines.append(f'rgbt_request_seconds_count{{route="{route}"}} {self.counts[route]}')
        return lines


def _parse_json() -> Any:
    """The request's JSON, or None when it is not JSON (wrong Content-Type, malformed, not UTF-8)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes; ``silent`` only covers ValueError
        return None


def _json_body() -> dict[str, Any]:
    body = _parse_json()
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return body


def _require(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body or body[key] is None:
        raise BadRequest(f"missing field '{key}'")
    if not isinstance(body[key], kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRequest(f"field '{key}' must be {names}")
    return body[key]


def _optional_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"field '{key}' must be str")
    return value


def create_app(settings: Settings | None = None, backend: RGBTBackend | None = None) -> Flask:
    """The WSGI application. ``rgbt-al serve`` runs ``gunicorn 'ls_backend.app:create_app()'``."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per Label Studio request
    backend = backend or RGBTBackend(settings)
    app = Flask("rgbt-active-learning")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["rgbt_backend"] = backend
    metrics = RequestMetrics()

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        if not settings.basic_auth_user or request.path == "/health":
            return None
        auth = request.authorization
        good = (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
            and hmac.compare_digest(auth.password or "", settings.basic_auth_pass)
        )
        if good:
            return None
        response = jsonify(error="authentication required")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="rgbt-active-learning"'
        return response

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.observe(
            request.method, route, response.status_code, time.perf_counter() - g.get("started", 0)
        )
        return response

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest):
        return jsonify(error=str(error)), error.status

    @app.errorhandler(LabelConfigError)
    def bad_config(error: LabelConfigError):
        return jsonify(error=f"label config: {error}"), 400

    @app.errorhandler(FetchError)
    def bad_image(error: FetchError):
        # The fetcher's 5xx (Label Studio or an allowed host unreachable or failing) is still the request's
        # problem: it names images that cannot be had. 422, so a 5xx always means a bug of this backend.
        status = getattr(error, "status", 400)
        return jsonify(error=str(error)), status if 400 <= status < 500 else 422

    @app.errorhandler(RegistryError)
    def bad_registry(error: RegistryError):
        return jsonify(error=str(error)), 404

    @app.errorhandler(QueueUnavailable)
    def queue_unavailable(error: QueueUnavailable):
        # Redis is down or restarting: /predict keeps working (models are local); webhooks and job listings
        # answer 503 so the caller knows to try again, instead of a 500 that reads as a bug.
        log.warning("%s %s: %s", request.method, request.path, error)
        response = jsonify(error=str(error))
        response.status_code = 503
        response.headers["Retry-After"] = "10"
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify(error=error.description or error.name), error.code or 500

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error=f"internal error: {type(error).__name__}"), 500

    def status() -> dict[str, Any]:
        return {
            "status": "UP",
            "model_class": type(backend).__name__,
            "jobs": "rq" if settings.redis_url else "embedded",
        }

    @app.get("/health")
    def health():
        return jsonify(status())

    @app.get("/")
    def index():
        return jsonify(status())

    @app.post("/setup")
    def setup():
        body = _json_body()
        project = project_key(_require(body, "project", (str, int)))
        schema = _require(body, "schema", str)
        extra = body.get("extra_params")
        return jsonify(
            backend.setup(
                project,
                schema,
                hostname=_optional_str(body, "hostname"),
                access_token=_optional_str(body, "access_token"),
                extra_params=extra if isinstance(extra, dict) else None,
            )
        )

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = _require(body, "tasks", list)
        if not tasks:
            raise BadRequest("'tasks' is empty")
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise BadRequest(f"task {index} must be an object with a 'data' object")
            task_id = task.get("id")
            if task_id is not None and (not isinstance(task_id, int) or isinstance(task_id, bool)):
                raise BadRequest(f"task {index}: 'id' must be an integer (a Label Studio task id)")
        project = project_key(_require(body, "project", (str, int)))
        label_config = _require(body, "label_config", str)
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        return jsonify(
            backend.predict(tasks, params.get("context"), project=project, label_config=label_config)
        )

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = _require(body, "action", str)
        return jsonify(backend.fit(action, body))

    @app.post("/train")
    def train():
        """The pre-webhook training call (Label Studio without the START_TRAINING webhook flag)."""
        body = _json_body()
        project = project_key(_require(body, "project", (str, int)))
        data: dict[str, Any] = {"project": {"id": project}}
        if isinstance(body.get("label_config"), str):
            data["project"]["label_config"] = body["label_config"]
        result = backend.fit("START_TRAINING", data)
        return jsonify({**result, "job": result.get("job_id")}), 201

    @app.get("/versions")
    def versions():
        body = _parse_json() or {}
        raw = request.args.get("project") or (body.get("project") if isinstance(body, dict) else None)
        if raw is None:
            raise BadRequest("missing 'project'")
        project = project_key(raw)
        infos = backend.registry.versions(project)
        return jsonify(
            versions=[v.version for v in infos],
            current=backend.registry.current_version(project),
            details=[backend.describe_version(info) for info in infos],
        )

    @app.get("/jobs")
    def jobs():
        limit = request.args.get("limit", default=50, type=int)
        return jsonify(jobs=[j.to_json() for j in backend.runner.jobs(limit=max(1, min(limit, 500)))])

    @app.get("/jobs/<job_id>")
    def job(job_id: str):
        state = backend.runner.job(job_id)
        if state is None:
            return jsonify(error=f"no job {job_id!r}"), 404
        return jsonify(state.to_json())

    @app.get("/metrics")
    def prometheus():
        lines = metrics.render()
        lines += ["# HELP rgbt_jobs Jobs known to the queue by status.", "# TYPE rgbt_jobs gauge"]
        counts: dict[str, int] = defaultdict(int)
        queue_ok = backend.runner.ping()
        if queue_ok:
            try:
                for state in backend.runner.jobs(limit=500):
                    counts[state.status] += 1
            except QueueUnavailable:  # Redis went away since the ping
                queue_ok = False
        for state_name in ("queued", "deferred", "started", "finished", "failed", "canceled"):
            lines.append(f'rgbt_jobs{{status="{state_name}"}} {counts.get(state_name, 0)}')
        lines += ["# HELP rgbt_queue_up Whether the job queue answers.", "# TYPE rgbt_queue_up gauge"]
        lines.append(f"rgbt_queue_up {int(queue_ok)}")
        lines += [
            "# HELP rgbt_model_version_info Current model version per project.",
            "# TYPE rgbt_model_version_info gauge",
        ]
        for project in backend.registry.projects():
            version = backend.registry.current_version(project)
            if version:
                lines.append(f'rgbt_model_version_info{{project="{project}",version="{version}"}} 1')
        return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")

    return app
