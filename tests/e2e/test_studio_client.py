"""Every :class:`~ls_backend.studio.StudioClient` method against a real Label Studio 1.23.2 (one server per
session, started by tests/e2e/conftest.py)."""

from __future__ import annotations

import http.server
import io
import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server

from ls_backend.app import create_app
from ls_backend.convert import latest_annotation
from ls_backend.images import ImageFetcher
from ls_backend.label_config import schema_from_config
from ls_backend.settings import Settings
from ls_backend.studio import UNCERTAINTY_SAMPLING, StudioClient, StudioError, _jwt_claims
from ls_backend.studio_server import LabelStudioServer, free_port

CONFIG_DIR = Path(__file__).resolve().parents[2] / "label_config"
DETECTION = (CONFIG_DIR / "synthetic_detection.xml").read_text()


def png(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def box(label: str = "person") -> dict:
    return {
        "from_name": "label",
        "to_name": "rgb",
        "type": "rectanglelabels",
        "original_width": 80,
        "original_height": 64,
        "value": {"x": 10, "y": 10, "width": 20, "height": 30, "rectanglelabels": [label]},
    }


@pytest.fixture
def project(studio: StudioClient) -> Iterator[dict]:
    """A fresh detection project (from label_config/synthetic_detection.xml), deleted afterwards."""
    created = studio.create_project(f"test {uuid.uuid4().hex[:8]}", DETECTION)
    yield created
    studio.delete_project(created["id"])


def pair_tasks(count: int) -> list[dict]:
    return [
        {"rgb": f"/data/local-files/?d=none/rgb{i}.png", "thermal": f"/data/local-files/?d=none/t{i}.png"}
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------------ URLs
@pytest.mark.parametrize(
    ("base", "url", "expected"),
    [
        ("http://ls:8080", "/data/upload/1/a.png", "http://ls:8080/data/upload/1/a.png"),
        ("http://ls:8080/", "/data/local-files/?d=x/a.png", "http://ls:8080/data/local-files/?d=x/a.png"),
        ("http://ls:8080", "/", "http://ls:8080/"),
        ("http://ls:8080", "https://bucket.example.com/a.png", "https://bucket.example.com/a.png"),
        ("http://host/ls", "/", "http://host/ls/"),
        ("http://host/ls", "/data/upload/1/a.png", "http://host/ls/data/upload/1/a.png"),
        ("http://host/ls", "/ls/data/upload/1/a.png", "http://host/ls/data/upload/1/a.png"),
        ("http://host/ls", "data/upload/1/a.png", "http://host/ls/data/upload/1/a.png"),
    ],
)
def test_resolve_url(base: str, url: str, expected: str) -> None:
    with StudioClient(base, "0" * 40) as client:
        assert client.resolve_url(url) == expected


# ------------------------------------------------------------------------------------------ projects
def test_project_lifecycle(studio: StudioClient) -> None:
    title = f"lifecycle {uuid.uuid4().hex[:8]}"
    created = studio.create_project(title, DETECTION, description="made by the e2e tests")
    project_id = created["id"]
    assert created["title"] == title and created["description"] == "made by the e2e tests"
    assert created["label_config"].strip() == DETECTION.strip()
    assert studio.find_project(title)["id"] == project_id
    assert studio.find_project(f"no such project {uuid.uuid4().hex}") is None

    updated = studio.update_project(project_id, description="changed", show_skip_button=False)
    assert updated["description"] == "changed" and updated["show_skip_button"] is False
    assert studio.get_project(project_id)["description"] == "changed"
    # Label Studio accepts only a version that has predictions (or is an ML backend's).
    with pytest.raises(StudioError, match="Model version doesn't exist") as info:
        studio.set_model_version(project_id, "v7")
    assert info.value.status == 400
    (task_id,) = studio.import_tasks(project_id, pair_tasks(1))
    studio.import_predictions(
        project_id, [{"task": task_id, "result": [box()], "score": 0.5, "model_version": "v7"}]
    )
    assert studio.set_model_version(project_id, "v7")["model_version"] == "v7"
    sampled = studio.set_uncertainty_sampling(project_id)
    assert (sampled["sampling"], sampled["model_version"]) == (UNCERTAINTY_SAMPLING, "v7")

    studio.delete_project(project_id)
    assert studio.find_project(title) is None
    with pytest.raises(StudioError) as info:
        studio.get_project(project_id)
    assert info.value.status == 404
    assert f"/api/projects/{project_id}/" in str(info.value) and "HTTP 404" in str(info.value)


def test_label_studio_accepts_every_shipped_config(studio: StudioClient) -> None:
    for path in sorted(CONFIG_DIR.glob("*.xml")):
        created = studio.create_project(f"config {path.stem}", path.read_text())
        try:
            assert (
                schema_from_config(created["label_config"]).labels
                == schema_from_config(path.read_text()).labels
            )
        finally:
            studio.delete_project(created["id"])


# ------------------------------------------------------------------------------------------ tasks
def test_import_tasks_and_iterate_labelled_and_unlabelled(studio: StudioClient, project: dict) -> None:
    project_id = project["id"]
    ids = studio.import_tasks(project_id, pair_tasks(5))
    assert len(ids) == 5 and ids == sorted(ids)

    everything = list(studio.iter_tasks(project_id, page_size=2))  # three pages
    assert [t["id"] for t in everything] == ids
    assert everything[0]["data"] == pair_tasks(1)[0]
    assert all(t["annotations"] == [] for t in everything)
    assert [t["id"] for t in studio.iter_tasks(project_id, labeled=True)] == []

    annotation = studio.create_annotation(ids[1], [box("car")])
    studio.create_annotation(ids[3], [], was_cancelled=True)  # skipped: still unlabelled
    labelled = list(studio.iter_tasks(project_id, labeled=True, page_size=2))
    assert [t["id"] for t in labelled] == [ids[1]]
    assert [t["id"] for t in studio.iter_tasks(project_id, labeled=False, page_size=2)] == [
        ids[0],
        ids[2],
        ids[3],
        ids[4],
    ]
    # What the training job reads: the annotation with its result and timestamps.
    latest = latest_annotation(labelled[0])
    assert latest is not None and latest["id"] == annotation["id"]
    assert latest["result"][0]["value"]["rectanglelabels"] == ["car"]
    assert isinstance(latest["updated_at"], str) and latest["was_cancelled"] is False
    assert studio.get_task(ids[1])["annotations"][0]["id"] == annotation["id"]


def test_import_tasks_of_an_empty_list(studio: StudioClient, project: dict) -> None:
    assert studio.import_tasks(project["id"], []) == []
    assert studio.import_predictions(project["id"], []) == 0


# ------------------------------------------------------------------------------------------ predictions
def test_predictions_drive_uncertainty_sampling(studio: StudioClient, project: dict) -> None:
    project_id = project["id"]
    ids = studio.import_tasks(project_id, pair_tasks(5))
    v1 = dict(zip(ids, [0.9, 0.2, 0.6, 0.05, 0.4], strict=True))
    v2 = {task: 1.0 - score for task, score in v1.items()}
    for version, scores in (("v1", v1), ("v2", v2)):
        page = [
            {"task": t, "result": [box()], "score": s, "model_version": version} for t, s in scores.items()
        ]
        assert studio.import_predictions(project_id, page) == 5
    assert studio.model_versions(project_id) == {"v1": 5, "v2": 5}

    studio.set_uncertainty_sampling(project_id, model_version="v1")
    served = []
    for _ in range(2):  # lowest v1 score first; annotating it releases Label Studio's lock on it
        task = studio.next_task(project_id)
        served.append(task["id"])
        studio.create_annotation(task["id"], [box()])
    assert served == sorted(v1, key=v1.get)[:2]

    studio.set_model_version(project_id, "v2")
    remaining = {t: s for t, s in v2.items() if t not in served}
    assert studio.next_task(project_id)["id"] == min(remaining, key=remaining.get)

    listed = studio.list_predictions(project_id=project_id)
    assert sorted((p["task"], p["model_version"]) for p in listed) == sorted(
        [(t, "v1") for t in ids] + [(t, "v2") for t in ids]
    )
    one = studio.list_predictions(task_id=ids[0])
    assert {p["model_version"]: p["score"] for p in one} == pytest.approx({"v1": 0.9, "v2": 0.1})


def test_next_task_when_nothing_is_left(studio: StudioClient, project: dict) -> None:
    (task_id,) = studio.import_tasks(project["id"], pair_tasks(1))
    assert studio.next_task(project["id"])["id"] == task_id
    studio.create_annotation(task_id, [box()])
    assert studio.next_task(project["id"]) is None


def test_delete_predictions_keeps_the_listed_versions(studio: StudioClient, project: dict) -> None:
    project_id = project["id"]
    ids = studio.import_tasks(project_id, pair_tasks(3))
    for version in ("v1", "v2", "v3"):
        page = [{"task": t, "result": [box()], "score": 0.5, "model_version": version} for t in ids]
        studio.import_predictions(project_id, page)
    studio.set_model_version(project_id, "v3")

    assert studio.delete_predictions(project_id, keep_model_versions={"v2", "v3"}) == 3
    assert studio.model_versions(project_id) == {"v2": 3, "v3": 3}
    assert {p["model_version"] for p in studio.list_predictions(project_id=project_id)} == {"v2", "v3"}
    assert studio.delete_predictions(project_id, keep_model_versions={"v2", "v3"}) == 0
    assert studio.delete_predictions(project_id, keep_model_versions={"v3"}) == 3
    assert studio.get_project(project_id)["model_version"] == "v3"
    assert len(studio.list_predictions(project_id=project_id)) == 3


# ------------------------------------------------------------------------------------------ images
@pytest.fixture
def image_project(studio: StudioClient, project: dict, label_studio: LabelStudioServer) -> dict:
    """The project with a local-files storage on a folder holding one 80x64 pair, and a task for it."""
    folder = label_studio.files_root / f"pairs-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "rgb.png").write_bytes(png(80, 64, "RGB", seed=1))
    (folder / "thermal.png").write_bytes(png(80, 64, "L", seed=2))
    storage = studio.add_local_files_storage(project["id"], str(folder), title="pairs")
    assert storage["path"] == str(folder) and storage["project"] == project["id"]
    rel = folder.relative_to(label_studio.files_root)
    data = {
        "rgb": f"/data/local-files/?d={rel}/rgb.png",
        "thermal": f"/data/local-files/?d={rel}/thermal.png",
    }
    (task_id,) = studio.import_tasks(project["id"], [data])
    return {**project, "folder": folder, "task_id": task_id}


def test_local_files_image_fetch_with_the_legacy_token(studio: StudioClient, image_project: dict) -> None:
    task = studio.get_task(image_project["task_id"])
    url = studio.resolve_url(task["data"]["rgb"])
    assert url.startswith(studio.base_url + "/data/local-files/?d=")
    assert studio.auth_headers() == {"Authorization": f"Token {studio._auth.key}"}
    answer = requests.get(url, headers=studio.auth_headers(), timeout=10)
    assert answer.status_code == 200
    assert answer.content == (image_project["folder"] / "rgb.png").read_bytes()
    assert requests.get(url, timeout=10, allow_redirects=False).status_code == 401

    # The backend's fetcher, with this client: Label Studio URLs resolved and authorised.
    schema = schema_from_config(DETECTION)
    rgb, thermal = ImageFetcher(studio).load_pair(task["data"], schema, task["id"])
    assert rgb.shape == (64, 80, 3) and thermal.shape == (64, 80)


def test_personal_access_token(
    label_studio: LabelStudioServer, personal_access_token: str, image_project: dict
) -> None:
    assert _jwt_claims(personal_access_token)["token_type"] == "refresh"
    with StudioClient(label_studio.url, personal_access_token) as client:
        header = client.auth_headers()["Authorization"]
        scheme, access = header.split(" ")
        assert scheme == "Bearer" and _jwt_claims(access)["token_type"] == "access"
        assert client.auth_headers()["Authorization"] == header  # cached, not refreshed per call

        # SDK calls and raw calls go through the same auth.
        assert client.get_project(image_project["id"])["id"] == image_project["id"]
        task = client.get_task(image_project["task_id"])
        fetched = requests.get(client.resolve_url(task["data"]["thermal"]), headers={"Authorization": header})
        assert fetched.status_code == 200
        assert fetched.content == (image_project["folder"] / "thermal.png").read_bytes()
        # The PAT itself is not accepted as a token: it must be exchanged (docs/architecture.md, section 2).
        for wrong in (f"Token {personal_access_token}", f"Bearer {personal_access_token}"):
            refused = requests.get(client.resolve_url(task["data"]["rgb"]), headers={"Authorization": wrong})
            assert refused.status_code == 401

        # Near expiry the access token is renewed once, whichever thread asks first.
        client._auth._renew_at = 0.0
        with ThreadPoolExecutor(8) as pool:
            headers = list(pool.map(lambda _: client.auth_headers()["Authorization"], range(16)))
        assert len(set(headers)) == 1 and headers[0] != header
        assert client.get_project(image_project["id"])["id"] == image_project["id"]


def test_refused_tokens_name_the_request(label_studio: LabelStudioServer, project: dict) -> None:
    with StudioClient(label_studio.url, "f" * 40) as client, pytest.raises(StudioError) as info:
        client.get_project(project["id"])
    assert info.value.status == 401 and "Invalid token" in str(info.value)
    assert f"{label_studio.url}/api/projects/{project['id']}/" in str(info.value)
    fake_pat = (
        "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"  # {"token_type": "refresh"}
    )
    with StudioClient(label_studio.url, fake_pat) as client, pytest.raises(StudioError) as info:
        client.auth_headers()
    assert info.value.status == 401 and "/api/token/refresh/" in str(info.value)


def test_validation_errors_carry_label_studio_text(studio: StudioClient, project: dict) -> None:
    bad = [{"task": 10**9, "result": [box()], "score": 0.5, "model_version": "v1"}]
    with pytest.raises(StudioError) as info:
        studio.import_predictions(project["id"], bad)
    # Label Studio's own words about the unknown task reach the caller (the wording differs between its
    # default import and the efficient one the product turns on; both name the task id).
    assert info.value.status == 400 and str(10**9) in (info.value.detail or "")
    assert "attempts" not in str(info.value)  # a 400 is not retried


_forked_client: StudioClient | None = None


def _title_in_child(project_id: int) -> str:
    assert _forked_client is not None
    return _forked_client.get_project(project_id)["title"]


def test_client_keeps_working_in_forked_children(studio: StudioClient, project: dict) -> None:
    """A forked process (gunicorn worker, RQ work horse) uses the client made before the fork."""
    global _forked_client
    studio.get_project(project["id"])  # the parent's pool holds an open connection now
    _forked_client = studio
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            # A bounded wait: a child that dies takes its task with it and a plain map() waits forever.
            titles = pool.map_async(_title_in_child, [project["id"]] * 4).get(timeout=120)
    finally:
        _forked_client = None
    assert titles == [project["title"]] * 4
    assert studio.get_project(project["id"])["title"] == project["title"]


# ------------------------------------------------------------------------------------------ retries
def test_import_predictions_retries_then_raises_when_unreachable(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    waits: list[float] = []
    monkeypatch.setattr("ls_backend.studio.time.sleep", waits.append)
    with (
        StudioClient(url, "0" * 40, retries=3, backoff=0.1, timeout=2) as client,
        caplog.at_level(logging.WARNING, logger="ls_backend.studio"),
        pytest.raises(StudioError) as info,
    ):
        client.import_predictions(1, [{"task": 1, "result": [], "score": 0.5, "model_version": "v"}])
    assert info.value.status is None
    assert f"{url}/api/projects/1/import/predictions" in str(info.value)
    assert "cannot reach Label Studio" in str(info.value) and "after 3 attempts" in str(info.value)
    assert waits == pytest.approx([0.1, 0.2])  # backoff doubles between attempts
    assert [r.getMessage().split("(attempt ")[1][:3] for r in caplog.records] == ["1/3", "2/3"]


class FlakyProxy:
    """A forwarding proxy in front of the real Label Studio that first answers ``failures`` requests with
    503 (a restarting server behind a load balancer), then passes everything through."""

    def __init__(self, target: str, failures: int) -> None:
        self.target, self.failures, self.seen = target, failures, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    payload = b'{"detail": "upstream restarting"}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                answer = requests.post(proxy.target + self.path, data=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_import_predictions_retries_server_errors(
    label_studio: LabelStudioServer, studio: StudioClient, project: dict
) -> None:
    ids = studio.import_tasks(project["id"], pair_tasks(2))
    page = [{"task": t, "result": [box()], "score": 0.3, "model_version": "v1"} for t in ids]
    proxy = FlakyProxy(label_studio.url, failures=2)
    try:
        with StudioClient(proxy.url, label_studio.token, retries=3, backoff=0.05) as client:
            assert client.import_predictions(project["id"], page) == 2
        assert proxy.seen == 3
        proxy.seen = 0
        with (
            StudioClient(proxy.url, label_studio.token, retries=2, backoff=0.05) as client,
            pytest.raises(StudioError) as info,
        ):
            client.import_predictions(project["id"], page)
        assert info.value.status == 503 and "upstream restarting" in str(info.value)
        assert "after 2 attempts" in str(info.value)
    finally:
        proxy.close()
    assert len(studio.list_predictions(project_id=project["id"])) == 2


# ------------------------------------------------------------------------------------------ ML backend
#: The backend's basic-auth credentials in these tests (required by default).
BACKEND_AUTH = ("studio", "s3cret-backend")


@pytest.fixture
def ml_backend(label_studio: LabelStudioServer, tmp_path: Path) -> Iterator[str]:
    """This project's ML backend (the Flask app, embedded jobs, basic auth BACKEND_AUTH), served from a
    thread; yields its URL."""
    settings = Settings.from_env(
        {},
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        basic_auth_user=BACKEND_AUTH[0],
        basic_auth_pass=BACKEND_AUTH[1],
        model_dir=tmp_path / "models",
        model_width=0.125,
        model_image_size=(64, 80),
        device="cpu",
    )
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def test_ml_backend_connect_retrieve_predictions_and_train(
    studio: StudioClient, image_project: dict, ml_backend: str
) -> None:
    project_id = image_project["id"]
    # The backend requires basic auth: Label Studio's /setup call without it is refused, so is the connection.
    with pytest.raises(StudioError) as refused:
        studio.connect_ml_backend(project_id, ml_backend, title="no credentials")
    assert refused.value.status == 400, refused.value
    assert studio.list_ml_backends(project_id) == []
    connected = studio.connect_ml_backend(
        project_id, ml_backend, title="rgbt-al e2e", auth_user=BACKEND_AUTH[0], auth_pass=BACKEND_AUTH[1]
    )
    assert connected["auth_method"] == "BASIC_AUTH"
    assert connected["url"] == ml_backend and connected["project"] == project_id
    assert [b["id"] for b in studio.list_ml_backends(project_id)] == [connected["id"]]
    # Connecting gives a project without a model version the backend's title (docs/architecture.md, 2).
    assert studio.get_project(project_id)["model_version"] == "rgbt-al e2e"

    answer = studio.retrieve_predictions(project_id, [image_project["task_id"]])
    assert answer.get("processed_items") == 1
    (prediction,) = studio.list_predictions(project_id=project_id)
    assert prediction["task"] == image_project["task_id"]
    assert prediction["model_version"] == connected["model_version"]
    assert 0.0 <= prediction["score"] <= 1.0
    assert all(r["type"] == "rectanglelabels" for r in prediction["result"])

    # Label Studio passes "Start training" on to the backend, which queues a training job for the project.
    assert requests.get(f"{ml_backend}/jobs", auth=BACKEND_AUTH, timeout=10).json()["jobs"] == []
    studio.train(connected["id"])
    jobs = requests.get(f"{ml_backend}/jobs", auth=BACKEND_AUTH, timeout=10).json()["jobs"]
    assert [j["description"] for j in jobs] == [f"train project {project_id}"], jobs

    with pytest.raises(StudioError) as info:
        studio.connect_ml_backend(project_id, f"http://127.0.0.1:{free_port()}", title="nowhere")
    assert info.value.status == 400 and "health check failed" in str(info.value)


def test_connect_backend_gives_the_annotation_webhook_the_backends_basic_auth(
    studio: StudioClient, image_project: dict, ml_backend: str
) -> None:
    """Label Studio sends the connection's basic auth to /setup and /predict but subscribes the backend's
    /webhook as a plain webhook: `connect_backend` adds the Authorization header to it, so annotation events
    reach a backend that requires auth (they got 401 before)."""
    from ls_backend.admin import connect_backend

    project_id = image_project["id"]
    connect_backend(studio, project_id, ml_backend, "rgbt-al e2e", basic_auth=BACKEND_AUTH)
    webhooks = studio.list_webhooks(project_id)
    (webhook,) = [w for w in webhooks if w["url"].rstrip("/") == ml_backend + "/webhook"]
    assert webhook["headers"]["Authorization"].startswith("Basic ")
    connect_backend(studio, project_id, ml_backend, "rgbt-al e2e", basic_auth=BACKEND_AUTH)  # idempotent
    assert len(studio.list_ml_backends(project_id)) == 1

    studio.create_annotation(image_project["task_id"], [])

    def webhooks_answered() -> dict[str, float]:
        text = requests.get(ml_backend + "/metrics", auth=BACKEND_AUTH, timeout=10).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith('rgbt_requests_total{method="POST",route="/webhook"'):
                status = line.split('status="', 1)[1].split('"', 1)[0]
                counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
        return counts

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not webhooks_answered():
        time.sleep(0.5)
    assert webhooks_answered() and set(webhooks_answered()) == {"200"}, webhooks_answered()
