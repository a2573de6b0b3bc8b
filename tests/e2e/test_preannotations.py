"""Pre-annotations against a real Label Studio: a project connected through `/api/ml` alone starts from a
checkpoint (classes matched by name) and gets uncertainty sampling with its first push; regions carry their
per-branch meta text; the quality gate withholds regions but keeps scores; a worse version is not made
current; `rgbt-al versions use` rolls back and re-pushes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from ls_backend.admin import (
    annotate_random_initial_set,
    read_label_config,
    tasks_from_folder,
    wait_for,
    write_synthetic_pairs,
)
from ls_backend.jobs import JobContext, init_project, install_context, train_project
from ls_backend.processes import BackendServer, Worker, child_env
from ls_backend.queues import ThreadRunner
from ls_backend.registry import ModelRegistry, ProjectInfo
from ls_backend.settings import Settings
from ls_backend.studio import UNCERTAINTY_SAMPLING, StudioClient
from ls_backend.studio_server import free_port
from model.checkpoint import save_checkpoint
from model.config import NetConfig
from model.network import ThreeBranchNet
from tests.e2e.conftest import SHARED_REDIS_URL, stack_settings

pytestmark = pytest.mark.e2e

META = re.compile(r"^RGB \d\.\d\d · thermal \d\.\d\d · fused \d\.\d\d$")


def _checkpoint(path: Path) -> Path:
    """A tiny three-branch checkpoint whose classes differ from the project's (person, car, bicycle): it
    shares person and car (in another order), lacks bicycle, and has truck, which the project lacks."""
    torch.manual_seed(5)
    config = NetConfig(class_names=("car", "truck", "person"), width=0.0625, image_size=(64, 80))
    save_checkpoint(path, ThreeBranchNet(config), extra={"thresholds": {"car": 0.0, "truck": 0.5}})
    return path


def _sequential_project(studio: StudioClient, files_root: Path, title: str, pairs: int):
    """A project with tasks and no backend, left on Label Studio's default sampling."""
    folder = files_root / f"{title}-{uuid.uuid4().hex[:6]}"
    written = write_synthetic_pairs(folder, pairs, seed=21, image_size=(64, 80))
    label_config, schema = read_label_config("synthetic_detection")
    project = studio.create_project(title=title, label_config=label_config)
    studio.add_local_files_storage(int(project["id"]), str(folder.resolve()))
    studio.import_tasks(int(project["id"]), tasks_from_folder(folder, schema, files_root))
    return int(project["id"]), label_config, schema, written


def test_backend_connected_through_api_ml_alone_starts_from_checkpoint_and_orders_the_queue(
    label_studio, studio: StudioClient, queue_name: str, tmp_path: Path
) -> None:
    checkpoint = _checkpoint(tmp_path / "source.pt")
    project_id, _, _, _ = _sequential_project(studio, label_studio.files_root, "connected from the UI", 8)
    assert studio.get_project(project_id)["sampling"] != UNCERTAINTY_SAMPLING
    model_dir = tmp_path / "models"
    env = child_env(
        stack_settings(
            label_studio.url,
            label_studio.token,
            model_dir,
            redis_url=SHARED_REDIS_URL,
            queue=queue_name,
            INITIAL_CHECKPOINT=str(checkpoint),
        )
    )
    backend = BackendServer(free_port(), env=env, log_path=tmp_path / "backend.log", threads=2)
    worker = Worker(env=env, log_path=tmp_path / "worker.log")
    with backend, worker:
        backend.wait_ready()
        # What Settings > Model > Connect does: POST /api/ml. No `rgbt-al project`, no sampling change.
        # The backend requires basic auth by default: the connection carries its credentials.
        user, password = backend.auth
        studio.connect_ml_backend(project_id, backend.url, "rgbt-al", auth_user=user, auth_pass=password)

        def served() -> str | None:
            backend.check_alive()
            worker.check_alive()
            version = studio.get_project(project_id).get("model_version") or ""
            return version if version.startswith("rgbt-v") else None

        version = wait_for(served, timeout=300, interval=1.0, what="the checkpoint's version to be served")
    project = studio.get_project(project_id)
    assert project["sampling"] == UNCERTAINTY_SAMPLING
    assert "set to 'Uncertainty sampling'" in (tmp_path / "worker.log").read_text()

    registry = ModelRegistry(model_dir)
    info = registry.info(str(project_id), version)
    assert info.status == "initial" and info.num_train_tasks == 0
    assert info.metrics["classes"] == {"shared": ["person", "car"], "new": ["bicycle"], "missing": ["truck"]}
    assert info.thresholds == {"car": 0.0}  # the checkpoint's, for the classes the project keeps

    # Every task got a prediction of that version before anyone labelled anything; each region explains
    # itself, and no task gets more than MAX_REGIONS_PER_TASK regions.
    predictions = [p for p in studio.list_predictions(project_id=project_id) if p["model_version"] == version]
    assert len(predictions) == 8
    regions = [r for p in predictions for r in p["result"]]
    assert regions, "PREDICTION_SCORE_THRESHOLD=0 in the test stack: an untrained head sends boxes"
    assert all(len(p["result"]) <= 20 for p in predictions)
    for region in regions:
        assert META.match(region["meta"]["text"][0]), region["meta"]
        assert region["meta"]["text"][0].endswith(f"fused {region['score']:.2f}")
    next_task = studio.next_task(project_id)
    assert next_task["id"] == min(predictions, key=lambda p: p["score"])["task"]


