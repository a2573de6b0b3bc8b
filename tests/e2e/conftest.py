"""A real Label Studio for the end-to-end tests: one server per test session, on a free loopback port.

The first run installs Label Studio into ``~/.cache/rgbt-al`` (a few minutes) and migrates an empty database
once (a minute or two); later sessions start a server from a copy of that database in about 10 seconds.
Every test in this folder is marked ``e2e`` (``pytest -m "not e2e"`` leaves them out).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from ls_backend.admin import (
    annotate_random_initial_set,
    read_label_config,
    set_up_project,
    tasks_from_folder,
    write_synthetic_pairs,
)
from ls_backend.label_config import ProjectSchema
from ls_backend.studio import StudioClient
from ls_backend.studio_server import (
    LabelStudioServer,
    ensure_database_template,
    ensure_label_studio,
    free_port,
)
from tests.services import redis_url

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


# ------------------------------------------------------------------------------------------ stacks
#: The session's Redis (tests/services.py); every test gets a queue (and key prefix) of its own.
SHARED_REDIS_URL = redis_url()


@dataclass(frozen=True)
class LabelledProject:
    """A Label Studio project of generated pairs (tasks reference them through local-files storage), some of
    them annotated with their ground truth. No ML backend is connected: tests start their own processes."""

    id: int
    label_config: str
    schema: ProjectSchema
    task_ids: tuple[int, ...]
    annotated: tuple[int, ...]

    @property
    def key(self) -> str:
        """The project as the backend's registry keys it."""
        return str(self.id)

    @property
    def unlabelled(self) -> set[int]:
        return set(self.task_ids) - set(self.annotated)


@pytest.fixture
def labelled_project(label_studio: LabelStudioServer) -> Callable[..., LabelledProject]:
    """A factory: ``labelled_project(title, pairs=12, annotated=4, task="detection")``."""

    def make(title: str, pairs: int = 12, annotated: int = 4, task: str = "detection") -> LabelledProject:
        folder = label_studio.files_root / f"{title}-{uuid.uuid4().hex[:6]}"
        written = write_synthetic_pairs(folder, pairs, seed=11, image_size=(64, 80))
        label_config, schema = read_label_config(f"synthetic_{task}")
        with StudioClient(label_studio.url, label_studio.token) as client:
            setup = set_up_project(
                client,
                title=title,
                label_config=label_config,
                tasks=tasks_from_folder(folder, schema, label_studio.files_root),
                storage_folder=folder,
            )
            task_ids = tuple(int(t["id"]) for t in client.iter_tasks(setup.project_id))
            done = annotate_random_initial_set(client, setup.project_id, written, schema, annotated, seed=2)
        return LabelledProject(setup.project_id, label_config, schema, task_ids, tuple(done))

    return make


@pytest.fixture
def queue_name() -> Iterator[str]:
    """An RQ queue of the test's own on the shared Redis; its keys are deleted afterwards."""
    name = f"rgbt-e2e-{uuid.uuid4().hex[:10]}"
    yield name
    connection = Redis.from_url(SHARED_REDIS_URL)
    keys = list(connection.scan_iter(f"*{name}*", count=1000))
    if keys:
        connection.delete(*keys)


def stack_settings(
    label_studio_url: str, token: str, model_dir: Path, *, redis_url: str, queue: str, **overrides: str
) -> dict[str, str]:
    """Environment of `rgbt-al serve` / `rgbt-al worker` for a test: a tiny CPU model, one training epoch,
    quick retries; ``overrides`` (by variable name) win."""
    values = {
        "LABEL_STUDIO_URL": label_studio_url,
        "LABEL_STUDIO_API_KEY": token,
        "MODEL_DIR": str(model_dir),
        "MODEL_WIDTH": "0.0625",
        "MODEL_IMAGE_SIZE": "64x80",
        "TRAIN_EPOCHS": "1",
        "TRAIN_BATCH_SIZE": "4",
        "PREDICTION_SCORE_THRESHOLD": "0.0",
        "REDIS_URL": redis_url,
        "RQ_QUEUE": queue,
        "JOB_RETRY_DELAY": "1",
        "DEVICE": "cpu",
        "LOG_LEVEL": "INFO",
    }
    values.update(overrides)
    return values
