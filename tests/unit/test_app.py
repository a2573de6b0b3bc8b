"""The ML backend protocol as Label Studio 1.23 speaks it, against the real Flask app (test client).

Models are tiny ThreeBranchNets published through the real registry; images are real PNG files under the
local-files root or served by a real HTTP server; jobs run on the embedded ThreadRunner (and, in one test, on
RQ in the real Redis). Training jobs cannot reach a Label Studio here: they fail with "no way to reach Label
Studio", which the tests assert on.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis import Redis

from ls_backend.app import create_app
from ls_backend.backend import INITIAL_VERSION, RGBTBackend
from ls_backend.queues import RQRunner
from model.data.io import load_rgb, load_thermal
from tests.services import redis_url
from tests.unit.app_support import (
    CLASSES,
    DETECTION_CONFIG,
    PROJECT,
    PROJECT_ID,
    AppUnderTest,
    assert_json_error,
    image_server,
    make_app,
    make_settings,
    png_bytes,
    predict_body,
    publish_tiny,
    runner_held,
    write_pair,
)

REDIS_URL = redis_url()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def webhook(action: str, project_id: int = 7, **extra: object) -> dict:
    """A webhook body shaped like Label Studio 1.23's."""
    body: dict = {"action": action, "project": {"id": project_id, "label_config": DETECTION_CONFIG}}
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        body["annotation"] = {"id": 11, "result": [], "task": 5}
        body["task"] = {"id": 5, "data": {"rgb": "a.png", "thermal": "b.png"}}
    if action == "ANNOTATIONS_DELETED":
        body["annotations"] = [{"id": 11}]
    body.update(extra)
    return body


# ------------------------------------------------------------------------------------------ health
@pytest.mark.parametrize("path", ["/health", "/"])
def test_health_and_index_answer_up(app: AppUnderTest, path: str):
    response = app.client.get(path)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "UP"
    assert body["model_class"] == "RGBTBackend"
    assert body["jobs"] == "embedded"


# ------------------------------------------------------------------------------------------ setup
def test_setup_answers_the_model_version_fast_without_loading_a_model(app: AppUnderTest):
    body = {
        "project": PROJECT,
        "schema": DETECTION_CONFIG,
        "hostname": "http://localhost:8080",
        "access_token": "0123456789abcdef0123456789abcdef01234567",
        "extra_params": {},
    }
    # How fast it answers (Label Studio gives /setup 3 seconds) is measured by benchmarks/bench_fast_paths.py.
    response = app.client.post("/setup", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"model_version": INITIAL_VERSION}
    # The way back to Label Studio is remembered for jobs.
    info = app.backend.registry.project(PROJECT_ID)
    assert info is not None and info.hostname == "http://localhost:8080"
    assert info.access_token == body["access_token"] and info.label_config == DETECTION_CONFIG

    # A trained version: /setup names it without reading it. The checkpoint is made unreadable, so a /setup
    # that loaded the model would fail.
    version = publish_tiny(app.backend).version
    app.backend.registry.checkpoint_path(PROJECT_ID, version).write_bytes(b"not a checkpoint")
    response = app.client.post("/setup", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"model_version": version}


# ------------------------------------------------------------------------------------------ predict
def local_tasks(app: AppUnderTest, count: int, *, widths: list[int] | None = None) -> list[dict]:
    """Tasks whose images are PNG files under the local-files root, addressed in the three local ways: a
    path relative to the root, an absolute path under it, and a file:// URL."""
    tasks = []
    for i in range(count):
        width = widths[i] if widths else 80
        data = write_pair(app.images, f"pair{i}", (64, width), seed=10 * i)
        if i % 3 == 1:
            data["rgb"] = str(app.images / data["rgb"])
        elif i % 3 == 2:
            data["thermal"] = (app.images / data["thermal"]).as_uri()
        tasks.append({"id": 100 + i, "data": data, "meta": {}, "annotations": [], "predictions": []})
    return tasks


