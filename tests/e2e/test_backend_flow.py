"""The whole product against a real Label Studio: connect the backend, import 20 generated pairs, let Label
Studio fetch predictions, annotate through the API, see the webhook start training on an RQ worker, a new
version become current, predictions pushed for the whole pool, and the queue serve the most inconsistent
unlabelled pair first. Once for detection (rectangles), once for segmentation (brush masks), with the paper's
score (``ACQUISITION=inconsistency``); once more for detection with the product's default strategy, whose
rank-encoded scores must make Label Studio serve that strategy's first pick."""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from ls_backend.admin import (
    annotate_random_initial_set,
    find_pairs,
    read_label_config,
    set_up_project,
    tasks_from_folder,
    wait_for,
    write_synthetic_pairs,
)
from ls_backend.processes import BackendServer, Worker, child_env
from ls_backend.registry import ModelRegistry
from ls_backend.studio import StudioClient
from ls_backend.studio_server import free_port
from model.acquisition import DEFAULT_STRATEGY, PoolSignals, combined_score, make_strategy, queue_scores
from model.data.io import load_rgb, load_thermal
from model.inference import Predictor
from tests.services import redis_url

pytestmark = pytest.mark.e2e

PAIRS = 20
ANNOTATED = 6
REDIS_URL = redis_url()


@pytest.fixture
def backend_stack(label_studio, tmp_path: Path, request):
    """`rgbt-al serve` (gunicorn) + one `rgbt-al worker` on the real Redis, with a queue of their own;
    ``ACQUISITION`` from the test's parameter (default: the paper's inconsistency)."""
    if not redis.Redis.from_url(REDIS_URL).ping():  # pragma: no cover - Redis runs on these machines
        pytest.fail(f"Redis at {REDIS_URL} does not answer")
    model_dir = tmp_path / "models"
    env = child_env(
        {
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": label_studio.token,
            "MODEL_DIR": str(model_dir),
            "MODEL_WIDTH": "0.125",
            "MODEL_IMAGE_SIZE": "64x80",
            "TRAIN_EPOCHS": "3",
            "TRAIN_BATCH_SIZE": "4",
            "TRAIN_EVERY_N_ANNOTATIONS": str(ANNOTATED),
            "PREDICTION_SCORE_THRESHOLD": "0.0",
            "REDIS_URL": REDIS_URL,
            "RQ_QUEUE": f"e2e-{uuid.uuid4().hex[:8]}",
            "JOB_RETRY_DELAY": "1",
            "DEVICE": "cpu",
            "ACQUISITION": getattr(request, "param", "inconsistency"),
        }
    )
    backend = BackendServer(free_port(), env=env, log_path=tmp_path / "backend.log", threads=4)
    worker = Worker(env=env, log_path=tmp_path / "worker.log")
    with backend, worker:
        backend.wait_ready()
        yield backend, worker, ModelRegistry(model_dir)


def _served_version(studio: StudioClient, project_id: int, backend, worker) -> str | None:
    backend.check_alive()
    worker.check_alive()
    version = studio.get_project(project_id).get("model_version") or ""
    return version if version.startswith("rgbt-v") else None


