"""The Label Studio ML backend model class: ``setup``, ``predict(tasks, context)``, ``fit(event, data)``.

It follows the conventions of Label Studio's ML backend examples; the HTTP layer (``app.py``) only parses
requests and serialises answers.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from ls_backend.convert import class_names_from_schema, latest_annotation, prediction_payload
from ls_backend.images import FetchError
from ls_backend.jobs import JobContext, JobError, set_context
from ls_backend.label_config import ProjectSchema, schema_from_config
from ls_backend.queues import JobRunner, QueueUnavailable, TrainingRequest, get_runner, set_runner
from ls_backend.registry import ProjectInfo
from ls_backend.settings import Settings
from ls_backend.studio import StudioError
from model.inference import Predictor

log = logging.getLogger(__name__)

#: The version name answered before a project's first training round (ImageNet or random weights).
INITIAL_VERSION = "rgbt-initial"

#: Webhook actions that mean the labelled set changed (Label Studio 1.23 names, plural forms included).
ANNOTATION_EVENTS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "ANNOTATION_DELETED",
    }
)
START_TRAINING = "START_TRAINING"


class BadRequest(ValueError):
    """A request that cannot be served as sent; answered with 400 and this message."""

    status = 400


class UnknownProject(BadRequest):
    status = 404


class ModelMismatch(BadRequest):
    """The project's current model cannot serve its label config (detection vs segmentation)."""

    status = 409


#: Initial networks kept in memory (one per project and label set); older ones are dropped.
MAX_INITIAL_MODELS = 4


def project_key(value: Any) -> str:
    """Label Studio identifies projects as "<id>.<created timestamp>" in /setup and /predict, as ints in
    webhooks; the registry keys them by the id alone."""
    text = str(value).strip()
    key = text.split(".", 1)[0]
    # ASCII only: str.isdigit() also accepts "²" and other digits int() and the registry refuse.
    if not (key.isascii() and key.isdigit() and len(key) <= 19):
        raise BadRequest(
            f"project must be a Label Studio project id like '12' or '12.1700000000', got {value!r}"
        )
    return key


