"""HTTP routes of Label Studio's ML backend protocol (Flask 3, served by gunicorn via ``rgbt-al serve``).

Label Studio 1.23 calls ``/health`` (1 s timeout), ``/setup`` (3 s), ``/predict`` (100 s) and ``/webhook``;
older flows call ``/train``. Every error is a JSON object ``{"error": message}`` with a 4xx status when the
request is at fault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException

from ls_backend.auth import configured_credentials
from ls_backend.backend import BadRequest, RGBTBackend, project_key
from ls_backend.images import FetchError
from ls_backend.jobs import install_context
from ls_backend.label_config import LabelConfigError
from ls_backend.queues import QueueUnavailable
from ls_backend.registry import RegistryError
from ls_backend.settings import Settings

log = logging.getLogger(__name__)

#: Longest path + query string served; longer ones get a JSON 414. `rgbt-al serve` lets gunicorn read request
#: lines up to 8190 bytes (its maximum), so this app, not gunicorn's HTML page, answers such URLs.
MAX_URL_BYTES = 4096

#: HTTP methods counted by name in /metrics; any other is "other", so made-up methods add no series.
_METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
#: Job states reported by ``rgbt_jobs`` (every one, 0 included, so dashboards see a stable set).
_JOB_STATES = ("queued", "deferred", "started", "finished", "failed", "canceled")


class BackendCollector(Collector):
    """Gauges read from the queue and the registry at scrape time: jobs by state, queue up, model versions."""

    def __init__(self, backend: RGBTBackend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("rgbt_jobs", "Jobs known to the queue by status.", labels=["status"])
        counts = dict.fromkeys(_JOB_STATES, 0)
        queue_ok = self.backend.runner.ping()
        if queue_ok:
            try:
                for state in self.backend.runner.jobs(limit=500):
                    counts[state.status] = counts.get(state.status, 0) + 1
            except QueueUnavailable:  # Redis went away since the ping
                queue_ok = False
        for state_name in _JOB_STATES:
            jobs.add_metric([state_name], counts[state_name])
        yield jobs
        yield GaugeMetricFamily("rgbt_queue_up", "Whether the job queue answers.", value=int(queue_ok))
        versions = GaugeMetricFamily(
            "rgbt_model_version_info", "Current model version per project.", labels=["project", "version"]
        )
        registry = self.backend.registry
        for project in registry.projects():
            version = registry.current_version(project)
            if version:
                versions.add_metric([project, version], 1)
        yield versions


class RequestMetrics:
    """This app's Prometheus metrics (prometheus_client, one registry per app): request counts and latency
    by route, plus the backend's gauges."""

    def __init__(self, backend: RGBTBackend) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rgbt_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "rgbt_request_seconds",
            "Request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(BackendCollector(backend))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METRIC_METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)

    def exposition(self, accept: str | None) -> Response:
        """The metrics in the format the scraper asked for (Prometheus text, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return Response(encoder(self.registry), headers={"Content-Type": content_type})


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


routes = Blueprint("ml_backend", __name__)


def _backend() -> RGBTBackend:
    return current_app.extensions["rgbt_backend"]


def _settings() -> Settings:
    return current_app.extensions["rgbt_settings"]


# ------------------------------------------------------------------------------------------ every request
@routes.before_app_request
def authenticate() -> Response | tuple[Response, int] | None:
    g.started = time.perf_counter()
    raw_uri = request.environ.get("RAW_URI") or request.full_path
    if len(raw_uri.encode("utf-8", "surrogateescape")) > MAX_URL_BYTES:
        return jsonify(error=f"URL longer than {MAX_URL_BYTES} bytes"), 414
    credentials = current_app.extensions["rgbt_credentials"]
    if request.path == "/health" or (credentials is None and _settings().allow_unauthenticated):
        return None
    auth = request.authorization
    if (
        credentials is not None
        and auth is not None
        and auth.type == "basic"
        and credentials.matches(auth.username, auth.password)
    ):
        return None
    message = "authentication required"
    if credentials is None:
        message += " (this backend has no credentials configured: see its log)"
    response = jsonify(error=message)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="rgbt-active-learning"'
    return response


@routes.after_app_request
def record(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics: RequestMetrics = current_app.extensions["rgbt_metrics"]
    metrics.observe(request.method, route, response.status_code, time.perf_counter() - g.get("started", 0))
    return response


# ------------------------------------------------------------------------------------------ errors as JSON
@routes.app_errorhandler(BadRequest)
def bad_request(error: BadRequest):
    return jsonify(error=str(error)), error.status


@routes.app_errorhandler(LabelConfigError)
def bad_config(error: LabelConfigError):
    return jsonify(error=f"label config: {error}"), 400


@routes.app_errorhandler(FetchError)
def bad_image(error: FetchError):
    # The fetcher's 5xx (Label Studio or an allowed host unreachable or failing) is still the request's
    # problem: it names images that cannot be had. 422, so a 5xx always means a bug of this backend.
    status = getattr(error, "status", 400)
    return jsonify(error=str(error)), status if 400 <= status < 500 else 422


@routes.app_errorhandler(RegistryError)
def bad_registry(error: RegistryError):
    return jsonify(error=str(error)), 404


@routes.app_errorhandler(QueueUnavailable)
def queue_unavailable(error: QueueUnavailable):
    # Redis is down or restarting: /predict keeps working (models are local); webhooks and job listings
    # answer 503 so the caller knows to try again, instead of a 500 that reads as a bug.
    log.warning("%s %s: %s", request.method, request.path, error)
    response = jsonify(error=str(error))
    response.status_code = 503
    response.headers["Retry-After"] = "10"
    return response


@routes.app_errorhandler(HTTPException)
def http_error(error: HTTPException):
    return jsonify(error=error.description or error.name), error.code or 500


@routes.app_errorhandler(Exception)
def internal_error(error: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return jsonify(error=f"internal error: {type(error).__name__}"), 500


# ------------------------------------------------------------------------------------------ the protocol
def _status() -> dict[str, Any]:
    return {
        "status": "UP",
        "model_class": type(_backend()).__name__,
        "jobs": "rq" if _settings().redis_url else "embedded",
    }


@routes.get("/health")
def health():
    return jsonify(_status())


@routes.get("/")
def index():
    return jsonify(_status())


@routes.post("/setup")
def setup():
    body = _json_body()
    project = project_key(_require(body, "project", (str, int)))
    schema = _require(body, "schema", str)
    extra = body.get("extra_params")
    return jsonify(
        _backend().setup(
            project,
            schema,
            hostname=_optional_str(body, "hostname"),
            access_token=_optional_str(body, "access_token"),
            extra_params=extra if isinstance(extra, dict) else None,
        )
    )


@routes.post("/predict")
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
        _backend().predict(tasks, params.get("context"), project=project, label_config=label_config)
    )


@routes.post("/webhook")
def webhook():
    body = _json_body()
    action = _require(body, "action", str)
    return jsonify(_backend().fit(action, body))


@routes.post("/train")
def train():
    """The pre-webhook training call (Label Studio without the START_TRAINING webhook flag)."""
    body = _json_body()
    project = project_key(_require(body, "project", (str, int)))
    data: dict[str, Any] = {"project": {"id": project}}
    if isinstance(body.get("label_config"), str):
        data["project"]["label_config"] = body["label_config"]
    result = _backend().fit("START_TRAINING", data)
    return jsonify({**result, "job": result.get("job_id")}), 201


# ------------------------------------------------------------------------------------------ for admins
@routes.get("/versions")
def versions():
    body = _parse_json() or {}
    raw = request.args.get("project") or (body.get("project") if isinstance(body, dict) else None)
    if raw is None:
        raise BadRequest("missing 'project'")
    project = project_key(raw)
    backend = _backend()
    infos = backend.registry.versions(project)
    return jsonify(
        versions=[v.version for v in infos],
        current=backend.registry.current_version(project),
        details=[backend.describe_version(info) for info in infos],
    )


@routes.get("/jobs")
def jobs():
    limit = request.args.get("limit", default=50, type=int)
    return jsonify(jobs=[j.to_json() for j in _backend().runner.jobs(limit=max(1, min(limit, 500)))])


@routes.get("/jobs/<job_id>")
def job(job_id: str):
    state = _backend().runner.job(job_id)
    if state is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    return jsonify(state.to_json())


@routes.get("/metrics")
def prometheus():
    metrics: RequestMetrics = current_app.extensions["rgbt_metrics"]
    return metrics.exposition(request.headers.get("Accept"))


def create_app(settings: Settings | None = None, backend: RGBTBackend | None = None) -> Flask:
    """The WSGI application. ``rgbt-al serve`` runs ``gunicorn 'ls_backend.app:create_app()'``."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per Label Studio request
    backend = backend or RGBTBackend(settings)
    # The app owns its process's wiring: embedded jobs (no REDIS_URL) run in this process and find the
    # backend's context (registry, clients, loaded models) through it.
    install_context(backend.context)
    credentials = configured_credentials(settings)
    if credentials is None and not settings.allow_unauthenticated:
        log.error(
            "no credentials: every route but /health answers 401. Set BASIC_AUTH_USER and BASIC_AUTH_PASS, "
            "start with `rgbt-al serve` (it generates them), or set ALLOW_UNAUTHENTICATED=true"
        )
    app = Flask("rgbt-active-learning")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions.update(
        rgbt_backend=backend,
        rgbt_settings=settings,
        rgbt_credentials=credentials,
        rgbt_metrics=RequestMetrics(backend),
    )
    app.register_blueprint(routes)
    return app
