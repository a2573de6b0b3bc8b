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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from ls_backend.convert import class_names_from_schema, latest_annotation, prediction_payload
from ls_backend.images import FetchError, ImageFetcher
from ls_backend.jobs import JobContext, JobError
from ls_backend.label_config import ProjectSchema, schema_from_config
from ls_backend.queues import JobRunner, QueueUnavailable, TrainingRequest
from ls_backend.registry import ProjectInfo, VersionInfo
from ls_backend.settings import Settings
from ls_backend.studio import StudioError
from ls_backend.url_policy import origin
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


class TooLarge(BadRequest):
    """A label config over MAX_LABEL_CONFIG_BYTES."""

    status = 413


class TooManyProjects(BadRequest):
    """A new project beyond MAX_PROJECTS."""

    status = 403


class ModelMismatch(BadRequest):
    """The project's current model cannot serve its label config (detection vs segmentation)."""

    status = 409


#: Initial networks kept in memory (one per project and label set); older ones are dropped.
MAX_INITIAL_MODELS = 4


def project_key(value: Any) -> str:
    """Label Studio identifies projects as "<id>.<created timestamp>" in /setup and /predict (the timestamp in
    whole seconds: 10 digits or more), as ints in webhooks; the registry keys them by the id alone. Anything
    else ("1.5", "1.", a float) is refused rather than read as another project."""
    text = str(value).strip() if not isinstance(value, (bool, float)) else ""
    key, dot, stamp = text.partition(".")
    # ASCII only: str.isdigit() also accepts "²" and other digits int() and the registry refuse.
    good_key = key.isascii() and key.isdigit() and len(key) <= 19
    good_stamp = not dot or (stamp.isascii() and stamp.isdigit() and 10 <= len(stamp) <= 19)
    if not (good_key and good_stamp):
        raise BadRequest(
            f"project must be a Label Studio project id like '12' or '12.1700000000', got {value!r}"
        )
    return key


