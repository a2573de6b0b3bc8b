"""Test-session settings that must exist before torch is imported, and the session's Redis."""

import os

import pytest

# libgomp's threads spin while waiting by default; beside Label Studio, gunicorn and RQ workers started by the
# tests on a small CPU, spinning made forward passes several times slower. Passive waits yield the core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests.services import REDIS_URL_ENV, RedisMissing, ensure_test_redis

_private_redis = pytest.StashKey[object]()


def pytest_configure(config: pytest.Config) -> None:
    """Point RGBT_TEST_REDIS_URL at a Redis that answers (a private one when 127.0.0.1:6379 does not)."""
    if os.environ.get(REDIS_URL_ENV):
        return
    try:
        url, server = ensure_test_redis()
    except RedisMissing as error:
        pytest.exit(str(error), returncode=4)
    os.environ[REDIS_URL_ENV] = url
    if server is not None:
        config.stash[_private_redis] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_private_redis, None)
    if server is not None:
        server.stop()  # type: ignore[attr-defined]
        os.environ.pop(REDIS_URL_ENV, None)
