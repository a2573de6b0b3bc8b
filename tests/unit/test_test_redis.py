"""``tests/services.py``: the session's Redis is the one that answers, else a private ``redis-server``, else a
one-line message naming what to install."""

from __future__ import annotations

import pytest

from ls_backend.studio_server import free_port
from tests.services import RedisMissing, answers, ensure_test_redis, redis_url


def test_a_redis_that_answers_is_used_as_it_is() -> None:
    url, server = ensure_test_redis(redis_url())
    assert (url, server) == (redis_url(), None)


def test_a_private_redis_server_is_started_when_none_answers() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    url, server = ensure_test_redis(nowhere)
    assert server is not None
    try:
        assert url != nowhere and answers(url)
    finally:
        server.stop()  # type: ignore[attr-defined]
    assert not answers(url)


def test_without_redis_server_the_message_names_what_to_install() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisMissing) as info:
        ensure_test_redis(nowhere, which=lambda name: None)
    message = str(info.value)
    assert "\n" not in message and nowhere in message
    assert "redis-server" in message and "apt-get install redis-server" in message
