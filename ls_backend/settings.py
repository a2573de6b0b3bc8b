"""Every environment variable the backend reads, typed, with its default and meaning.

This module is the single source of truth for configuration: the README's configuration reference is
generated from :data:`SETTINGS` (``rgbt-al config --markdown``) and a test fails when the two differ.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.config import ENGINES

#: QUEUE_CLUSTERS' ceiling: cluster ids are version * 2**20 + shard * K + k (ls_backend.jobs.cluster_ids),
#: which stays a 32-bit integer (Label Studio's column) for 2,000 versions of 1,000 shards.
MAX_QUEUE_CLUSTERS = 1024


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used; the message names the variable."""


def _setting(
    env: str, default: Any, help: str, *, secret: bool = False, parse: Callable[[str], Any] | None = None
) -> Any:
    """A dataclass field bound to an environment variable; ``parse`` defaults from the default's type."""
    if parse is None:
        parse = {bool: _parse_bool, int: int, float: float, str: str}.get(type(default))
        if isinstance(default, Path):
            parse = Path
    if parse is None:
        raise TypeError(f"{env}: give a parser for default {default!r}")
    return field(default=default, metadata={"env": env, "help": help, "secret": secret, "parse": parse})


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _parse_size(value: str) -> tuple[int, int]:
    """'512x640' -> (512, 640): height x width."""
    parts = value.lower().replace(",", "x").split("x")
    if len(parts) != 2:
        raise ValueError(f"expected HEIGHTxWIDTH, got {value!r}")
    return int(parts[0]), int(parts[1])


def _parse_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _parse_optional_path(value: str) -> Path | None:
    return Path(value) if value.strip() else None


