"""The backend's jobs: train a project's model, score its unlabelled pool, push priorities to Label Studio.

Job functions take plain arguments (project id, version, task lists) so RQ can serialise them; each process
(the server in embedded mode, every `rgbt-al worker`) builds one :class:`JobContext` from its settings.

Flow: ``train_project`` -> new version made current -> ``score_pool`` -> ``score_shard`` x N (in parallel on
several workers) -> ``finalize_scoring`` (switches the project's ``model_version`` once every shard pushed,
so uncertainty sampling never mixes versions, then deletes predictions of old versions).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.convert import (
    RegionPolicy,
    annotation_to_target,
    class_names_from_schema,
    latest_annotation,
    prediction_payload,
)
from ls_backend.images import FetchError, ImageFetcher
from ls_backend.label_config import ProjectSchema, schema_from_config
from ls_backend.queues import JobRunner, current_job_id, make_runner, report_progress
from ls_backend.registry import ModelRegistry, RegistryError, VersionInfo, version_number
from ls_backend.settings import Settings
from ls_backend.studio import UNCERTAINTY_SAMPLING, StudioClient
from ls_backend.url_policy import origin
from model.acquisition import PoolSignals, embedding_clusters, make_strategy, queue_scores
from model.backbone import resolve_imagenet_weights
from model.checkpoint import CheckpointError, load_for_classes
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.memory import InMemoryReader
from model.data.sample import PairRecord
from model.data.transforms import eval_transform, train_transform
from model.engines import Engine, make_engine
from model.inference import PairPrediction, Predictor, PreparedBatch, export_path
from model.metrics import calibrate_thresholds
from model.network import ThreeBranchNet
from model.train import (
    PRIMARY_METRIC,
    EpochLog,
    NonFiniteLossError,
    TrainConfig,
    collect_predictions,
    compute_metrics,
    fit,
)

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """A job cannot proceed; the message says why (shown in `rgbt-al jobs`)."""


@dataclass
class JobContext:
    """Per-process resources shared by jobs: settings, registry, Label Studio clients, loaded models."""

    settings: Settings
    #: How jobs are queued: the app's runner, or the worker's; made from the settings when not given.
    runner: JobRunner = None  # type: ignore[assignment]  # filled in by __post_init__
    registry: ModelRegistry = field(init=False)
    _studios: dict[tuple[str, str], StudioClient] = field(default_factory=dict, init=False)
    #: project -> version -> loaded model, both least recently used first.
    _predictors: OrderedDict[str, OrderedDict[str, Predictor]] = field(
        default_factory=OrderedDict, init=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.registry = ModelRegistry(self.settings.model_dir)
        if self.runner is None:
            self.runner = make_runner(self.settings)

    def connection(self, project: str) -> tuple[str, str]:
        """(Label Studio URL, token) for a project. With LABEL_STUDIO_URL set: that URL, with
        LABEL_STUDIO_API_KEY or else a token `/setup` sent from that same origin. Without: the hostname and
        token `/setup` sent together. A token never goes to another origin than the one it came with."""
        info = self.registry.project(project)
        if self.settings.label_studio_url:
            url = self.settings.label_studio_url
            token = self.settings.label_studio_api_key
            same_origin = info is not None and (not info.hostname or origin(info.hostname) == origin(url))
            if not token and info is not None and same_origin:
                token = info.access_token
        else:
            url, token = (info.hostname, info.access_token) if info is not None else ("", "")
        if not url or not token:
            raise JobError(
                f"project {project}: no way to reach Label Studio (set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY, or connect the backend from Label Studio so /setup provides them)"
            )
        return url.rstrip("/"), token

    def studio(self, project: str) -> StudioClient:
        key = self.connection(project)
        with self._lock:
            if key not in self._studios:
                try:
                    self._studios[key] = StudioClient(*key)
                except (TypeError, ValueError) as error:  # a malformed URL or token (e.g. a JWT's "exp")
                    raise JobError(f"project {project}: unusable Label Studio connection: {error}") from error
            return self._studios[key]

    def fetcher(self, project: str | None) -> ImageFetcher:
        studio = None
        if project is not None:
            try:
                studio = self.studio(project)
            except JobError:
                studio = None  # images may still come from allowed hosts or local files
        s = self.settings
        return ImageFetcher(
            studio,
            allowed_hosts=s.allowed_image_hosts,
            local_root=s.local_files_root,
            max_bytes=s.max_image_bytes,
            max_pixels=s.max_image_pixels,
            cache_dir=s.cache_dir,
            cache_max_bytes=s.image_cache_bytes,
            reject_mismatched=s.reject_mismatched_pairs,
            studio_trusted=bool(s.label_studio_url),
            max_decode_bytes=s.max_decode_bytes,
            decode_budget=s.decode_budget_bytes,
            decode_wait=s.decode_wait_seconds,
        )

    def schema(self, project: str) -> ProjectSchema:
        info = self.registry.project(project)
        if info is None:
            raise JobError(
                f"project {project} is unknown to this backend: connect it from Label Studio first"
            )
        return schema_from_config(info.label_config)

    def net_config(self, schema: ProjectSchema) -> NetConfig:
        return NetConfig(
            task=schema.task,
            class_names=class_names_from_schema(schema),
            width=self.settings.model_width,
            image_size=self.settings.model_image_size,
        )

    def initial_model(self, schema: ProjectSchema) -> ThreeBranchNet:
        """A new network for the project: ImageNet trunks (IMAGENET_WEIGHTS) at width 1.0, else random."""
        config = self.net_config(schema)
        weights = None
        if config.width == 1.0:
            try:
                weights = resolve_imagenet_weights(self.settings.imagenet_weights)
            except ValueError as error:
                raise JobError(str(error)) from error
        elif self.settings.imagenet_weights.strip().lower() not in ("auto", "none", ""):
            log.warning("IMAGENET_WEIGHTS needs MODEL_WIDTH=1.0 (it is %s): random init", config.width)
        return ThreeBranchNet(config, imagenet_weights=weights)

    def policy(self, info: VersionInfo | None) -> RegionPolicy:
        """Which regions a version sends (see :func:`region_policy`)."""
        return region_policy(self.settings, info)

    def predictor(self, project: str, version: str) -> Predictor:
        """A loaded version, cached per project: two versions each (the current one and the one replacing
        it), for the PREDICTOR_CACHE_PROJECTS most recently used projects."""
        with self._lock:
            versions = self._predictors.get(project)
            if versions is not None and version in versions:
                self._predictors.move_to_end(project)
                versions.move_to_end(version)
                return versions[version]
        model, info = self.registry.load(project, version)
        export = export_path(self.registry.checkpoint_path(project, version))
        engine = make_engine(self.settings.inference_engine, model, export)
        predictor = self.make_predictor(model, self.policy(info).lowest_threshold, engine)
        with self._lock:
            versions = self._predictors.setdefault(project, OrderedDict())
            versions[version] = predictor
            versions.move_to_end(version)
            self._predictors.move_to_end(project)
            while len(versions) > 2:
                versions.popitem(last=False)
            while len(self._predictors) > self.settings.predictor_cache_projects:
                self._predictors.popitem(last=False)
        return predictor

    def make_predictor(
        self, model: ThreeBranchNet, score_threshold: float | None = None, engine: Engine | None = None
    ) -> Predictor:
        if self.settings.torch_compile and engine is None:
            import torch

            model = torch.compile(model)  # type: ignore[assignment]
        if score_threshold is None:
            score_threshold = self.settings.prediction_score_threshold
        return Predictor(model, self.settings.device, score_threshold=score_threshold, engine=engine)


def region_policy(settings: Settings, info: VersionInfo | None) -> RegionPolicy:
    """The pre-annotation rules of a version: its calibrated per-class thresholds (PREDICTION_SCORE_THRESHOLD
    for classes without one), MAX_REGIONS_PER_TASK, and the quality gate: no regions from an untrained
    model (``info`` None) or from a version whose held-out metric is below PREANNOTATION_MIN_METRIC. A
    version without a held-out metric (started from a checkpoint, or too few labels) sends its regions."""
    base = {"fallback": settings.prediction_score_threshold, "max_regions": settings.max_regions_per_task}
    if info is None:
        return RegionPolicy(**base, send=False, reason="untrained model: no regions, priorities only")
    thresholds = dict(info.thresholds)
    name = PRIMARY_METRIC.get(info.task, "AP50")
    value = info.metrics.get(name)
    floor = settings.preannotation_min_metric
    if not isinstance(value, (int, float)):
        return RegionPolicy(**base, thresholds=thresholds, reason=f"no held-out {name} yet: regions sent")
    if value < floor:
        return RegionPolicy(
            **base,
            thresholds=thresholds,
            send=False,
            reason=f"held-out {name} {value:.3f} < PREANNOTATION_MIN_METRIC {floor}: priorities only",
        )
    return RegionPolicy(**base, thresholds=thresholds, reason=f"held-out {name} {value:.3f} >= {floor}")


# The process's context: job functions take plain arguments (RQ serialises them), so they find their
# registry, clients and loaded models here. Installed by whoever owns the process: `create_app` (embedded
# jobs run in the server and share its loaded models) and `rgbt-al worker`.
_context: JobContext | None = None
_context_lock = threading.Lock()


def install_context(context: JobContext | None) -> None:
    """Make ``context`` the one job functions of this process use (None: forget it)."""
    global _context
    with _context_lock:
        _context = context


def get_context() -> JobContext:
    """The installed context; a process nobody wired (a bare ``rq worker``) gets one from the environment."""
    global _context
    with _context_lock:
        if _context is None:
            _context = JobContext(Settings.from_env())
        return _context


# ------------------------------------------------------------------------------------------ helpers
def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_holdout(task_id: int, fraction: float) -> bool:
    """Deterministic held-out split by task id (stable across rounds, so metrics are comparable)."""
    return (zlib.crc32(str(task_id).encode()) % 1000) < fraction * 1000


def load_labelled_records(
    context: JobContext, project: str, schema: ProjectSchema, class_names: tuple[str, ...]
) -> tuple[list[PairRecord], list[str]]:
    """Every labelled task as a PairRecord (images fetched in parallel); returns (records, problems)."""
    studio = context.studio(project)
    fetcher = context.fetcher(project)
    tasks = [t for t in studio.iter_tasks(int(project), labeled=True) if latest_annotation(t) is not None]
    problems: list[str] = []

    def load(task: dict[str, Any]) -> PairRecord | None:
        try:
            rgb, thermal = fetcher.load_pair(task["data"], schema, task["id"])
        except FetchError as error:
            problems.append(f"task {task['id']}: {error}")
            return None
        target, unknown = annotation_to_target(
            latest_annotation(task), schema, class_names, (rgb.shape[0], rgb.shape[1])
        )
        if unknown:
            problems.append(f"task {task['id']}: labels unknown to the model: {sorted(unknown)}")
        return PairRecord(
            pair_id=str(task["id"]),
            rgb=rgb,
            thermal=thermal,
            boxes=target.get("boxes", np.zeros((0, 4), np.float32)),
            labels=target.get("labels", np.zeros((0,), np.int64)),
            ignore=target.get("ignore", np.zeros((0,), bool)),
            mask=target.get("mask"),
        )

    with ThreadPoolExecutor(max(1, context.settings.score_loader_workers)) as pool:
        records = [r for r in pool.map(load, tasks) if r is not None]
    return records, problems


# ------------------------------------------------------------------------------------------ jobs
def train_project(project: str) -> dict[str, Any]:
    """Fine-tune the project's model on every labelled task, publish a new version, enqueue pool scoring."""
    context = get_context()
    runner = context.runner
    job_id = current_job_id()
    if job_id:
        # From now on new annotations queue another round instead of joining this one.
        runner.release_training(project, job_id)
    settings = context.settings
    schema = context.schema(project)
    class_names = class_names_from_schema(schema)
    report_progress(0.0, "fetching labelled tasks")
    records, problems = load_labelled_records(context, project, schema, class_names)
    if len(records) < settings.min_train_tasks:
        return {
            "status": "skipped",
            "reason": f"{len(records)} usable labelled tasks, {settings.min_train_tasks} needed",
            "problems": problems[:20],
        }
    holdout = [r for r in records if in_holdout(int(r.pair_id), settings.holdout_fraction)]
    train_records = [r for r in records if r not in holdout] if len(records) >= 5 and holdout else records
    if len(train_records) == len(records):
        holdout = []
    model, parent = _starting_model(context, project, schema)
    size = model.config.image_size
    holdout_set = None
    baseline: dict[str, Any] = {}
    if holdout:
        holdout_set = PairDataset(InMemoryReader(holdout, list(class_names)), transform=eval_transform(size))
        if parent is not None:
            # The current version on the same held-out tasks, before it is fine-tuned: the bar to clear.
            baseline, _ = _holdout_metrics(model, holdout_set, settings.device)
    train_set = PairDataset(InMemoryReader(train_records, list(class_names)), transform=train_transform(size))
    config = TrainConfig(
        epochs=settings.train_epochs,
        batch_size=settings.train_batch_size,
        lr=settings.train_lr,
        device=settings.device,
    )

    def on_epoch(entry: EpochLog) -> None:
        report_progress(0.1 + 0.8 * entry.epoch / config.epochs, f"epoch {entry.epoch}/{config.epochs}")

    started = time.perf_counter()
    try:
        history = fit(model, train_set, config, progress=False, on_epoch=on_epoch)
    except NonFiniteLossError as error:
        # Nothing is published: the current version keeps serving; the job fails (retried like any job).
        log.error("project %s: training diverged, nothing published: %s", project, error)
        raise JobError(f"project {project}: training diverged, nothing published: {error}") from error
    metrics: dict[str, Any] = {"train_loss": history[-1].losses["total"], "holdout_tasks": len(holdout)}
    thresholds: dict[str, float] = {}
    if holdout_set is not None:
        holdout_metrics, thresholds = _holdout_metrics(model, holdout_set, settings.device)
        metrics.update(holdout_metrics)
    accepted, note = _compare(schema.task, metrics, baseline, settings.version_tolerance)
    model.cpu()
    info = context.registry.publish(
        project,
        model,
        parent=parent,
        metrics=metrics,
        num_train_tasks=len(train_records),
        export=settings.inference_engine != "torch",
        make_current=accepted,
        thresholds=thresholds,
        baseline=baseline,
        note=note,
    )
    context.registry.prune(project, keep=settings.keep_prediction_versions + 2)
    summary = {
        "version": info.version,
        "parent": parent,
        "train_tasks": len(train_records),
        "holdout_tasks": len(holdout),
        "metrics": metrics,
        "baseline": baseline,
        "note": note,
        "seconds": round(time.perf_counter() - started, 2),
        "problems": problems[:20],
    }
    if not accepted:
        report_progress(1.0, f"rejected {info.version}: {note}")
        log.warning("project %s: %s rejected, %s keeps serving: %s", project, info.version, parent, note)
        return {"status": "rejected", "current": parent, **summary}
    scoring = runner.enqueue(
        "ls_backend.jobs.score_pool", project, info.version, description=f"score pool of project {project}"
    )
    report_progress(1.0, f"published {info.version}")
    log.info("project %s: published %s (%s; %s)", project, info.version, metrics, note)
    return {"status": "trained", "score_job": scoring, **summary}


