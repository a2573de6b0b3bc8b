"""Fixtures for tests against a real Redis (the session's, tests/services.py) and real RQ worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from ls_backend.settings import Settings
from tests.services import redis_url

REDIS_URL = redis_url()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def redis_connection() -> Redis:
    connection = Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except Exception as error:  # the machines run Redis; a missing one is a broken environment, not a skip
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
    return connection


@pytest.fixture
def queue_settings(tmp_path: Path, redis_connection: Redis) -> Iterator[Settings]:
    """Settings with a queue of its own (keys are namespaced by it) and a temporary model dir."""
    name = f"rgbt-test-{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env(
        {},
        redis_url=REDIS_URL,
        queue_name=name,
        model_dir=tmp_path / "models",
        job_retries=1,
        job_retry_delay=0.0,
        train_every_n_annotations=10,
    )
    yield settings
    keys = list(redis_connection.scan_iter(f"*{name}*", count=1000))
    if keys:
        redis_connection.delete(*keys)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "RQ_QUEUE": settings.queue_name,
            "MODEL_DIR": str(settings.model_dir),
            "JOB_MAX_RETRIES": str(settings.job_retries),
            "JOB_RETRY_DELAY": str(settings.job_retry_delay),
            "PYTHONPATH": str(REPO),
            "DEVICE": "cpu",
        }
    )
    env.update(extra)
    return env


def run_burst_worker(settings: Settings, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    """A real `rgbt-al worker --burst` process: drains the queue, then exits."""
    return subprocess.run(
        [sys.executable, "-m", "ls_backend.cli", "worker", "--burst"],
        env=worker_env(settings, **extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
