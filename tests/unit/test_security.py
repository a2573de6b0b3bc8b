"""Security round two (issue 15, items 1, 2 and 6): who may call the backend, where tokens go, what a caller
can make the backend build, store and say.

Real Flask app, real registry on disk, real HTTP listeners on loopback standing in for Label Studio and for a
host a caller names: they record every request's headers, so a token that leaks is seen arriving.
"""

from __future__ import annotations

import base64
import http.server
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ls_backend.auth import configured_credentials, credentials_path, ensure_credentials
from ls_backend.backend import BadRequest, project_key
from ls_backend.jobs import JobContext
from ls_backend.settings import Settings, SettingsError
from tests.unit.app_support import (
    DETECTION_CONFIG,
    PROJECT,
    PROJECT_ID,
    AppUnderTest,
    assert_json_error,
    loopback_server,
    make_app,
    make_settings,
    png_bytes,
    predict_body,
    write_pair,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
UPLOAD = {"rgb": "/data/upload/1/a.png", "thermal": "/data/upload/1/b.png"}


def basic(user: str, password: str) -> dict[str, str]:
    raw = f"{user}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def labels_config(count: int) -> str:
    labels = "".join(f'<Label value="c{i}"/>' for i in range(count))
    return (
        '<View><Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
        f'<RectangleLabels name="label" toName="rgb">{labels}</RectangleLabels></View>'
    )


# ------------------------------------------------------------------------------------------ listeners
@dataclass
class Listener:
    """A real HTTP server on 127.0.0.1 that records each request's path and headers and answers ``reply``."""

    port: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    reply: tuple[int, bytes] = (404, b"not found")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tokens(self) -> list[str]:
        return [h.get("Authorization", "") for _, h in self.requests if h.get("Authorization")]


@contextmanager
def listener(reply: tuple[int, bytes] = (404, b"not found")) -> Iterator[Listener]:
    state = Listener(reply=reply)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            state.requests.append((self.path, dict(self.headers.items())))
            status, body = state.reply
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    with loopback_server(Handler) as port:
        state.port = port
        yield state


def setup(app: AppUnderTest, hostname: str, token: str = "", project: str = PROJECT):
    body: dict[str, Any] = {"project": project, "schema": DETECTION_CONFIG, "hostname": hostname}
    if token:
        body["access_token"] = token
    return app.client.post("/setup", json=body)


# ------------------------------------------------------------------------------------------ item 1: tokens
def test_a_changed_hostname_never_inherits_the_stored_token(tmp_path: Path):
    """/setup from Label Studio (listener A, with its token), then /setup naming another host (listener B)
    without a token: /predict image fetches and a START_TRAINING webhook send nothing carrying the token to
    B. (Before: the stored token went along to B.)"""
    app = make_app(make_settings(tmp_path))
    with listener() as studio, listener() as elsewhere:
        assert setup(app, studio.url, LS_TOKEN).status_code == 200
        assert setup(app, elsewhere.url).status_code == 200
        app.client.post("/predict", json=predict_body([{"id": 1, "data": UPLOAD}]))
        answer = app.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
        assert answer.status_code == 200, answer.get_json()
        assert app.runner.wait_idle(60)
        assert studio.requests == []
        assert all(LS_TOKEN not in value for value in elsewhere.tokens()), elsewhere.requests
        assert all(LS_TOKEN not in str(headers) for _, headers in elsewhere.requests)
    info = app.backend.registry.project(PROJECT_ID)
    assert info is not None and info.hostname == elsewhere.url and info.access_token == ""
    (job,) = [j for j in app.runner.jobs() if j.func.endswith("train_project")]
    assert job.status == "failed" and "no way to reach Label Studio" in (job.error or "")


def test_the_same_origin_keeps_its_token_and_a_new_origin_brings_its_own(tmp_path: Path):
    app = make_app(make_settings(tmp_path))
    with listener() as studio, listener() as other:
        assert setup(app, studio.url, LS_TOKEN).status_code == 200
        assert setup(app, studio.url + "/").status_code == 200  # same origin: the token stays
        info = app.backend.registry.project(PROJECT_ID)
        assert info is not None and info.access_token == LS_TOKEN
        assert setup(app, other.url, "f" * 40).status_code == 200
        info = app.backend.registry.project(PROJECT_ID)
        assert info is not None and (info.hostname, info.access_token) == (other.url, "f" * 40)
        app.client.post("/predict", json=predict_body([{"id": 1, "data": UPLOAD}]))
        assert other.tokens() and all(t == "Token " + "f" * 40 for t in other.tokens())
        assert studio.requests == []


def test_with_label_studio_url_set_a_setup_hostname_is_ignored_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """LABEL_STUDIO_URL is the only origin: a /setup naming another host changes nothing, its token is not
    kept, and LABEL_STUDIO_API_KEY goes to LABEL_STUDIO_URL only."""
    with listener() as studio, listener() as elsewhere:
        app = make_app(make_settings(tmp_path, label_studio_url=studio.url, label_studio_api_key=LS_TOKEN))
        with caplog.at_level(logging.WARNING, logger="ls_backend.backend"):
            assert setup(app, elsewhere.url, "e" * 40).status_code == 200
        assert "LABEL_STUDIO_URL is the only" in caplog.text
        info = app.backend.registry.project(PROJECT_ID)
        assert info is not None and info.hostname == "" and info.access_token == ""
        app.client.post("/predict", json=predict_body([{"id": 1, "data": UPLOAD}]))
        assert elsewhere.requests == []
        assert studio.tokens() and set(studio.tokens()) == {"Token " + LS_TOKEN}
        assert JobContext(app.settings).connection(PROJECT_ID) == (studio.url, LS_TOKEN)


def test_a_stored_token_from_another_origin_is_not_sent_to_label_studio_url(tmp_path: Path):
    """A project.json written before LABEL_STUDIO_URL was set (hostname B + token): the token is B's and is
    not paired with LABEL_STUDIO_URL."""
    settings = make_settings(tmp_path, label_studio_url="http://ls.example:8080")
    from ls_backend.registry import ModelRegistry, ProjectInfo

    ModelRegistry(settings.model_dir).save_project(
        ProjectInfo("7", DETECTION_CONFIG, hostname="http://other.example:9000", access_token=LS_TOKEN)
    )
    with pytest.raises(Exception, match="no way to reach Label Studio"):
        JobContext(settings).connection("7")


def test_the_api_key_is_never_paired_with_a_setup_hostname():
    with pytest.raises(SettingsError, match="LABEL_STUDIO_URL"):
        Settings.from_env({"LABEL_STUDIO_API_KEY": LS_TOKEN})


def test_errors_from_a_caller_named_origin_do_not_tell_what_answered(tmp_path: Path):
    """A /setup-named origin that refuses connections, answers 404, 500 or 200 with a non-image: one message
    (the URL aside) and one status, so the backend is no port scanner; the detail is in the log."""
    app = make_app(make_settings(tmp_path))
    messages = []
    with listener((404, b"no")) as missing, listener((500, b"x")) as broken, listener((200, b"hi")) as text:
        closed = f"http://127.0.0.1:{_closed_port()}"
        for number, origin in enumerate((closed, missing.url, broken.url, text.url), start=1):
            project = f"{number}.1700000000"
            assert setup(app, origin, LS_TOKEN, project=project).status_code == 200
            body = predict_body([{"id": 1, "data": UPLOAD}], project=project)
            response = app.client.post("/predict", json=body)
            messages.append((response.status_code, assert_json_error(response)))
    assert len({status for status, _ in messages}) == 1, messages
    assert len({message for _, message in messages}) == 1, messages
    assert "details in the backend's log" in messages[0][1]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------ item 1: auth
def test_default_refuses_unauthenticated_calls_and_stores_nothing(tmp_path: Path):
    """Neither credentials nor ALLOW_UNAUTHENTICATED: every route but /health answers 401, no project is
    stored and no model built (a server started without `rgbt-al serve` fails closed)."""
    app = make_app(make_settings(tmp_path, allow_unauthenticated=False))
    huge = labels_config(5000)
    calls = [
        ("/setup", {"project": PROJECT, "schema": huge}),
        ("/predict", predict_body([{"id": 1, "data": write_pair(app.images, "p")}], config=huge)),
        ("/webhook", {"action": "START_TRAINING", "project": {"id": 7, "label_config": huge}}),
        ("/train", {"project": 7, "label_config": huge}),
    ]
    for route, body in calls:
        response = app.client.post(route, json=body)
        assert "authentication required" in assert_json_error(response, 401), route
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    for route in ("/", "/metrics", "/jobs", "/versions?project=7"):
        assert app.client.get(route).status_code == 401
    assert app.client.get("/health").status_code == 200
    assert app.backend.registry.projects() == [] and not app.backend._initial


def test_allow_unauthenticated_means_open_on_purpose(tmp_path: Path):
    app = make_app(make_settings(tmp_path, allow_unauthenticated=True))
    assert app.client.post("/setup", json={"project": PROJECT, "schema": DETECTION_CONFIG}).status_code == 200
    with pytest.raises(SettingsError, match="choose one"):
        make_settings(tmp_path, allow_unauthenticated=True, basic_auth_user="u", basic_auth_pass="p")


def test_serve_credentials_are_generated_once_private_and_used(tmp_path: Path):
    settings = make_settings(tmp_path, allow_unauthenticated=False)
    assert configured_credentials(settings) is None
    credentials, created = ensure_credentials(settings)
    assert created and credentials is not None and len(credentials.password) >= 24
    path = credentials_path(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created_again = ensure_credentials(settings)
    assert again == credentials and not created_again
    app = make_app(settings)
    body = {"project": PROJECT, "schema": DETECTION_CONFIG}
    assert app.client.post("/setup", json=body).status_code == 401
    assert app.client.post("/setup", json=body, headers=basic("rgbt-al", "wrong")).status_code == 401
    answer = app.client.post("/setup", json=body, headers=basic(credentials.user, credentials.password))
    assert answer.status_code == 200
    assert ensure_credentials(make_settings(tmp_path, allow_unauthenticated=True)) == (None, False)


@pytest.mark.parametrize(
    ("user", "password"),
    [("stüdio", "s3cret"), ("studio", "pässwörd"), ("Ünïcödé", "密码"), ("studio", "s3cret\u00e9")],
)
def test_non_ascii_credentials_are_compared_as_bytes(tmp_path: Path, user: str, password: str):
    """Non-ASCII credentials sent, or configured: 401 or 200, never a 500 (hmac.compare_digest refuses
    non-ASCII str)."""
    app = make_app(make_settings(tmp_path, basic_auth_user="studio", basic_auth_pass="s3cret"))
    body = {"project": PROJECT, "schema": DETECTION_CONFIG}
    assert_json_error(app.client.post("/setup", json=body, headers=basic(user, password)), 401)
    configured = make_app(make_settings(tmp_path / "b", basic_auth_user=user, basic_auth_pass=password))
    assert configured.client.post("/setup", json=body, headers=basic(user, password)).status_code == 200
    assert_json_error(configured.client.post("/setup", json=body, headers=basic("studio", "s3cret")), 401)


def test_metrics_method_label_is_bounded(tmp_path: Path):
    app = make_app(make_settings(tmp_path))
    for method in ("FOO", "BAR", "X-MADE-UP", "PROPFIND"):
        assert app.client.open("/", method=method).status_code == 405
    text = app.client.get("/metrics").get_data(as_text=True)
    assert 'method="other"' in text
    for method in ("FOO", "BAR", "X-MADE-UP", "PROPFIND"):
        assert f'method="{method}"' not in text


# ------------------------------------------------------------------------------------------ item 2: classes
@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook"])
def test_more_labels_than_max_classes_are_refused_before_anything_is_built(tmp_path: Path, route: str):
    app = make_app(make_settings(tmp_path, max_classes=50))
    config = labels_config(51)
    data = write_pair(app.images, "p")
    bodies = {
        "/setup": {"project": PROJECT, "schema": config},
        "/predict": predict_body([{"id": 1, "data": data}], config=config),
        "/webhook": {"action": "START_TRAINING", "project": {"id": 7, "label_config": config}},
    }
    message = assert_json_error(app.client.post(route, json=bodies[route]), 400)
    assert "51 labels" in message and "MAX_CLASSES=50" in message
    assert app.backend.registry.projects() == [] and not app.backend._initial and not app.runner.jobs()
    # At the cap: served.
    response = app.client.post("/predict", json=predict_body([{"id": 1, "data": data}], labels_config(50)))
    assert response.status_code == 200, response.get_json()


def test_max_classes_default_is_well_above_real_datasets():
    assert Settings.from_env({}).max_classes >= 1000  # MFNet 9, FLIR 3-15, COCO 80, LVIS 1203 (long tail)


def test_no_model_is_built_for_a_project_that_was_not_set_up(tmp_path: Path):
    app = make_app(make_settings(tmp_path))
    from ls_backend.label_config import schema_from_config

    with pytest.raises(BadRequest, match="not set up"):
        app.backend._predictor("99", "rgbt-initial", schema_from_config(DETECTION_CONFIG))
    assert not app.backend._initial


# ------------------------------------------------------------------------------------------ item 6
def test_projects_and_config_size_are_bounded(tmp_path: Path):
    app = make_app(make_settings(tmp_path, max_projects=2, max_label_config_bytes=4096))

    def set_up(project: str):
        return app.client.post("/setup", json={"project": project, "schema": DETECTION_CONFIG})

    for project in ("1.1700000000", "2.1700000000"):
        assert set_up(project).status_code == 200
    third = {"project": "3.1700000000", "schema": DETECTION_CONFIG}
    assert "MAX_PROJECTS" in assert_json_error(app.client.post("/setup", json=third), 403)
    webhook = {"action": "START_TRAINING", "project": {"id": 4, "label_config": DETECTION_CONFIG}}
    assert "MAX_PROJECTS" in assert_json_error(app.client.post("/webhook", json=webhook), 403)
    data = write_pair(app.images, "p")
    body = predict_body([{"id": 1, "data": data}], project="5.1700000000")
    assert "MAX_PROJECTS" in assert_json_error(app.client.post("/predict", json=body), 403)
    assert app.backend.registry.projects() == ["1", "2"]
    # Known projects keep working.
    assert set_up("2.1700000000").status_code == 200
    padded = DETECTION_CONFIG.replace("<View>", "<View>" + "<!--" + "x" * 5000 + "-->", 1)
    big = {"project": "1.1700000000", "schema": padded}
    assert "MAX_LABEL_CONFIG_BYTES" in assert_json_error(app.client.post("/setup", json=big), 413)
    info = app.backend.registry.project("1")
    assert info is not None and info.label_config == DETECTION_CONFIG


@pytest.mark.parametrize("value", ["1.5", "1.", "12.17", "12.1700000000x", "12.-1700000000", 1.5, 12.0, True])
def test_project_ids_that_are_not_label_studio_ids_are_refused(value: Any):
    with pytest.raises(BadRequest, match="project must be"):
        project_key(value)


@pytest.mark.parametrize(("value", "key"), [("12.1700000000", "12"), ("12", "12"), (12, "12"), (" 7 ", "7")])
def test_label_studio_project_ids_are_read(value: Any, key: str):
    assert project_key(value) == key


def test_project_1_5_is_not_project_1(app: AppUnderTest):
    body = {"project": "1.5", "schema": DETECTION_CONFIG}
    assert "project must be" in assert_json_error(app.client.post("/setup", json=body), 400)
    assert app.backend.registry.projects() == []


def test_a_long_url_gets_a_json_414(app: AppUnderTest):
    for path in ("/health?pad=" + "a" * 5000, "/versions?project=7&pad=" + "b" * 5000, "/" + "c" * 5000):
        assert "URL longer than" in assert_json_error(app.client.get(path), 414)


def test_passwords_in_image_urls_are_redacted_in_errors_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with listener((404, b"no")) as host:
        app = make_app(make_settings(tmp_path, allowed_image_hosts=(f"127.0.0.1:{host.port}",)))
        data = write_pair(app.images, "p")
        urls = [
            f"http://alice:hunter2-secret@127.0.0.1:{host.port}/a.png",  # allowed host: 404
            "http://alice:hunter2-secret@not-allowed.example/a.png",  # refused host
            "https://alice:hunter2-secret@[::1/a.png",  # not a URL
            "ftp://alice:hunter2-secret@files.example/a.png",  # unsupported scheme
        ]
        with caplog.at_level(logging.DEBUG):
            for url in urls:
                tasks = [{"id": 1, "data": {"rgb": url, "thermal": data["thermal"]}}]
                response = app.client.post("/predict", json=predict_body(tasks))
                message = assert_json_error(response)
                assert "hunter2" not in message and "***@" in message, message
        assert host.requests, "the allowed host was asked"
    assert "hunter2" not in caplog.text


def test_an_image_from_the_allowed_host_still_loads_with_credentials_in_its_url(tmp_path: Path):
    """Redaction is for messages only: the fetch itself keeps the URL's credentials."""
    with listener((200, png_bytes(80, 64))) as host:
        app = make_app(make_settings(tmp_path, allowed_image_hosts=(f"127.0.0.1:{host.port}",)))
        url = f"http://alice:pw@127.0.0.1:{host.port}/a.png"
        data = write_pair(app.images, "p")
        response = app.client.post(
            "/predict", json=predict_body([{"id": 1, "data": {"rgb": url, "thermal": data["thermal"]}}])
        )
        assert response.status_code == 200, response.get_json()
        assert host.tokens() == ["Basic " + base64.b64encode(b"alice:pw").decode()]