def check_rectangles(result: list[dict], width: int, height: int) -> None:
    assert result, "a detector with a 0.0 score threshold returns boxes"
    for region in result:
        assert region["from_name"] == "label" and region["to_name"] == "rgb"
        assert region["type"] == "rectanglelabels"
        assert region["original_width"] == width and region["original_height"] == height
        value = region["value"]
        assert value["rectanglelabels"] and set(value["rectanglelabels"]) <= set(CLASSES)
        for key in ("x", "y", "width", "height"):
            assert 0.0 <= value[key] <= 100.0, (key, value)
        assert value["x"] + value["width"] <= 100.0 + 1e-6 and value["y"] + value["height"] <= 100.0 + 1e-6
        assert value["width"] > 0 and value["height"] > 0
        assert 0.0 <= region["score"] <= 1.0


def test_predict_returns_one_prediction_per_task_in_label_studio_shape(app: AppUnderTest):
    version = publish_tiny(app.backend).version
    tasks = local_tasks(app, 3)
    response = app.client.post("/predict", json=predict_body(tasks))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model_version"] == version
    assert len(body["results"]) == 3
    assert "errors" not in body
    for prediction in body["results"]:
        assert prediction["model_version"] == version
        assert 0.0 <= prediction["score"] <= 1.0
        check_rectangles(prediction["result"], 80, 64)

    # The numbers are the fused branch's, and the task score is 1 - I of the pair.
    predictor = app.backend.context.predictor(PROJECT_ID, version)
    rgb = load_rgb(app.images / tasks[0]["data"]["rgb"])
    thermal = load_thermal(app.images / tasks[0]["data"]["thermal"])
    (direct,) = predictor.predict([(rgb, thermal)])
    first = body["results"][0]
    assert first["score"] == pytest.approx(1.0 - direct.inconsistency, abs=1e-5)
    # Boxes empty after clipping to the image are not sent (Label Studio cannot show them), and only the
    # MAX_REGIONS_PER_TASK most confident are sent at all.
    cap = app.backend.settings.max_regions_per_task
    assert len(direct.boxes) > cap  # an untrained tiny net: many boxes, so the cap is exercised
    clipped = np.clip(direct.boxes, 0, [80, 64, 80, 64])
    kept = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    kept &= np.arange(len(kept)) < cap  # direct.scores are in descending order
    assert len(first["result"]) == int(kept.sum()) > 0
    for region, box, score, label, branches in zip(
        first["result"],
        clipped[kept],
        direct.scores[kept],
        direct.labels[kept],
        direct.branch_scores[kept],
        strict=True,
    ):
        # Each region explains itself: the visible, thermal and fused confidence at its default box.
        visible, thermal = branches
        assert region["meta"] == {"text": [f"RGB {visible:.2f} · thermal {thermal:.2f} · fused {score:.2f}"]}
        x1, y1, x2, y2 = box
        assert region["value"]["x"] == pytest.approx(x1 / 80 * 100, abs=1e-3)
        assert region["value"]["y"] == pytest.approx(y1 / 64 * 100, abs=1e-3)
        assert region["value"]["width"] == pytest.approx((x2 - x1) / 80 * 100, abs=1e-3)
        assert region["value"]["height"] == pytest.approx((y2 - y1) / 64 * 100, abs=1e-3)
        assert region["value"]["rectanglelabels"] == [CLASSES[int(label) - 1]]
        assert region["score"] == pytest.approx(float(score), abs=1e-5)