class RGBTBackend:
    """Pre-annotations from the fused branch, priorities from cross-modality inconsistency."""

    def __init__(self, settings: Settings, runner: JobRunner | None = None) -> None:
        self.settings = settings
        self.context = JobContext(settings)
        set_context(self.context)  # embedded jobs run in this process and share loaded models
        if runner is not None:
            set_runner(runner)
        self.runner = get_runner(settings)
        self._initial: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        #: Projects whose webhooks this process refused (queue down) since it last reconciled them.
        self._missed_webhooks: set[str] = set()
        self._fetch_pool = ThreadPoolExecutor(max(2, settings.predict_batch_size), thread_name_prefix="fetch")

    @property
    def registry(self):
        return self.context.registry

    # ------------------------------------------------------------------ setup
    def setup(
        self,
        project: str,
        label_config: str,
        hostname: str = "",
        access_token: str = "",
        extra_params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate the project's config and remember how to reach Label Studio. Never loads a model:
        Label Studio gives /setup 3 seconds."""
        schema_from_config(label_config)
        hostname, access_token = hostname.strip(), access_token.strip()
        if hostname:
            try:
                parts = urlsplit(hostname)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname)
                _ = parts.port  # raises on a port that is not a number in range
            except ValueError:
                valid = False
            if not valid:
                raise BadRequest(
                    "hostname must be Label Studio's http(s) URL (e.g. http://localhost:8080), "
                    f"got {hostname!r}"
                )
        if access_token and any(c.isspace() or ord(c) < 32 for c in access_token):
            raise BadRequest("access_token must be a Label Studio token (no spaces or control characters)")
        self._remember(project, label_config, hostname, access_token)
        return {"model_version": self.model_version(project)}

    def _remember(self, project: str, label_config: str, hostname: str = "", access_token: str = "") -> None:
        known = self.registry.project(project)
        info = ProjectInfo(
            project=project,
            label_config=label_config,
            hostname=hostname or (known.hostname if known else ""),
            access_token=access_token or (known.access_token if known else ""),
        )
        if known != info:
            self.registry.save_project(info)

    def model_version(self, project: str) -> str:
        return self.registry.current_version(project) or INITIAL_VERSION

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        tasks: list[dict[str, Any]],
        context: dict[str, Any] | None = None,
        *,
        project: str,
        label_config: str,
    ) -> dict[str, Any]:
        """One prediction per task, in order: fused-branch regions, score = 1 - inconsistency.

        * A project without a trained version is answered by the initial network (version ``rgbt-initial``,
          what /setup answers too), so Label Studio gets well-formed predictions from the start.
        * Per-task failures: a task whose images cannot be fetched or decoded gets
          ``{"result": [], "score": 1.0, "model_version": v, "error": message}`` (ranked last) and is
          listed in the answer's ``errors``; the other tasks are predicted. When every task fails, the
          first task's :class:`FetchError` is raised (a 4xx answer).
        * A current version of another task kind than the config (detection vs segmentation) raises
          :class:`ModelMismatch` (409) until a version for the new config is trained.

        All images are fetched before a model is loaded or built, so requests whose tasks all fail stay cheap.
        """
        schema = schema_from_config(label_config)
        if self.registry.project(project) is None:
            self._remember(project, label_config)
        version = self.model_version(project)
        if version != INITIAL_VERSION:
            trained_for = self.registry.info(project, version).task
            if trained_for != schema.task:
                raise ModelMismatch(
                    f"project {project}: the current model version {version} is a {trained_for} model but "
                    f"the label config asks for {schema.task}; start a training (START_TRAINING) to build one"
                )
        fetcher = self.context.fetcher(project)
        pairs = list(self._fetch_pool.map(lambda task: self._load(fetcher, task, schema), tasks))
        errors = [
            (task, pair) for task, pair in zip(tasks, pairs, strict=True) if isinstance(pair, FetchError)
        ]
        if errors and len(errors) == len(tasks):
            raise errors[0][1]
        good = [pair for pair in pairs if not isinstance(pair, FetchError)]
        predictor = self._predictor(project, version, schema)
        predictions = iter(predictor.predict(good, batch_size=self.settings.predict_batch_size))
        class_names = tuple(predictor.config.class_names)
        results: list[dict[str, Any]] = []
        unknown_labels: set[str] = set()
        for pair in pairs:
            if isinstance(pair, FetchError):
                # score 1.0 ranks it last: Label Studio stores a missing score as NULL, which SQLite's
                # ascending order would serve first.
                results.append({"result": [], "score": 1.0, "model_version": version, "error": str(pair)})
                continue
            payload, unknown = prediction_payload(
                next(predictions), schema, class_names, version, image_size=pair[0].shape[:2]
            )
            unknown_labels |= unknown
            results.append(payload)
        response: dict[str, Any] = {"results": results, "model_version": version}
        if unknown_labels:
            response["unknown_labels"] = sorted(unknown_labels)
            log.warning("project %s: model labels not in the config: %s", project, sorted(unknown_labels))
        if errors:
            response["errors"] = [{"task": task.get("id"), "error": str(error)} for task, error in errors]
        return response

    @staticmethod
    def _load(
        fetcher, task: dict[str, Any], schema: ProjectSchema
    ) -> tuple[np.ndarray, np.ndarray] | FetchError:
        try:
            return fetcher.load_pair(task.get("data") or {}, schema, task.get("id"))
        except FetchError as error:
            return error

    def _predictor(self, project: str, version: str, schema: ProjectSchema) -> Predictor:
        if version != INITIAL_VERSION:
            return self.context.predictor(project, version)
        # No trained version yet: answer with the initial network so Label Studio gets well-formed results.
        # Its random layers are seeded from the key, so "rgbt-initial" means the same weights in every
        # process and after the bounded cache dropped it.
        key = f"{project}:{schema.task}:{','.join(class_names_from_schema(schema))}"
        with self._lock:
            if key not in self._initial:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(zlib.crc32(key.encode()))
                    model = self.context.initial_model(schema)
                self._initial[key] = self.context.make_predictor(model)
                while len(self._initial) > MAX_INITIAL_MODELS:
                    self._initial.popitem(last=False)
            self._initial.move_to_end(key)
            return self._initial[key]

    # ------------------------------------------------------------------ fit (webhooks)
    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """A webhook: annotation changes are counted and start a (coalesced) training job; START_TRAINING
        starts one at once. Training never runs inside the request."""
        if event not in ANNOTATION_EVENTS and event != START_TRAINING:
            return {"status": "ignored", "action": event, "reason": "not an annotation or training event"}
        project_data = data.get("project")
        if not isinstance(project_data, dict) or "id" not in project_data:
            raise BadRequest("webhook body needs a 'project' object with an 'id'")
        project = project_key(project_data["id"])
        label_config = project_data.get("label_config")
        if label_config is not None and label_config != "":
            schema_from_config(label_config)  # LabelConfigError (400) for a non-string too
            self._remember(project, label_config)
        elif self.registry.project(project) is None:
            raise UnknownProject(
                f"project {project} is unknown to this backend and the webhook carries no label_config"
            )
        annotations = data.get("annotation") if event != "ANNOTATIONS_DELETED" else data.get("annotations")
        events = len(annotations) if isinstance(annotations, list) and annotations else 1
        try:
            request: TrainingRequest = self.runner.request_training(
                project, force=event == START_TRAINING, events=events
            )
        except QueueUnavailable:
            with self._lock:
                self._missed_webhooks.add(project)
            raise
        if project in self._missed_webhooks:
            request = self._reconcile(project, request)
        return {"action": event, "project": project, **request.to_json()}

    def _reconcile(self, project: str, request: TrainingRequest) -> TrainingRequest:
        """After this process refused webhooks (503: the queue was down; Label Studio does not retry them),
        count with Label Studio the tasks annotated since the current version was trained, and bring the
        project's counter up to that, so the lost events still start their training round."""
        if request.status != "counted":  # a round is pending: it trains on every labelled task
            with self._lock:
                self._missed_webhooks.discard(project)
            return request
        version = self.registry.current_version(project)
        since = _parse_time(self.registry.info(project, version).created_at) if version else None
        try:
            tasks = self.context.studio(project).iter_tasks(int(project), labeled=True)
            changed = 0
            for task in tasks:
                annotation = latest_annotation(task)
                stamp = (annotation or {}).get("updated_at") or (annotation or {}).get("created_at")
                if annotation is not None and (since is None or not stamp or _parse_time(stamp) > since):
                    changed += 1
        except (JobError, StudioError, ValueError) as error:  # Label Studio unreachable: try next time
            log.warning("project %s: cannot count annotations to reconcile lost webhooks: %s", project, error)
            return request
        with self._lock:
            self._missed_webhooks.discard(project)
        missing = changed - request.new_annotations
        log.info("project %s: %d annotations since the last version, %d counted", project, changed, missing)
        if missing <= 0:
            return request
        return self.runner.request_training(project, force=False, events=missing)


def _parse_time(stamp: str) -> datetime:
    """An ISO 8601 time (Label Studio's, with a ``Z``) as an aware datetime (naive ones taken as UTC)."""
    parsed = datetime.fromisoformat(stamp)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