@dataclass(frozen=True)
class Settings:
    """Backend configuration. Build it with :meth:`from_env`; every field maps to one variable."""

    # --- Label Studio connection
    label_studio_url: str = _setting(
        "LABEL_STUDIO_URL",
        "",
        "Base URL of Label Studio as this backend reaches it. When set, it is the only Label Studio origin: "
        "a different `hostname` sent to `/setup` is ignored (and logged). Empty: the `hostname` Label Studio "
        "sends to `/setup` is used, with the `access_token` that came with it.",
    )
    label_studio_api_key: str = _setting(
        "LABEL_STUDIO_API_KEY",
        "",
        "Label Studio token: a personal access token (JWT refresh token) or a legacy token. Sent to "
        "LABEL_STUDIO_URL only (needs it). Empty: the `access_token` Label Studio sends to `/setup` is used.",
        secret=True,
    )
    # --- Storage and jobs
    model_dir: Path = _setting(
        "MODEL_DIR", Path("models"), "Model registry: one folder per project with its versions."
    )
    redis_url: str = _setting(
        "REDIS_URL",
        "",
        "Redis for RQ job queues (e.g. `redis://127.0.0.1:6379/0`). Empty: jobs run in a background thread "
        "of the server process.",
    )
    queue_name: str = _setting(
        "RQ_QUEUE", "rgbt-al", "Name of the RQ queue (and prefix of coordination keys)."
    )
    job_retries: int = _setting("JOB_MAX_RETRIES", 2, "Retries of a failed job before it is reported failed.")
    job_retry_delay: float = _setting(
        "JOB_RETRY_DELAY", 10.0, "Seconds before the first retry of a failed job (doubling after)."
    )
    job_timeout: int = _setting("JOB_TIMEOUT", 6 * 3600, "Seconds a training or scoring job may run.")
    worker_lease_seconds: int = _setting(
        "WORKER_LEASE_SECONDS",
        60,
        "A running job's lease, renewed by its worker every quarter of it: the job of a worker that died "
        "(killed, machine lost) is retried, or reported failed, once its lease ran out. Idle workers also "
        "run queue maintenance this often.",
    )
    # --- HTTP server
    host: str = _setting("HOST", "0.0.0.0", "Address `rgbt-al serve` binds.")
    port: int = _setting("PORT", 9090, "Port `rgbt-al serve` binds.")
    server_threads: int = _setting("SERVER_THREADS", 8, "gunicorn threads of the single server worker.")
    basic_auth_user: str = _setting(
        "BASIC_AUTH_USER",
        "",
        "HTTP basic auth user required on every route but /health. Empty (and ALLOW_UNAUTHENTICATED off): "
        "`rgbt-al serve` generates a user and password on its first start, keeps them in "
        "`<MODEL_DIR>/.basic-auth.json` (mode 0600) and prints them once.",
    )
    basic_auth_pass: str = _setting("BASIC_AUTH_PASS", "", "Password for BASIC_AUTH_USER.", secret=True)
    allow_unauthenticated: bool = _setting(
        "ALLOW_UNAUTHENTICATED",
        False,
        "Serve every route without authentication, on purpose (a trusted network only). Off: requests "
        "without the basic-auth credentials get 401.",
    )
    max_request_bytes: int = _setting(
        "MAX_REQUEST_BYTES", 64 * 1024 * 1024, "Largest request body accepted (413 above)."
    )
    max_projects: int = _setting(
        "MAX_PROJECTS",
        1000,
        "Projects this backend keeps (a `project.json` each, written by `/setup`, `/predict`, `/webhook`); a "
        "new project beyond it gets 403.",
    )
    max_label_config_bytes: int = _setting(
        "MAX_LABEL_CONFIG_BYTES", 512 * 1024, "Largest label config accepted and stored (413 above)."
    )
    max_classes: int = _setting(
        "MAX_CLASSES",
        1000,
        "Most labels (classes) a project's config may have; the model grows with them (about 1.6 MB of "
        "weights per class at MODEL_WIDTH=1). More get 400.",
    )
    # --- Images
    allowed_image_hosts: tuple[str, ...] = _setting(
        "ALLOWED_IMAGE_HOSTS",
        (),
        "Comma-separated hosts (or `*.example.com`) that task image URLs may point to besides Label Studio.",
        parse=_parse_list,
    )
    local_files_root: Path | None = _setting(
        "LOCAL_FILES_ROOT",
        None,
        "Directory under which task images given as local paths may be read.",
        parse=_parse_optional_path,
    )
    max_image_bytes: int = _setting("MAX_IMAGE_BYTES", 50 * 1024 * 1024, "Largest image file fetched.")
    max_image_pixels: int = _setting(
        "MAX_IMAGE_PIXELS", 40_000_000, "Largest image (width x height) decoded; guards decompression bombs."
    )
    max_decode_bytes: int = _setting(
        "MAX_DECODE_BYTES",
        128 * 1024**2,
        "Largest decoded image in bytes (width x height x channels x bytes per sample), read from the header "
        "before decoding (413 above). The default admits every 8-bit RGB image under the default "
        "MAX_IMAGE_PIXELS; a 16-bit RGBA image of the same pixel count is 2.7 times larger.",
    )
    decode_budget_bytes: int = _setting(
        "DECODE_BUDGET_BYTES",
        512 * 1024**2,
        "Memory that image decodes in flight may hold together in one process (each counts twice its "
        "decoded size, OpenCV's peak, plus its 8-bit conversions); further decodes wait for room.",
    )
    decode_wait_seconds: float = _setting(
        "DECODE_WAIT_SECONDS",
        20.0,
        "How long a decode waits for room in DECODE_BUDGET_BYTES before its task is answered 429.",
    )
    predict_deadline_seconds: float = _setting(
        "PREDICT_DEADLINE_SECONDS",
        45.0,
        "Time one `/predict` request may spend fetching and decoding its images; tasks not loaded by then "
        "get a per-task error. Keep it well under Label Studio's predict timeout (100 s).",
    )
    predict_fetch_threads: int = _setting(
        "PREDICT_FETCH_THREADS",
        4,
        "Images one `/predict` request fetches at once, in threads of its own: a request's slow images "
        "never hold threads other requests need.",
    )
    reject_mismatched_pairs: bool = _setting(
        "REJECT_MISMATCHED_PAIRS",
        False,
        "Reject pairs whose RGB and thermal sizes differ (422) instead of resizing thermal with a warning.",
    )
    image_cache_dir: Path | None = _setting(
        "IMAGE_CACHE_DIR",
        None,
        "On-disk image cache. Empty: `<MODEL_DIR>/.image-cache`.",
        parse=_parse_optional_path,
    )
    image_cache_bytes: int = _setting("IMAGE_CACHE_BYTES", 2 * 1024**3, "Size bound of the image cache.")
    # --- Model
    device: str = _setting("DEVICE", "auto", "`auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`...")
    model_width: float = _setting("MODEL_WIDTH", 1.0, "VGG16 width multiplier; 1.0 is the paper's network.")
    model_image_size: tuple[int, int] = _setting(
        "MODEL_IMAGE_SIZE",
        (512, 640),
        "HEIGHTxWIDTH pairs are resized to for the network.",
        parse=_parse_size,
    )
    imagenet_weights: str = _setting(
        "IMAGENET_WEIGHTS",
        "auto",
        "VGG16 trunks of a new project's first model (width 1.0 only): `auto` (torchvision's "
        "`VGG16_Weights.IMAGENET1K_FEATURES`, from the torch hub cache or downloaded into it; offline: one "
        "warning and random init after a short timeout), `none` (random init), or the path of a local "
        "torchvision VGG16 state dict.",
    )
    initial_checkpoint: Path | None = _setting(
        "INITIAL_CHECKPOINT",
        None,
        "A three-branch checkpoint (`rgbt-al train`) every new project starts from: classes matched by name, "
        "it becomes the project's first version and pre-annotates before any label. "
        "`rgbt-al project --init-checkpoint` sets one per project.",
        parse=_parse_optional_path,
    )
    prediction_score_threshold: float = _setting(
        "PREDICTION_SCORE_THRESHOLD",
        0.3,
        "Confidence below which a region is not sent, for versions without calibrated per-class thresholds "
        "(those come from the held-out labelled tasks: max F1 at IoU 0.5).",
    )
    max_regions_per_task: int = _setting(
        "MAX_REGIONS_PER_TASK", 20, "Most pre-annotated regions sent per task (highest confidence first)."
    )
    preannotation_min_metric: float = _setting(
        "PREANNOTATION_MIN_METRIC",
        0.3,
        "Held-out AP50 (mIoU for segmentation) a version needs before its regions are sent; below it, "
        "predictions carry only the priority score (an empty result). Untrained models never send regions.",
    )
    version_tolerance: float = _setting(
        "VERSION_TOLERANCE",
        0.02,
        "A new version becomes current only when its held-out metric is at least the current version's on "
        "the same tasks minus this; otherwise it is kept as `rejected`.",
    )
    set_uncertainty_sampling: bool = _setting(
        "SET_UNCERTAINTY_SAMPLING",
        True,
        "When pushing priorities, switch a project whose sampling is not \"Uncertainty sampling\" to it (a "
        "backend connected from Label Studio's UI leaves it sequential).",
    )
    predict_batch_size: int = _setting("PREDICT_BATCH_SIZE", 8, "Pairs per forward pass in `/predict`.")
    torch_compile: bool = _setting("TORCH_COMPILE", False, "Compile the network with `torch.compile`.")
    inference_engine: str = _setting(
        "INFERENCE_ENGINE",
        "torch",
        "What runs trained versions in `/predict` and pool scoring: `torch`, or `onnxruntime` (needs the "
        "`onnx` extra: each version is exported to ONNX when it is published; a missing or bad export falls "
        "back to torch with a warning).",
    )
    predictor_cache_projects: int = _setting(
        "PREDICTOR_CACHE_PROJECTS",
        4,
        "Projects whose models a process keeps loaded (two versions each: the current one and the one "
        "replacing it); the least recently used project's are dropped beyond that.",
    )
    # --- Training
    train_every_n_annotations: int = _setting(
        "TRAIN_EVERY_N_ANNOTATIONS",
        10,
        "New or changed annotations that start a training job (START_TRAINING always starts one).",
    )
    train_epochs: int = _setting("TRAIN_EPOCHS", 10, "Epochs of each (fine-)training round.")
    train_batch_size: int = _setting("TRAIN_BATCH_SIZE", 8, "Pairs per training step.")
    train_lr: float = _setting("TRAIN_LR", 1e-3, "Learning rate (AdamW, cosine decay).")
    holdout_fraction: float = _setting(
        "HOLDOUT_FRACTION", 0.2, "Share of labelled tasks held out to evaluate each new version."
    )
    min_train_tasks: int = _setting("MIN_TRAIN_TASKS", 2, "Labelled tasks needed before training starts.")
    train_failure_backoff: float = _setting(
        "TRAIN_FAILURE_BACKOFF",
        30.0,
        "Seconds the next training job of a project waits after one failed (doubling with every failure "
        "in a row, at most an hour); the webhook events meanwhile join that one deferred job.",
    )
    # --- Pool scoring and priorities
    score_batch_size: int = _setting("SCORE_BATCH_SIZE", 16, "Pairs per forward pass in pool scoring.")
    score_shard_size: int = _setting(
        "SCORE_SHARD_SIZE", 2000, "Tasks per scoring shard; shards run in parallel on several workers."
    )
    score_loader_workers: int = _setting("SCORE_LOADER_WORKERS", 2, "Image-decoding threads per shard.")
    acquisition: str = _setting(
        "ACQUISITION",
        "combined",  # model.acquisition.DEFAULT_STRATEGY (a test keeps them equal): the benchmark's choice
        "How pool scoring orders the queue: `inconsistency` (the paper: score = 1 - I), `combined` (mean "
        "percentile rank of I and fused-branch entropy), `inconsistency-objects` (I where a branch sees an "
        "object), `inconsistency-diverse`, `ppal` (batch-aware: a diverse first batch of "
        "TRAIN_EVERY_N_ANNOTATIONS pairs, then the rest) or `random`. All but `inconsistency` and "
        "`inconsistency-objects` push the rank-encoded score rank/N, ranked within each scoring shard.",
    )
    queue_clusters: int = _setting(
        "QUEUE_CLUSTERS",
        0,
        "K > 0: k-means of the pool's fused-branch embeddings into K clusters, written to each prediction's "
        "`cluster`, so Label Studio's uncertainty sampling serves every annotator the clusters in turn (the "
        "lowest score of the cluster they labelled least). Off (0) by default: Label Studio's bulk import "
        "drops `cluster`, so the predictions go one request each (README: the cost). A start: "
        "TRAIN_EVERY_N_ANNOTATIONS / 5. At most 1024.",
    )
    push_page_size: int = _setting("PUSH_PAGE_SIZE", 500, "Predictions per bulk import request.")
    keep_prediction_versions: int = _setting(
        "KEEP_PREDICTION_VERSIONS", 2, "Model versions whose predictions stay in Label Studio; older ones go."
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "Python logging level.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable from ``environ`` (default ``os.environ``); ``overrides`` win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            env = spec.metadata["env"]
            if spec.name in overrides:
                values[spec.name] = overrides[spec.name]
            elif env in environ:
                try:
                    values[spec.name] = spec.metadata["parse"](environ[env])
                except (TypeError, ValueError) as error:
                    raise SettingsError(f"{env}={environ[env]!r} is invalid: {error}") from error
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.inference_engine not in ENGINES:
            raise SettingsError(f"INFERENCE_ENGINE must be one of {', '.join(ENGINES)}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.allow_unauthenticated and self.basic_auth_user:
            raise SettingsError(
                "ALLOW_UNAUTHENTICATED=true and BASIC_AUTH_USER are both set: choose one (credentials, or "
                "open on purpose)"
            )
        if self.label_studio_api_key and not self.label_studio_url:
            # The key is the admin's: it must never go to a host a /setup caller names.
            raise SettingsError("LABEL_STUDIO_API_KEY needs LABEL_STUDIO_URL, the only origin it is sent to")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise SettingsError("HOLDOUT_FRACTION must be in [0, 1)")
        if self.worker_lease_seconds < 2:
            raise SettingsError("WORKER_LEASE_SECONDS must be >= 2")
        if self.train_failure_backoff < 0:
            raise SettingsError("TRAIN_FAILURE_BACKOFF must be >= 0")
        for name in (
            "train_every_n_annotations",
            "train_epochs",
            "push_page_size",
            "score_shard_size",
            "max_projects",
            "max_label_config_bytes",
            "max_classes",
            "max_regions_per_task",
            "predictor_cache_projects",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be >= 1")
        if not 0 <= self.queue_clusters <= MAX_QUEUE_CLUSTERS:
            raise SettingsError(f"QUEUE_CLUSTERS must be in [0, {MAX_QUEUE_CLUSTERS}]")
        for name in ("max_decode_bytes", "decode_budget_bytes", "predict_fetch_threads"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be >= 1")
        for name in ("decode_wait_seconds", "predict_deadline_seconds"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{env_name(name)} must be > 0")
        from model.acquisition import STRATEGIES  # here, not at the top: the strategies import torch

        # ls-queue models what Label Studio serves from another strategy's scores (QUEUE_CLUSTERS does that).
        strategies = [name for name in STRATEGIES if name != "ls-queue"]
        if self.acquisition not in strategies:
            choices = ", ".join(strategies)
            raise SettingsError(f"ACQUISITION must be one of {choices}, got {self.acquisition!r}")

    @property
    def cache_dir(self) -> Path:
        return self.image_cache_dir or self.model_dir / ".image-cache"

    def public(self) -> dict[str, Any]:
        """Values with secrets masked, for logs and `rgbt-al config`."""
        out = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            out[spec.metadata["env"]] = "***" if spec.metadata["secret"] and value else value
        return out


def env_name(field_name: str) -> str:
    return Settings.__dataclass_fields__[field_name].metadata["env"]


def settings_table_markdown() -> str:
    """The README's configuration reference, generated from the dataclass."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for spec in fields(Settings):
        default = spec.default
        if spec.metadata["parse"] is _parse_size:
            shown = f"{default[0]}x{default[1]}"
        elif isinstance(default, tuple):
            shown = ",".join(default)
        elif default is None or default == "":
            shown = ""
        else:
            shown = str(default)
        rows.append(
            f"| `{spec.metadata['env']}` | {f'`{shown}`' if shown else '(empty)'} | {spec.metadata['help']} |"
        )
    return "\n".join(rows) + "\n"


SETTINGS: tuple[str, ...] = tuple(f.metadata["env"] for f in fields(Settings))