def test_predict_batches_all_tasks_in_one_forward_pass_and_keeps_their_order(app: AppUnderTest):
    version = publish_tiny(app.backend).version
    widths = [80, 96, 112, 72, 88, 104]  # one size per task: the answer's order shows in original_width
    tasks = local_tasks(app, len(widths), widths=widths)
    predictor = app.backend.context.predictor(PROJECT_ID, version)  # the cached predictor /predict uses
    batches: list[int] = []
    handle = predictor.model.register_forward_hook(
        lambda module, args, output: batches.append(args[0].shape[0])
    )
    try:
        response = app.client.post("/predict", json=predict_body(tasks))
    finally:
        handle.remove()
    assert response.status_code == 200, response.get_json()
    assert batches == [len(tasks)], "all tasks of a request go through one forward pass"
    results = response.get_json()["results"]
    assert [r["result"][0]["original_width"] for r in results] == widths


def test_predict_reads_images_from_an_allowed_host(tmp_path: Path):
    with image_server() as server:
        server.routes["/a_rgb.png"] = (200, {"Content-Type": "image/png"}, png_bytes(80, 64))
        server.routes["/a_thermal.png"] = (200, {"Content-Type": "image/png"}, png_bytes(80, 64, "L"))
        app = make_app(make_settings(tmp_path, allowed_image_hosts=(f"127.0.0.1:{server.port}",)))
        version = publish_tiny(app.backend).version
        task = {"id": 1, "data": {"rgb": server.url("/a_rgb.png"), "thermal": server.url("/a_thermal.png")}}
        response = app.client.post("/predict", json=predict_body([task]))
        assert response.status_code == 200, response.get_json()
        (prediction,) = response.get_json()["results"]
        assert prediction["model_version"] == version
        check_rectangles(prediction["result"], 80, 64)
        assert server.hits == {"/a_rgb.png": 1, "/a_thermal.png": 1}


def test_predict_before_any_training_answers_with_the_initial_model(app: AppUnderTest):
    """Documented choice: a project without a trained version (Label Studio asks right after connecting)
    gets well-formed predictions of the initial network, under the version name ``rgbt-initial``, which
    /setup also answers; the first trained version replaces it. An untrained network's boxes are noise:
    the predictions carry the priority score and no region."""
    assert app.client.post("/setup", json={"project": PROJECT, "schema": DETECTION_CONFIG}).get_json() == {
        "model_version": INITIAL_VERSION
    }
    response = app.client.post("/predict", json=predict_body(local_tasks(app, 2)))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model_version"] == INITIAL_VERSION
    assert [r["model_version"] for r in body["results"]] == [INITIAL_VERSION] * 2
    assert "untrained" in body["regions_withheld"]
    for prediction in body["results"]:
        assert 0.0 < prediction["score"] < 1.0
        assert prediction["result"] == []


def test_initial_model_is_the_same_in_every_process(tmp_path: Path):
    """``rgbt-initial`` names one set of weights: two servers (or one after its cache dropped the model)
    answer the same predictions for the same project and labels."""
    answers = []
    for name in ("first", "second"):
        app = make_app(make_settings(tmp_path / name))
        before = torch.random.get_rng_state()
        response = app.client.post("/predict", json=predict_body(local_tasks(app, 2)))
        assert torch.equal(before, torch.random.get_rng_state()), "the global RNG is left alone"
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json()["results"])
    assert [r["score"] for r in answers[0]] == [r["score"] for r in answers[1]]
    assert answers[0][0]["result"] == answers[1][0]["result"]