def _holdout_metrics(
    model: ThreeBranchNet, holdout_set: PairDataset, device: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """(metrics, per-class thresholds) of a model on the held-out tasks: one pass of the fused branch."""
    class_names = list(model.config.class_names)
    predictions, targets = collect_predictions(model, holdout_set, device=device)
    metrics = _plain(compute_metrics(model.config.task, predictions, targets, class_names))
    thresholds: dict[str, float] = {}
    if model.config.task == "detection":
        thresholds = {
            k: round(v, 4) for k, v in calibrate_thresholds(predictions, targets, class_names).items()
        }
    return metrics, thresholds


def _compare(
    task: str, metrics: dict[str, Any], baseline: dict[str, Any], tolerance: float
) -> tuple[bool, str]:
    """(accept the new version?, why): not worse than the current version on the same held-out tasks."""
    name = PRIMARY_METRIC.get(task, "AP50")
    new, old = metrics.get(name), baseline.get(name)
    if not isinstance(old, (int, float)):
        return True, "no current version measured on these held-out tasks"
    if not isinstance(new, (int, float)):
        return False, f"held-out {name} undefined, the current version had {old:.4f}"
    if new + tolerance < old:
        return False, f"held-out {name} {new:.4f} < current {old:.4f} - tolerance {tolerance}"
    return True, f"held-out {name} {new:.4f} vs current {old:.4f} (tolerance {tolerance})"


def init_project(project: str, checkpoint: str) -> dict[str, Any]:
    """Start a project from a three-branch checkpoint: its classes matched to the project's by name, saved
    as the project's first version, the pool scored and pre-annotated before anyone labels anything."""
    context = get_context()
    if context.registry.versions(project):
        return {"status": "skipped", "reason": f"project {project} already has model versions"}
    schema = context.schema(project)
    class_names = class_names_from_schema(schema)
    try:
        model, match, payload = load_for_classes(
            checkpoint, class_names, schema.task, image_size=context.settings.model_image_size
        )
    except CheckpointError as error:
        raise JobError(f"project {project}: cannot start from {checkpoint}: {error}") from error
    if match.missing:
        log.warning(
            "project %s: %s predicts %s, which the project's labels lack: dropped",
            project,
            checkpoint,
            match.missing,
        )
    if match.new:
        log.warning(
            "project %s: no weights for %s in %s: learnt from the labels", project, match.new, checkpoint
        )
    extra = payload.get("extra") or {}
    known = set(match.shared)
    thresholds = {k: float(v) for k, v in (extra.get("thresholds") or {}).items() if k in known}
    source_metrics = {k: v for k, v in (extra.get("metrics") or {}).items() if isinstance(v, (int, float))}
    note = (
        f"from checkpoint {Path(checkpoint).name}: shared {match.shared}, new {match.new}, "
        f"missing {match.missing}"
    )
    info = context.registry.publish(
        project,
        model,
        metrics={"source": source_metrics, "classes": match.to_json()},
        status="initial",
        thresholds=thresholds,
        note=note,
    )
    runner = context.runner
    scoring = runner.enqueue(
        "ls_backend.jobs.score_pool", project, info.version, description=f"score pool of project {project}"
    )
    log.info("project %s: first version %s %s", project, info.version, note)
    return {
        "status": "initialised",
        "version": info.version,
        "classes": match.to_json(),
        "score_job": scoring,
    }


def use_version(project: str, version: str) -> dict[str, Any]:
    """Make ``version`` current (a rollback, or a rejected version chosen by hand) and re-push its
    priorities, so the queue follows the version that serves."""
    context = get_context()
    context.registry.info(project, version)  # RegistryError for an unknown version
    context.registry.set_current(project, version)
    log.info("project %s: %s made current by hand; re-pushing its priorities", project, version)
    return score_pool(project, version)


def _starting_model(
    context: JobContext, project: str, schema: ProjectSchema
) -> tuple[ThreeBranchNet, str | None]:
    """Fine-tune the current version when it fits the project's labels; otherwise start afresh."""
    wanted = context.net_config(schema)
    current = context.registry.current_version(project)
    if current is not None:
        try:
            model, info = context.registry.load(project, current)
        except RegistryError:
            model = None
        if model is not None and (model.config.task, model.config.class_names) == (
            wanted.task,
            wanted.class_names,
        ):
            return model, info.version
        log.warning("project %s: labels changed since %s, training a new model", project, current)
    return context.initial_model(schema), None


def _plain(value: Any) -> Any:
    """Metrics as JSON-friendly floats (NaN stays NaN-free: None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def score_pool(project: str, version: str) -> dict[str, Any]:
    """Score every unlabelled task with ``version`` and push the predictions, sharded across workers."""
    context = get_context()
    runner = context.runner
    studio = context.studio(project)
    report_progress(0.0, "listing unlabelled tasks")
    tasks = [(t["id"], t["data"]) for t in studio.iter_tasks(int(project), labeled=False)]
    shards = list(_chunks(tasks, context.settings.score_shard_size))
    if runner.can_shard and len(shards) > 1:
        shard_jobs = [
            runner.enqueue(
                "ls_backend.jobs.score_shard",
                project,
                version,
                list(shard),
                (0.0, 1.0),
                i,
                description=f"score shard {i + 1}/{len(shards)} of project {project}",
            )
            for i, shard in enumerate(shards)
        ]
        final = runner.enqueue(
            "ls_backend.jobs.finalize_scoring",
            project,
            version,
            len(tasks),
            depends_on=shard_jobs,
            description=f"switch project {project} to {version}",
        )
        return {"status": "sharded", "tasks": len(tasks), "shards": shard_jobs, "finalize": final}
    totals: dict[str, Any] = {"scored": 0, "failed": []}
    # One pusher for every shard: the last pages of a shard are pushed while the next shard is scored.
    with ThreadPoolExecutor(1, thread_name_prefix="push") as pusher:
        pushes: list[Future] = []
        for i, shard in enumerate(shards):
            scored, failed = _score_and_push(
                context, project, version, list(shard), pusher, pushes, (i / len(shards), 1 / len(shards)), i
            )
            totals["scored"] += scored
            totals["failed"] += failed
        for push in pushes:
            push.result()
    final = finalize_scoring(project, version, len(tasks))
    return {"status": "scored", "tasks": len(tasks), **totals, **final}


def score_shard(
    project: str,
    version: str,
    tasks: list[tuple[int, dict[str, Any]]],
    progress: tuple[float, float] = (0.0, 1.0),
    shard: int = 0,
) -> dict[str, Any]:
    """Predict a shard (number ``shard`` of the pool) of tasks in batches and push their predictions in bulk
    pages (an RQ job; returns once every page of the shard is in Label Studio)."""
    context = get_context()
    started = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="push") as pusher:
        pushes: list[Future] = []
        scored, failed = _score_and_push(context, project, version, tasks, pusher, pushes, progress, shard)
        for push in pushes:
            push.result()  # re-raises a push that failed after its retries: the job is retried
    seconds = time.perf_counter() - started
    return {"scored": scored, "failed": failed, "seconds": round(seconds, 3)}


def _score_and_push(
    context: JobContext,
    project: str,
    version: str,
    tasks: list[tuple[int, dict[str, Any]]],
    pusher: ThreadPoolExecutor,
    pushes: list[Future],
    progress: tuple[float, float],
    shard: int = 0,
) -> tuple[int, list[int]]:
    """The scoring hot path: loader threads fetch, decode, resize and stack the next batches while the
    network runs on this one; full pages of ``PUSH_PAGE_SIZE`` predictions go to ``pusher`` (one bulk import
    request each) as soon as they fill, and the last partial page is left in ``pushes`` for the caller to
    wait on. Returns (pairs scored, ids of tasks whose images failed)."""
    settings = context.settings
    schema = context.schema(project)
    predictor = context.predictor(project, version)
    policy = context.policy(context.registry.info(project, version))
    if not policy.send:
        log.info("project %s: %s sends no regions (%s)", project, version, policy.reason)
    class_names = tuple(predictor.config.class_names)
    studio = context.studio(project)
    fetcher = context.fetcher(project)
    page_size = settings.push_page_size
    failed: list[int] = []
    page: list[dict[str, Any]] = []
    scored = 0
    offset, span = progress
    # ACQUISITION: the paper's score (1 - I) streams out batch by batch; every other strategy needs the
    # whole shard's signals first (ranks, diverse batches), so its predictions are held until the end.
    # QUEUE_CLUSTERS clusters the whole shard's embeddings: held too.
    streamed = settings.acquisition == "inconsistency" and not settings.queue_clusters
    held: list[tuple[dict[str, Any], PairPrediction]] = []

    def fetch(item: tuple[int, dict[str, Any]]) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
        task_id, data = item
        try:
            return task_id, fetcher.load_pair(data, schema, task_id)
        except FetchError as error:
            log.warning("project %s task %s: %s", project, task_id, error)
            return task_id, None

    def load(
        batch: Sequence[tuple[int, dict[str, Any]]],
    ) -> tuple[list[int], list[int], PreparedBatch | None]:
        """(good task ids, failed task ids, the good pairs as one network batch)."""
        loaded = list(fetch_pool.map(fetch, batch))
        good = [(task_id, pair) for task_id, pair in loaded if pair is not None]
        bad = [task_id for task_id, pair in loaded if pair is None]
        prepared = predictor.prepare_batch([pair for _, pair in good]) if good else None
        return [task_id for task_id, _ in good], bad, prepared

    batches = list(_chunks(tasks, settings.score_batch_size))
    workers = max(1, settings.score_loader_workers)
    # fetch_pool decodes a batch's images in parallel; loaders keeps two batches in flight ahead of the
    # network.
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="fetch") as fetch_pool,
        ThreadPoolExecutor(2, thread_name_prefix="load") as loaders,
    ):
        upcoming = deque(loaders.submit(load, b) for b in batches[:2])
        for index in range(len(batches)):
            ids, bad, prepared = upcoming.popleft().result()
            if index + 2 < len(batches):
                upcoming.append(loaders.submit(load, batches[index + 2]))
            failed.extend(bad)
            if prepared is not None:
                predictions = predictor.predict_batch(prepared, with_signals=not streamed)
                for task_id, size, prediction in zip(ids, prepared.sizes, predictions, strict=True):
                    payload, _ = prediction_payload(
                        prediction,
                        schema,
                        class_names,
                        version,
                        image_size=size,
                        policy=policy,
                        task_id=task_id,
                    )
                    if streamed:
                        page.append({"task": task_id, **payload})
                    else:
                        held.append(({"task": task_id, **payload}, prediction))
                scored += len(ids)
            while len(page) >= page_size:
                pushes.append(pusher.submit(push_predictions, studio, int(project), page[:page_size]))
                page = page[page_size:]
            report_progress(offset + span * (index + 1) / len(batches), f"scored {scored}/{len(tasks)}")
    if held:
        page += _queue_ordered(held, settings, version, shard)
    for start in range(0, len(page), page_size):
        pushes.append(pusher.submit(push_predictions, studio, int(project), page[start : start + page_size]))
    return scored, failed


def push_predictions(studio: StudioClient, project: int, page: Sequence[Mapping[str, Any]]) -> int:
    """Store a page of predictions in Label Studio; returns how many. One bulk import request, except for
    predictions with a ``cluster`` (QUEUE_CLUSTERS): the bulk route drops it (Label Studio 1.23.2's
    ``ImportPredictionsAPI`` builds each prediction from task, result, score and model_version only), so each
    goes as its own ``POST /api/predictions/``. The other way that keeps it, the bulk import then a listing of
    the project's predictions and a ``PATCH /api/predictions/{id}/`` of each, costs the same per request
    (``benchmarks/bench_push.py --clusters``, POSTs and PATCHes timed in turns) plus the bulk pages and the
    listing."""
    if not page or "cluster" not in page[0]:
        return studio.import_predictions(project, page)
    for prediction in page:
        studio.create_prediction(prediction)
    return len(page)


#: Cluster ids of one version: version * CLUSTER_ID_STRIDE + shard * K + k (see :func:`cluster_ids`).
CLUSTER_ID_STRIDE = 2**20


def cluster_ids(embedding: np.ndarray, k: int, version: str, shard: int = 0) -> np.ndarray:
    """The ``cluster`` of each prediction of a scoring shard: :func:`model.acquisition.embedding_clusters`
    of its fused-branch embeddings (P, C) into ``k`` (seeded by the version), numbered ``N * 2**20 + shard
    * k + cluster`` for version ``rgbt-vN-...``. (P,) int64.

    Label Studio counts an annotator's labelled tasks per cluster by the largest ``cluster`` of all their
    predictions (``Max('predictions__cluster')``, every kept version): with ids that grow with the version, a
    task labelled under an earlier version counts for no cluster of this one, so each version's queue
    starts a fresh round-robin (what the simulator's ``ls-queue`` models), and shards, clustered apart, never
    share an id."""
    labels = embedding_clusters(embedding, k, zlib.crc32(version.encode()))
    return version_number(version) * CLUSTER_ID_STRIDE + shard * k + labels


def _queue_ordered(
    held: list[tuple[dict[str, Any], PairPrediction]], settings: Settings, version: str, shard: int = 0
) -> list[dict[str, Any]]:
    """The held payloads with the ``score`` of the ``ACQUISITION`` strategy over them (the first batch is
    what annotators label before the next retraining: ``TRAIN_EVERY_N_ANNOTATIONS`` pairs), and with
    ``QUEUE_CLUSTERS`` their ``cluster`` (:func:`cluster_ids`)."""
    predictions = [prediction for _, prediction in held]
    rows = [p.signals or {} for p in predictions]
    signals = PoolSignals.from_rows(rows, [p.embedding for p in predictions])
    rng = np.random.default_rng(zlib.crc32(version.encode()))  # the same order if a shard is retried
    strategy = make_strategy(settings.acquisition)
    scores = queue_scores(strategy, signals, settings.train_every_n_annotations, rng)
    payloads = [{**payload, "score": float(score)} for (payload, _), score in zip(held, scores, strict=True)]
    if settings.queue_clusters:
        clusters = cluster_ids(signals.embedding, settings.queue_clusters, version, shard)
        payloads = [{**p, "cluster": int(c)} for p, c in zip(payloads, clusters, strict=True)]
    return payloads


def finalize_scoring(project: str, version: str, expected: int) -> dict[str, Any]:
    """Point the project at ``version`` (uncertainty sampling uses only its predictions), drop old ones."""
    context = get_context()
    studio = context.studio(project)
    if expected == 0:
        # Label Studio refuses a model_version that has no predictions: with an empty pool there is
        # nothing to rank, so the project keeps its version.
        report_progress(1.0, "no unlabelled tasks: nothing to rank")
        return {"model_version": None, "expected": 0, "deleted_predictions": 0}
    project_data = studio.get_project(int(project))
    sampling_set = False
    if context.settings.set_uncertainty_sampling and project_data.get("sampling") != UNCERTAINTY_SAMPLING:
        # Connected from Label Studio's UI, a project stays "Sequential": nothing would use the priorities.
        studio.set_uncertainty_sampling(int(project), version)
        sampling_set = True
        log.info(
            "project %s: sampling was %r, set to %r so the pushed priorities order the queue "
            "(SET_UNCERTAINTY_SAMPLING=false leaves it)",
            project,
            project_data.get("sampling"),
            UNCERTAINTY_SAMPLING,
        )
    else:
        studio.set_model_version(int(project), version)
    keep = [v.version for v in context.registry.versions(project)][
        -context.settings.keep_prediction_versions :
    ]
    if version not in keep:
        keep.append(version)
    deleted = studio.delete_predictions(int(project), keep_model_versions=set(keep))
    report_progress(1.0, f"project now serves {version}")
    return {
        "model_version": version,
        "expected": expected,
        "deleted_predictions": deleted,
        "sampling_set": sampling_set,
    }
