"""A real Label Studio for the end-to-end tests: one server per test session, on a free loopback port.

The first run installs Label Studio into ``~/.cache/rgbt-al`` (a few minutes) and migrates an empty database
once (a minute or two); later sessions start a server from a copy of that database in about 10 seconds.
Every test in this folder is marked ``e2e`` (``pytest -m "not e2e"`` leaves them out).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ls_backend.studio import StudioClient
from ls_backend.studio_server import (
    LabelStudioServer,
    ensure_database_template,
    ensure_label_studio,
    free_port,
)

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio 1.23.2 with a fresh data dir, an admin with a known legacy token, and a
    local-files root (``files_root``) that tasks may reference as ``/data/local-files/?d=<relative path>``."""
    executable = ensure_label_studio()
    template = ensure_database_template(executable)
    root = tmp_path_factory.mktemp("label-studio")
    server = LabelStudioServer(
        executable,
        root / "data",
        port=free_port(),
        files_root=root / "files",
        database_template=template,
    )
    with server:
        server.wait_ready(timeout=300)
        yield server


@pytest.fixture
def studio(label_studio: LabelStudioServer) -> Iterator[StudioClient]:
    """A client of the session's server with the admin's legacy token."""
    with StudioClient(label_studio.url, label_studio.token) as client:
        yield client


@pytest.fixture(scope="session")
def personal_access_token(label_studio: LabelStudioServer) -> str:
    """The admin's personal access token (a JWT refresh token), created once: ``POST /api/token/`` makes one
    for the calling user when the organisation allows them (the default) and the user has none yet."""
    with StudioClient(label_studio.url, label_studio.token) as client:
        answer = client.request("POST", "api/token/")
    return str(answer["token"])
