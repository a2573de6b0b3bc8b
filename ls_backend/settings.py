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
        "Base URL of Label Studio as this backend reaches it. Empty: the `hostname` Label Studio sends to "
        "`/setup` is used.",
    )
    label_studio_api_key: str = _setting(
        "LABEL_STUDIO_API_KEY",
        "",
        "Label Studio token: a personal access token (JWT refresh token) or a legacy token. Empty: the "
        "`access_token` Label Studio sends to `/setup` is used.",
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
        "BASIC_AUTH_USER", "", "With BASIC_AUTH_PASS: require HTTP basic auth on every route but /health."
    )
    basic_auth_pass: str = _setting("BASIC_AUTH_PASS", "", "Password for BASIC_AUTH_USER.", secret=True)
    max_request_bytes: int = _setting(
        "MAX_REQUEST_BYTES", 64 * 1024 * 1024, "Largest request body accepted (413 above)."
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
    imagenet_weights: Path | None = _setting(
        "IMAGENET_WEIGHTS",
        None,
        "Local torchvision VGG16 state dict for the first model of a project. Empty: random init.",
        parse=_parse_optional_path,
    )
    prediction_score_threshold: float = _setting(
        "PREDICTION_SCORE_THRESHOLD", 0.3, "Boxes below this confidence are not sent as pre-annotations."
    )
    predict_batch_size: int = _setting("PREDICT_BATCH_SIZE", 8, "Pairs per forward pass in `/predict`.")
    torch_compile: bool = _setting("TORCH_COMPILE", False, "Compile the network with `torch.compile`.")
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
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise SettingsError("HOLDOUT_FRACTION must be in [0, 1)")
        if self.worker_lease_seconds < 2:
            raise SettingsError("WORKER_LEASE_SECONDS must be >= 2")
        for name in ("train_every_n_annotations", "train_epochs", "push_page_size", "score_shard_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be >= 1")
        from model.acquisition import STRATEGIES  # here, not at the top: the strategies import torch

        if self.acquisition not in STRATEGIES:
            choices = ", ".join(STRATEGIES)
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