@pytest.mark.parametrize(
    ("task", "backend_stack"),
    [("detection", "inconsistency"), ("segmentation", "inconsistency"), ("detection", DEFAULT_STRATEGY)],
    indirect=["backend_stack"],
)
def test_annotations_retrain_and_the_queue_serves_the_most_inconsistent_pair(
    label_studio, backend_stack, task: str, request
) -> None:
    acquisition = request.node.callspec.params["backend_stack"]
    backend, worker, registry = backend_stack
    studio = StudioClient(label_studio.url, label_studio.token)
    pairs_dir = label_studio.files_root / f"flow-{task}-{uuid.uuid4().hex[:6]}"
    pairs = write_synthetic_pairs(pairs_dir, PAIRS, seed=7, image_size=(64, 80))
    label_config, schema = read_label_config(f"synthetic_{task}")

    setup = set_up_project(
        studio,
        title=f"e2e {task}",
        label_config=label_config,
        tasks=tasks_from_folder(pairs_dir, schema, label_studio.files_root),
        storage_folder=pairs_dir,
        backend_url=backend.url,
        basic_auth=backend.auth,  # Label Studio's ML backend connection sends them (auth_method=BASIC_AUTH)
    )
    project_id = setup.project_id
    assert setup.imported_tasks == PAIRS and setup.ml_backend_id is not None
    assert studio.get_project(project_id)["sampling"] == "Uncertainty sampling"

    # Label Studio asks the backend for predictions of every task in one /predict request.
    task_ids = [t["id"] for t in studio.iter_tasks(project_id)]
    studio.retrieve_predictions(project_id, task_ids)
    initial = studio.list_predictions(project_id=project_id)
    assert len(initial) == PAIRS
    result_type = "rectanglelabels" if task == "detection" else "brushlabels"
    for prediction in initial:
        assert prediction["model_version"] == "rgbt-initial"
        assert 0.0 <= prediction["score"] <= 1.0
        assert all(r["type"] == result_type and r["to_name"] == "rgb" for r in prediction["result"])

    # Annotations arrive as webhooks; the threshold count starts one training job on the worker.
    annotated = annotate_random_initial_set(studio, project_id, pairs, schema, ANNOTATED, seed=1)
    version = wait_for(
        lambda: _served_version(studio, project_id, backend, worker),
        timeout=600,
        interval=2.0,
        what="a trained version to be served",
    )
    assert registry.current_version(str(project_id)) == version
    jobs = requests.get(backend.url + "/jobs", auth=backend.auth, timeout=10).json()["jobs"]
    training = [j for j in jobs if "train" in j["description"] and j["status"] == "finished"]
    assert len(training) == 1, jobs  # six events coalesced into one job

    # Every unlabelled task has a prediction of the new version; the queue serves the lowest score.
    unlabelled = {t["id"]: t for t in studio.iter_tasks(project_id, labeled=False)}
    assert set(unlabelled) == set(task_ids) - set(annotated)
    fresh = {
        p["task"]: p for p in studio.list_predictions(project_id=project_id) if p["model_version"] == version
    }
    assert set(fresh) == set(unlabelled)
    next_task = studio.next_task(project_id)
    assert next_task["id"] == min(fresh, key=lambda t: fresh[t]["score"])

    # Independently: the new version's inconsistency on the files themselves picks the same pair.
    predictor = Predictor.from_checkpoint(registry.checkpoint_path(str(project_id), version), "cpu")
    files = {p.name: p for p in find_pairs(pairs_dir)}
    names = [unlabelled[t]["data"]["pair"] for t in unlabelled]
    images = [(load_rgb(files[n].rgb), load_thermal(files[n].thermal)) for n in names]
    batch = predictor.prepare_batch(images)
    predicted = predictor.predict_batch(batch, with_signals=True)
    scores = np.array([fresh[t]["score"] for t in unlabelled])
    if acquisition == "inconsistency":
        inconsistency = np.array([p.inconsistency for p in predicted])
        assert names[int(inconsistency.argmax())] == next_task["data"]["pair"]
        np.testing.assert_allclose(scores, 1.0 - inconsistency, atol=1e-4)
        return
    # A pool-relative strategy: rank / N, and the queue serves its first pick.
    signals = PoolSignals.from_rows([p.signals or {} for p in predicted], [p.embedding for p in predicted])
    np.testing.assert_allclose(np.sort(scores), np.arange(len(scores)) / len(scores))
    rng = np.random.default_rng(zlib.crc32(version.encode()))
    expected = queue_scores(make_strategy(acquisition), signals, ANNOTATED, rng)
    assert names[int(expected.argmin())] == next_task["data"]["pair"]
    if acquisition == "combined":  # and independently of queue_scores
        assert names[int(combined_score(signals).argmax())] == next_task["data"]["pair"]