# ------------------------------------------------------------------------------------------ webhooks
def test_annotation_webhooks_count_then_enqueue_one_coalesced_training_job(app: AppUnderTest):
    runner = app.runner
    with runner_held(runner):
        answers = []
        for action in (
            "ANNOTATION_CREATED",
            "ANNOTATION_UPDATED",
            "ANNOTATIONS_DELETED",
            "ANNOTATION_CREATED",
        ):
            # The runner is held: answering proves training runs elsewhere (latency: bench_fast_paths.py).
            response = app.client.post("/webhook", json=webhook(action))
            assert response.status_code == 200, response.get_json()
            answers.append(response.get_json())
        assert [a["status"] for a in answers] == ["counted", "counted", "enqueued", "coalesced"]
        assert [a["new_annotations"] for a in answers[:3]] == [1, 2, 3]
        assert all(a["threshold"] == 3 and a["project"] == "7" for a in answers)
        assert answers[0]["job_id"] is None and answers[1]["job_id"] is None
        job_id = answers[2]["job_id"]
        assert job_id and answers[3]["job_id"] == job_id
        # An explicit request joins the pending job too; another project gets its own.
        forced = app.client.post(
            "/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}
        ).get_json()
        assert (forced["status"], forced["job_id"]) == ("coalesced", job_id)
        other = app.client.post("/webhook", json=webhook("START_TRAINING", project_id=8)).get_json()
        assert other["status"] == "enqueued" and other["job_id"] not in (None, job_id)
        assert runner.job(job_id).status == "queued"
        assert app.client.get(f"/jobs/{job_id}").get_json()["status"] == "queued"
    assert runner.wait_idle(60)
    state = app.client.get(f"/jobs/{job_id}").get_json()
    assert state["status"] == "failed" and state["func"] == "ls_backend.jobs.train_project"
    assert "no way to reach Label Studio" in state["error"]
    listed = {j["id"]: j["status"] for j in app.client.get("/jobs").get_json()["jobs"]}
    assert listed[job_id] == "failed" and listed[other["job_id"]] == "failed"
    # The failed job is no longer pending: the next explicit request makes a new one, deferred by the
    # failure backoff (TRAIN_FAILURE_BACKOFF) since training just failed.
    again = app.client.post("/webhook", json=webhook("START_TRAINING")).get_json()
    assert again["status"] == "deferred" and again["job_id"] != job_id and again["not_before"]
    assert runner.job(again["job_id"]).status == "scheduled"
    assert runner.wait_idle(60)


@pytest.mark.parametrize(
    "action", ["PROJECT_UPDATED", "TASKS_CREATED", "PREDICTIONS_DELETED", "LABEL_LINK_CREATED", ""]
)
def test_other_webhook_actions_are_ignored(app: AppUnderTest, action: str):
    before = len(app.runner.jobs())
    response = app.client.post("/webhook", json={"action": action, "project": {"id": 7}})
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ignored" and body["action"] == action
    assert len(app.runner.jobs()) == before


def test_train_route_enqueues_at_once(app: AppUnderTest):
    response = app.client.post("/train", json={"project": PROJECT, "label_config": DETECTION_CONFIG})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "enqueued" and body["job"] == body["job_id"]
    assert app.runner.wait_idle(60)
    assert app.runner.job(body["job"]).status == "failed"


def test_webhooks_enqueue_rq_jobs_in_redis(tmp_path: Path):
    connection = Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except Exception as error:  # the machines run Redis: a missing one is a broken environment
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
    queue = f"rgbt-test-app-{uuid.uuid4().hex[:10]}"
    settings = make_settings(tmp_path, redis_url=REDIS_URL, queue_name=queue)
    runner = RQRunner(settings, connection=connection)
    backend = RGBTBackend(settings, runner=runner)
    client = create_app(settings, backend).test_client()
    try:
        assert client.get("/health").get_json()["jobs"] == "rq"
        first = client.post("/webhook", json=webhook("START_TRAINING")).get_json()
        second = client.post("/webhook", json=webhook("ANNOTATION_CREATED")).get_json()
        assert first["status"] == "enqueued" and (second["status"], second["job_id"]) == (
            "coalesced",
            first["job_id"],
        )
        assert runner.queue.job_ids == [first["job_id"]]  # no worker runs: it stays queued
        job = runner.queue.fetch_job(first["job_id"])
        assert job.func_name == "ls_backend.jobs.train_project" and job.args == ("7",)
        assert client.get(f"/jobs/{first['job_id']}").get_json()["status"] == "queued"
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'rgbt_jobs{status="queued"} 1' in metrics and "rgbt_queue_up 1" in metrics
    finally:
        keys = list(connection.scan_iter(f"*{queue}*", count=1000))
        if keys:
            connection.delete(*keys)


