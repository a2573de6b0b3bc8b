"""Fixtures of the app test modules (``test_app``, ``test_app_bad_input``, ``test_app_fuzz``); a module
takes the single-thread one with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.app_support import AppUnderTest, make_app, make_settings, torch_threads


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a whole module: tiny forward passes, on a few shared cores."""
    with torch_threads(1):
        yield


@pytest.fixture
def app(tmp_path: Path) -> AppUnderTest:
    """The Flask app over a fresh model directory, with the in-process job runner."""
    return make_app(make_settings(tmp_path))