class RGBTBackend:
    """Pre-annotations from the fused branch, priorities from cross-modality inconsistency."""

    def __init__(
        self, settings: Settings, runner: JobRunner | None = None, context: JobContext | None = None
    ) -> None:
        """``context``: the process's job context (built from ``settings`` and ``runner`` when not given).
        Nothing global is set here: ``create_app`` installs the context for the jobs it runs in-process."""
        self.settings = settings
        self.context = context or JobContext(settings, runner=runner)
        self.runner = self.context.runner
        self._initial: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        #: Projects whose webhooks this process refused (queue down) since it last reconciled them.
        self._missed_webhooks: set[str] = set()

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
        self.checked_schema(label_config)
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
        self._start_from_checkpoint(project, extra_params or {})
        return {"model_version": self.model_version(project)}

    def checked_schema(self, label_config: Any) -> ProjectSchema:
        """The config's schema, within MAX_LABEL_CONFIG_BYTES (413) and MAX_CLASSES (400): a model grows with
        its classes, so a config must not size one beyond what real datasets need."""
        limit = self.settings.max_label_config_bytes
        if isinstance(label_config, str) and len(label_config.encode("utf-8", "surrogatepass")) > limit:
            raise TooLarge(f"label config larger than {limit} bytes (MAX_LABEL_CONFIG_BYTES)")
        schema = schema_from_config(label_config)
        classes = len(class_names_from_schema(schema))
        if classes > self.settings.max_classes:
            raise BadRequest(
                f"label config has {classes} labels, more than MAX_CLASSES={self.settings.max_classes}"
            )
        return schema

    def _start_from_checkpoint(self, project: str, extra_params: dict[str, Any]) -> None:
        """A project without versions, given a checkpoint (the connection's ``extra_params.init_checkpoint``,
        set by `rgbt-al project --init-checkpoint`, else INITIAL_CHECKPOINT): enqueue the job that makes it
        the first version, once. Only a file check here: /setup has 3 seconds."""
        named = extra_params.get("init_checkpoint") or self.settings.initial_checkpoint
        if not named or self.registry.current_version(project) is not None:
            return
        path = Path(str(named)).expanduser()
        if not path.is_file():
            raise BadRequest(f"init_checkpoint {str(named)!r} is not a file on the backend's machine")
        if not self.registry.claim_init(project, str(path)):
            return  # already enqueued by an earlier /setup
        job = self.runner.enqueue(
            "ls_backend.jobs.init_project", project, str(path), description=f"start project {project}"
        )
        log.info("project %s: starting from checkpoint %s (job %s)", project, path, job)

    def _remember(self, project: str, label_config: str, hostname: str = "", access_token: str = "") -> None:
        """Store the project's config and its way back to Label Studio.

        A token belongs to the origin it came with: a new hostname never inherits the stored token. With
        LABEL_STUDIO_URL set, that is the only origin; a /setup naming another is ignored with its token.
        """
        known = self.registry.project(project)
        configured = self.settings.label_studio_url
        if hostname and configured and origin(hostname) != origin(configured):
            log.warning(
                "project %s: /setup named Label Studio at %r; ignored with its token, LABEL_STUDIO_URL is "
                "the only Label Studio origin",
                project,
                origin(hostname),
            )
            hostname, access_token = "", ""
        if hostname and (known is None or origin(hostname) != origin(known.hostname)):
            token = access_token  # another origin: the stored token stays with the old one
        else:
            hostname = hostname or (known.hostname if known else "")
            token = access_token or (known.access_token if known else "")
        info = ProjectInfo(project=project, label_config=label_config, hostname=hostname, access_token=token)
        if known is None and len(self.registry.projects()) >= self.settings.max_projects:
            raise TooManyProjects(
                f"this backend already serves {self.settings.max_projects} projects (MAX_PROJECTS)"
            )
        if known != info:
            self.registry.save_project(info)

    def describe_version(self, info: VersionInfo) -> dict[str, Any]:
        """What `/versions` and `rgbt-al versions list` show of a version: its status, held-out metrics,
        thresholds, and whether (and why) its regions are sent."""
        policy = self.context.policy(info)
        return {
            "version": info.version,
            "status": info.status,
            "created_at": info.created_at,
            "parent": info.parent,
            "train_tasks": info.num_train_tasks,
            "metrics": info.metrics,
            "baseline": info.baseline,
            "thresholds": info.thresholds,
            "note": info.note,
            "regions": {"sent": policy.send, "reason": policy.reason},
        }

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
        They are fetched by threads of this request only (``PREDICT_FETCH_THREADS``), all within
        ``PREDICT_DEADLINE_SECONDS``: a request whose images come slowly holds no thread another request
        needs, and ends with per-task errors at its deadline, before Label Studio's own timeout. Images are
        decoded straight to about the network's input size (``MODEL_IMAGE_SIZE``); predictions are mapped
        to the original sizes.
        """
        schema = self.checked_schema(label_config)
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
        fetcher = self.context.fetcher(project).with_deadline(self.settings.predict_deadline_seconds)
        size = self.settings.model_image_size
        threads = max(1, min(self.settings.predict_fetch_threads, len(tasks)))
        with ThreadPoolExecutor(threads, thread_name_prefix=f"fetch-{project}") as pool:
            pairs = list(pool.map(lambda task: self._load(fetcher, task, schema, size), tasks))
        errors = [
            (task, pair) for task, pair in zip(tasks, pairs, strict=True) if isinstance(pair, FetchError)
        ]
        if errors and len(errors) == len(tasks):
            raise errors[0][1]
        good = [pair for pair in pairs if not isinstance(pair, FetchError)]
        predictor = self._predictor(project, version, schema)
        info = None if version == INITIAL_VERSION else self.registry.info(project, version)
        policy = self.context.policy(info)
        predictions = iter(
            predictor.predict(
                [(rgb, thermal) for rgb, thermal, _ in good],
                batch_size=self.settings.predict_batch_size,
                sizes=[original for _, _, original in good],
            )
        )
        class_names = tuple(predictor.config.class_names)
        results: list[dict[str, Any]] = []
        unknown_labels: set[str] = set()
        for task, pair in zip(tasks, pairs, strict=True):
            if isinstance(pair, FetchError):
                # score 1.0 ranks it last: Label Studio stores a missing score as NULL, which SQLite's
                # ascending order would serve first.
                results.append({"result": [], "score": 1.0, "model_version": version, "error": str(pair)})
                continue
            payload, unknown = prediction_payload(
                next(predictions),
                schema,
                class_names,
                version,
                image_size=pair[2],
                policy=policy,
                task_id=task.get("id"),
            )
            unknown_labels |= unknown
            results.append(payload)
        response: dict[str, Any] = {"results": results, "model_version": version}
        if not policy.send:
            response["regions_withheld"] = policy.reason
        if unknown_labels:
            response["unknown_labels"] = sorted(unknown_labels)
            log.warning("project %s: model labels not in the config: %s", project, sorted(unknown_labels))
        if errors:
            response["errors"] = [{"task": task.get("id"), "error": str(error)} for task, error in errors]
        return response

    @staticmethod
    def _load(
        fetcher: ImageFetcher, task: dict[str, Any], schema: ProjectSchema, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | FetchError:
        try:
            return fetcher.load_pair_reduced(task.get("data") or {}, schema, task.get("id"), size)
        except FetchError as error:
            return error

    def _predictor(self, project: str, version: str, schema: ProjectSchema) -> Predictor:
        if version != INITIAL_VERSION:
            return self.context.predictor(project, version)
        # Models are built only for projects stored through an authenticated (or opted-in) request, with a
        # config that passed MAX_CLASSES; the registry holds only those.
        if self.registry.project(project) is None:
            raise UnknownProject(f"project {project} is not set up on this backend")
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
            self.checked_schema(label_config)  # LabelConfigError (400) for a non-string too
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
