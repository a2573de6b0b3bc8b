"""The Redis the tests use, found or started once per test session (``tests/conftest.py`` calls
:func:`ensure_test_redis` before collection).

``RGBT_TEST_REDIS_URL`` names it. When unset: the Redis at 127.0.0.1:6379 when one answers, else a private
``redis-server`` on a free port for the session (no persistence, stopped at the end). Without Redis and
without the ``redis-server`` binary the session stops with one line naming what to install. Every test reads
the URL through :func:`redis_url`; each uses its own queue names, so a shared Redis is never disturbed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

REDIS_URL_ENV = "RGBT_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MISSING_REDIS = (
    "the tests need Redis: nothing answers at {url} and `redis-server` is not on PATH; install Redis "
    "(Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) or set RGBT_TEST_REDIS_URL"
)


class RedisMissing(RuntimeError):
    """No Redis answers and none can be started."""


def redis_url() -> str:
    """The session's Redis URL."""
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def ensure_test_redis(
    default: str = DEFAULT_REDIS_URL, which: Callable[[str], str | None] = shutil.which
) -> tuple[str, object | None]:
    """The URL to test against and the private server started for it (``None`` when one already answers).

    Raises RedisMissing when nothing answers at ``default`` and ``redis-server`` cannot be found."""
    if answers(default):
        return default, None
    executable = which("redis-server")
    if executable is None:
        raise RedisMissing(MISSING_REDIS.format(url=default))
    from ls_backend.processes import RedisServer
    from ls_backend.studio_server import free_port

    folder = Path(tempfile.mkdtemp(prefix="rgbt-test-redis-"))
    server = RedisServer(free_port(), log_path=folder / "redis.log", executable=executable).start()
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server.url, server