def _context(label_studio, model_dir: Path, runner: ThreadRunner, **overrides) -> JobContext:
    settings = Settings.from_env(
        stack_settings(label_studio.url, label_studio.token, model_dir, redis_url="", queue="unused"),
        **overrides,
    )
    context = JobContext(settings, runner=runner)
    install_context(context)
    return context


def test_gate_rejection_and_rollback(label_studio, studio: StudioClient, tmp_path: Path) -> None:
    project_id, label_config, schema, written = _sequential_project(
        studio, label_studio.files_root, "gate and versions", 14
    )
    model_dir = tmp_path / "models"
    key = str(project_id)
    ModelRegistry(model_dir).save_project(ProjectInfo(key, label_config))
    annotate_random_initial_set(studio, project_id, written, schema, 8, seed=3)
    unlabelled = {t["id"] for t in studio.iter_tasks(project_id, labeled=False)}
    runner = ThreadRunner(Settings.from_env({}))
    try:
        # v1 from a checkpoint: no held-out metric yet, regions sent.
        context = _context(label_studio, model_dir, runner, holdout_fraction=0.5, train_epochs=1)
        v1 = init_project(key, str(_checkpoint(tmp_path / "source.pt")))["version"]
        assert runner.wait_idle(300)

        # The gate: a floor no tiny model reaches. The version is published and current (a tolerance that
        # accepts anything), its predictions carry priorities but no region; the policy gives the reason.
        context = _context(
            label_studio,
            model_dir,
            runner,
            holdout_fraction=0.5,
            train_epochs=1,
            preannotation_min_metric=1.01,
            version_tolerance=1.0,
        )
        trained = train_project(key)
        assert trained["status"] == "trained" and trained["holdout_tasks"] > 0, trained
        v2 = trained["version"]
        assert runner.wait_idle(300)
        assert studio.get_project(project_id)["model_version"] == v2
        pushed = {
            p["task"]: p for p in studio.list_predictions(project_id=project_id) if p["model_version"] == v2
        }
        assert set(pushed) == unlabelled
        assert all(p["result"] == [] and 0.0 <= p["score"] < 1.0 for p in pushed.values())  # rank / N: from 0
        assert "PREANNOTATION_MIN_METRIC 1.01" in context.policy(context.registry.info(key, v2)).reason

        # A worse version (here: a tolerance no version can meet) is kept as rejected; v2 keeps serving.
        context = _context(
            label_studio, model_dir, runner, holdout_fraction=0.5, train_epochs=1, version_tolerance=-2.0
        )
        rejected = train_project(key)
        assert rejected["status"] == "rejected" and "score_job" not in rejected, rejected
        v3 = rejected["version"]
        assert runner.wait_idle(300)
        assert context.registry.current_version(key) == v2
        assert context.registry.info(key, v3).status == "rejected"
        assert context.registry.info(key, v3).baseline["AP50"] is not None
        assert studio.get_project(project_id)["model_version"] == v2
        assert not [p for p in studio.list_predictions(project_id=project_id) if p["model_version"] == v3]
    finally:
        install_context(None)

    # Roll back to v1 from the command line: it becomes current and its priorities are pushed again.
    before = {p["id"] for p in studio.list_predictions(project_id=project_id) if p["model_version"] == v1}
    env = {
        **os.environ,
        **stack_settings(label_studio.url, label_studio.token, model_dir, redis_url="", queue="x"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ls_backend.cli", "versions", "use", v1, "--project", key],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert ModelRegistry(model_dir).current_version(key) == v1
    assert studio.get_project(project_id)["model_version"] == v1
    again = {p["task"]: p for p in studio.list_predictions(project_id=project_id) if p["model_version"] == v1}
    assert set(again) >= unlabelled
    assert {p["id"] for p in again.values()} - before, "v1's priorities were pushed again"
    listed = subprocess.run(
        [sys.executable, "-m", "ls_backend.cli", "versions", "list", "--project", key, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = {row["version"]: row for row in json.loads(listed.stdout)}
    assert rows[v1]["current"] and rows[v3]["status"] == "rejected"