# ------------------------------------------------------------------------------------------ versions, metrics
def test_versions_lists_the_registry(app: AppUnderTest):
    assert app.client.get("/versions?project=7").get_json() == {
        "versions": [],
        "current": None,
        "details": [],
    }
    first = publish_tiny(app.backend).version
    second = publish_tiny(app.backend).version
    answer = app.client.get(f"/versions?project={PROJECT}").get_json()
    assert (answer["versions"], answer["current"]) == ([first, second], second)
    assert [d["version"] for d in answer["details"]] == [first, second]
    assert all(d["status"] == "accepted" and "reason" in d["regions"] for d in answer["details"])


def samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's own parser."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric(text: str, name: str, **labels: str) -> float:
    values = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(values) == 1, f"{name} {labels} not once in metrics:\n{text}"
    return values[0]


def test_metrics_in_prometheus_text(app: AppUnderTest):
    version = publish_tiny(app.backend).version
    for _ in range(2):
        app.client.get("/health")
    app.client.post("/setup", json={"project": PROJECT, "schema": DETECTION_CONFIG})
    app.client.post("/predict", json={"tasks": []})
    app.client.get("/no-such-route")
    job = app.client.post("/webhook", json=webhook("START_TRAINING")).get_json()["job_id"]
    assert app.runner.wait_idle(60) and app.runner.job(job).status == "failed"

    response = app.client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain" and "version=" in response.headers["Content-Type"]
    text = response.get_data(as_text=True)
    assert metric(text, "rgbt_requests_total", method="GET", route="/health", status="200") == 2
    assert metric(text, "rgbt_requests_total", method="POST", route="/setup", status="200") == 1
    assert metric(text, "rgbt_requests_total", method="POST", route="/predict", status="400") == 1
    assert metric(text, "rgbt_requests_total", method="GET", route="unmatched", status="404") == 1
    assert metric(text, "rgbt_request_seconds_count", route="/health") == 2
    assert metric(text, "rgbt_request_seconds_bucket", route="/health", le="+Inf") == 2
    assert metric(text, "rgbt_request_seconds_sum", route="/health") >= 0
    buckets = [
        s.value
        for s in samples(text)
        if s.name == "rgbt_request_seconds_bucket" and s.labels["route"] == "/setup"
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 1  # cumulative
    assert metric(text, "rgbt_jobs", status="failed") == 1
    assert metric(text, "rgbt_jobs", status="queued") == 0
    assert metric(text, "rgbt_queue_up") == 1
    assert metric(text, "rgbt_model_version_info", project="7", version=version) == 1


# ------------------------------------------------------------------------------------------ auth
def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_guards_every_route_but_health(tmp_path: Path):
    app = make_app(make_settings(tmp_path, basic_auth_user="studio", basic_auth_pass="s3cret"))
    setup = {"project": PROJECT, "schema": DETECTION_CONFIG}
    for headers in ({}, basic("studio", "wrong"), basic("other", "s3cret"), {"Authorization": "Basic !!!"}):
        response = app.client.post("/setup", json=setup, headers=headers)
        assert_json_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        for path in ("/", "/metrics", "/jobs", "/versions?project=7"):
            assert app.client.get(path, headers=headers).status_code == 401
    good = basic("studio", "s3cret")
    assert app.client.post("/setup", json=setup, headers=good).status_code == 200
    assert app.client.get("/", headers=good).get_json()["status"] == "UP"
    assert app.client.get("/metrics", headers=good).status_code == 200
    response = app.client.post("/predict", json=predict_body(local_tasks(app, 1)), headers=good)
    assert response.status_code == 200 and len(response.get_json()["results"]) == 1
    assert app.client.get("/health").status_code == 200  # Label Studio's health check needs no password
