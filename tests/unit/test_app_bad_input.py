"""Every bad input gets a 4xx JSON error with a message, never a 5xx (docs/architecture.md, section 4).

Real app (Flask test client), real files under the local-files root, real HTTP servers on 127.0.0.1, tiny
published models. Decisions these tests pin down:

* ``/predict`` answers one result per task, in order. A task whose images cannot be fetched or decoded gets
  ``{"result": [], "model_version": v, "error": message}`` and the answer lists it under ``errors``; the
  other tasks are predicted. When every task fails, the request fails with the first task's 4xx status.
* An image Label Studio or an allowed host cannot deliver (unreachable, 5xx, refused token) is answered
  422 (the fetcher's 502 is never passed on: the request names an image that cannot be had).
* A label config whose task kind (detection / segmentation) differs from the current model version's is
  answered 409 until a new version is trained.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.app_support import (
    DETECTION_CONFIG,
    PROJECT,
    SEGMENTATION_CONFIG,
    AppUnderTest,
    assert_json_error,
    image_server,
    make_app,
    make_settings,
    png_bomb,
    png_bytes,
    predict_body,
    publish_tiny,
    write_pair,
)

ROUTES = ["/setup", "/predict", "/webhook", "/train"]
I2 = '<Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
RECT = '<RectangleLabels name="label" toName="rgb"><Label value="person"/></RectangleLabels>'


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def trained(app: AppUnderTest) -> AppUnderTest:
    """An app whose project 7 has a current (tiny) detection model."""
    publish_tiny(app.backend)
    return app


def predict(app: AppUnderTest, *datas: dict[str, Any], config: str = DETECTION_CONFIG):
    tasks = [{"id": i + 1, "data": data} for i, data in enumerate(datas)]
    return app.client.post("/predict", json=predict_body(tasks, config))


# ------------------------------------------------------------------------------------------ bodies
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "raw",
    [
        b'{"project": ',
        b"{'project': 1}",
        b"[]",
        b'"text"',
        b"42",
        b"null",
        b"true",
        b"",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the JSON parser's recursion limit
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"project": 1' + b"0" * 5000 + b"}",  # an integer longer than Python converts
    ],
    ids=lambda raw: raw[:12].decode("latin-1"),
)
def test_bodies_that_are_not_json_objects(app: AppUnderTest, route: str, raw: bytes):
    response = app.client.post(route, data=raw, content_type="application/json")
    message = assert_json_error(response, 400)
    assert "JSON object" in message


@pytest.mark.parametrize("route", ROUTES)
def test_json_sent_as_another_content_type(app: AppUnderTest, route: str):
    response = app.client.post(route, data=json.dumps({"project": PROJECT}), content_type="text/plain")
    assert "Content-Type: application/json" in assert_json_error(response, 400)


def test_body_over_the_request_limit(tmp_path: Path):
    app = make_app(make_settings(tmp_path, max_request_bytes=1000))
    response = app.client.post("/predict", json=predict_body([{"id": 1, "data": {"rgb": "x" * 2000}}]))
    assert_json_error(response, 413)


def test_unknown_routes_and_methods(app: AppUnderTest):
    assert_json_error(app.client.get("/nope"), 404)
    assert_json_error(app.client.get("/predict"), 405)
    assert_json_error(app.client.put("/setup", json={}), 405)
    assert_json_error(app.client.get("/jobs/no-such-job"), 404)
    assert app.client.get("/jobs?limit=abc").status_code == 200
    assert app.client.get("/jobs?limit=-5").status_code == 200


LONG_ID = "9" * 80
MISSING_OR_WRONG = [
    # /setup
    ("/setup", {}, 400, "project"),
    ("/setup", {"project": PROJECT}, 400, "schema"),
    ("/setup", {"project": "abc", "schema": DETECTION_CONFIG}, 400, "project"),
    ("/setup", {"project": [7], "schema": DETECTION_CONFIG}, 400, "project"),
    ("/setup", {"project": 7.5, "schema": DETECTION_CONFIG}, 400, "project"),
    ("/setup", {"project": "\u00b2", "schema": DETECTION_CONFIG}, 400, "project"),  # a unicode digit
    ("/setup", {"project": LONG_ID, "schema": DETECTION_CONFIG}, 400, "project"),
    ("/setup", {"project": "", "schema": DETECTION_CONFIG}, 400, "project"),
    ("/setup", {"project": PROJECT, "schema": 5}, 400, "schema"),
    ("/setup", {"project": PROJECT, "schema": DETECTION_CONFIG, "hostname": 5}, 400, "hostname"),
    ("/setup", {"project": PROJECT, "schema": DETECTION_CONFIG, "hostname": "localhost"}, 400, "hostname"),
    ("/setup", {"project": PROJECT, "schema": DETECTION_CONFIG, "hostname": "ftp://ls"}, 400, "hostname"),
    ("/setup", {"project": PROJECT, "schema": DETECTION_CONFIG, "hostname": "http://"}, 400, "hostname"),
    ("/setup", {"project": PROJECT, "schema": DETECTION_CONFIG, "access_token": {}}, 400, "access_token"),
    (
        "/setup",
        {"project": PROJECT, "schema": DETECTION_CONFIG, "access_token": "tok en"},
        400,
        "access_token",
    ),
    # /predict
    ("/predict", {}, 400, "tasks"),
    ("/predict", {"tasks": "x", "project": PROJECT, "label_config": DETECTION_CONFIG}, 400, "tasks"),
    ("/predict", {"tasks": [], "project": PROJECT, "label_config": DETECTION_CONFIG}, 400, "tasks"),
    ("/predict", {"tasks": [1], "project": PROJECT, "label_config": DETECTION_CONFIG}, 400, "task 0"),
    (
        "/predict",
        {"tasks": [{"data": "x"}], "project": PROJECT, "label_config": DETECTION_CONFIG},
        400,
        "data",
    ),
    ("/predict", {"tasks": [{"id": 1}], "project": PROJECT, "label_config": DETECTION_CONFIG}, 400, "data"),
    (
        "/predict",
        {"tasks": [{"id": "1; DROP", "data": {}}], "project": PROJECT, "label_config": DETECTION_CONFIG},
        400,
        "id",
    ),
    (
        "/predict",
        {"tasks": [{"id": [1], "data": {}}], "project": PROJECT, "label_config": DETECTION_CONFIG},
        400,
        "id",
    ),
    ("/predict", {"tasks": [{"id": 1, "data": {}}], "label_config": DETECTION_CONFIG}, 400, "project"),
    ("/predict", {"tasks": [{"id": 1, "data": {}}], "project": PROJECT}, 400, "label_config"),
    (
        "/predict",
        {"tasks": [{"id": 1, "data": {}}], "project": PROJECT, "label_config": 3},
        400,
        "label_config",
    ),
    (
        "/predict",
        {"tasks": [{"id": 1, "data": {}}], "project": {}, "label_config": DETECTION_CONFIG},
        400,
        "project",
    ),
    # /webhook
    ("/webhook", {}, 400, "action"),
    ("/webhook", {"action": 5}, 400, "action"),
    ("/webhook", {"action": "START_TRAINING"}, 400, "project"),
    ("/webhook", {"action": "START_TRAINING", "project": 7}, 400, "project"),
    ("/webhook", {"action": "START_TRAINING", "project": {"title": "x"}}, 400, "project"),
    ("/webhook", {"action": "START_TRAINING", "project": {"id": "seven"}}, 400, "project"),
    ("/webhook", {"action": "START_TRAINING", "project": {"id": None}}, 400, "project"),
    (
        "/webhook",
        {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": []}},
        400,
        "label config",
    ),
    (
        "/webhook",
        {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": {"a": 1}}},
        400,
        "label config",
    ),
    (
        "/webhook",
        {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": 12}},
        400,
        "label config",
    ),
    (
        "/webhook",
        {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": "<View/>"}},
        400,
        "Image",
    ),
    # a project this backend never saw, and no config to learn it from
    ("/webhook", {"action": "START_TRAINING", "project": {"id": 4242}}, 404, "unknown"),
    # /train
    ("/train", {}, 400, "project"),
    ("/train", {"project": "x.1"}, 400, "project"),
    ("/train", {"project": 4243}, 404, "unknown"),
]


@pytest.mark.parametrize(("route", "body", "status", "needle"), MISSING_OR_WRONG)
def test_missing_and_wrong_fields(app: AppUnderTest, route: str, body: dict, status: int, needle: str):
    message = assert_json_error(app.client.post(route, json=body), status)
    assert needle.lower() in message.lower()


def test_versions_needs_a_valid_project(app: AppUnderTest):
    assert "project" in assert_json_error(app.client.get("/versions"), 400)
    assert "project" in assert_json_error(app.client.get("/versions?project=abc"), 400)
    assert "project" in assert_json_error(app.client.get(f"/versions?project={LONG_ID}"), 400)


# ------------------------------------------------------------------------------------------ label configs
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><View>' + I2 + RECT + "<Header value='&lol3;'/></View>"
)
XXE = (
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]><View>&x;'
    + I2
    + RECT
    + "</View>"
)
BAD_CONFIGS = {
    "empty": ("", "empty"),
    "not xml": ("this is not xml", "XML"),
    "unclosed": ("<View>" + I2, "XML"),
    "one image": ('<View><Image name="rgb" value="$rgb"/>' + RECT + "</View>", "two <Image>"),
    "three images": ("<View>" + I2 + '<Image name="x" value="$x"/>' + RECT + "</View>", "two <Image>"),
    "no image": ('<View><Text name="t" value="$t"/></View>', "two <Image>"),
    "no control": ("<View>" + I2 + "</View>", "control"),
    "only choices": (
        "<View>" + I2 + '<Choices name="c" toName="rgb"><Choice value="day"/></Choices></View>',
        "control",
    ),
    "no labels": ("<View>" + I2 + '<RectangleLabels name="label" toName="rgb"/></View>', "Label"),
    "bound elsewhere": (
        "<View>" + I2 + '<RectangleLabels name="l" toName="nope"><Label value="a"/></RectangleLabels></View>',
        "bound",
    ),
    "mixed tasks": (
        "<View>" + I2 + RECT + '<BrushLabels name="b" toName="rgb"><Label value="a"/></BrushLabels></View>',
        "mixes",
    ),
    "literal image": (
        '<View><Image name="rgb" value="http://x/a.png"/><Image name="thermal" value="$t"/>'
        + RECT
        + "</View>",
        "$key",
    ),
    "same key": (
        '<View><Image name="rgb" value="$img"/><Image name="thermal" value="$img"/>' + RECT + "</View>",
        "same task key",
    ),
    "billion laughs": (BILLION_LAUGHS, "DTD"),
    "xxe": (XXE, "DTD"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_unusable_label_configs(app: AppUnderTest, case: str):
    config, needle = BAD_CONFIGS[case]
    setup = app.client.post("/setup", json={"project": PROJECT, "schema": config})
    assert needle in assert_json_error(setup, 400)
    data = write_pair(app.images, "p")
    assert needle in assert_json_error(predict(app, data, config=config), 400)
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": config}}
    if config:
        assert needle in assert_json_error(app.client.post("/webhook", json=hook), 400)
    else:  # an empty config is no config: the (unknown) project cannot be learnt from this webhook
        assert "unknown" in assert_json_error(app.client.post("/webhook", json=hook), 404)


def test_config_of_another_task_kind_than_the_current_model(trained: AppUnderTest):
    data = write_pair(trained.images, "p")
    message = assert_json_error(predict(trained, data, config=SEGMENTATION_CONFIG), 409)
    assert "detection" in message and "segmentation" in message
    assert predict(trained, data).status_code == 200


# ------------------------------------------------------------------------------------------ task data
@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({}, "'rgb'"),
        ({"rgb": "p_rgb.png"}, "'thermal'"),
        ({"rgb": "p_rgb.png", "thermal": ""}, "'thermal'"),
        ({"rgb": 5, "thermal": "p_thermal.png"}, "'rgb'"),
        ({"rgb": ["p_rgb.png"], "thermal": "p_thermal.png"}, "'rgb'"),
        ({"image": "p_rgb.png", "thermal": "p_thermal.png"}, "'rgb'"),
    ],
)
def test_tasks_without_their_image_fields(trained: AppUnderTest, data: dict, needle: str):
    write_pair(trained.images, "p")
    assert needle in assert_json_error(predict(trained, data), 400)


def test_one_bad_task_does_not_fail_the_batch(trained: AppUnderTest):
    good = write_pair(trained.images, "good")
    (trained.images / "junk.png").write_bytes(b"this is text, not a PNG")
    response = predict(
        trained,
        good,
        {"rgb": "junk.png", "thermal": good["thermal"]},
        {"rgb": "missing.png", "thermal": good["thermal"]},
        {"thermal": good["thermal"]},
        good,
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    results = body["results"]
    assert len(results) == 5
    for index in (0, 4):
        assert results[index]["result"] and 0.0 <= results[index]["score"] <= 1.0
        assert "error" not in results[index]
    for index in (1, 2, 3):
        assert results[index]["result"] == [] and results[index]["model_version"] == body["model_version"]
        assert isinstance(results[index]["error"], str)
        assert results[index]["score"] == 1.0  # served last by uncertainty sampling, never first
    assert "not a readable image" in results[1]["error"]
    assert "does not exist" in results[2]["error"]
    assert "'rgb'" in results[3]["error"]
    assert [e["task"] for e in body["errors"]] == [2, 3, 4]


def test_when_every_task_fails_the_request_fails(trained: AppUnderTest):
    response = predict(trained, {"rgb": "missing.png", "thermal": "x.png"}, {})
    assert "does not exist" in assert_json_error(response, 404)
    # For a project without a trained version, no initial network is built for a request that fails.
    tasks = [{"id": 1, "data": {"rgb": "missing.png", "thermal": "x.png"}}]
    body = predict_body(tasks, project="9.1700000000")
    assert_json_error(trained.client.post("/predict", json=body), 404)
    assert not trained.backend._initial


# ------------------------------------------------------------------------------------------ image content
def test_non_image_bytes(trained: AppUnderTest):
    good = write_pair(trained.images, "p")
    for name, content in {"text.png": b"hello", "html.png": b"<html></html>", "empty.png": b""}.items():
        (trained.images / name).write_bytes(content)
        message = assert_json_error(predict(trained, {"rgb": name, "thermal": good["thermal"]}), 415)
        assert name in message
    (trained.images / "trunc.png").write_bytes(png_bytes(80, 64)[:200])
    assert_json_error(predict(trained, {"rgb": good["rgb"], "thermal": "trunc.png"}), 415)


def test_oversize_images_in_bytes_and_in_pixels(tmp_path: Path):
    app = make_app(make_settings(tmp_path, max_image_bytes=4000, max_image_pixels=100_000))
    publish_tiny(app.backend)
    (app.images / "big.png").write_bytes(png_bytes(80, 64))  # ~15 kB of noise: over 4000 bytes
    (app.images / "small.png").write_bytes(png_bytes(8, 8, "L"))
    assert "MAX_IMAGE_BYTES" in assert_json_error(
        predict(app, {"rgb": "big.png", "thermal": "small.png"}), 413
    )
    # A decompression bomb: a few hundred bytes announcing 100000 x 100000 pixels; refused from its header.
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 4000
    (app.images / "bomb.png").write_bytes(bomb)
    message = assert_json_error(predict(app, {"rgb": "small.png", "thermal": "bomb.png"}), 413)
    assert "100000x100000" in message
    (app.images / "wide.png").write_bytes(png_bytes(1000, 101, "L"))  # 101000 pixels: just over the limit
    assert_json_error(predict(app, {"rgb": "small.png", "thermal": "wide.png"}), 413)


def test_mismatched_pair_sizes_are_resized_with_a_warning(trained: AppUnderTest, caplog):
    data = write_pair(trained.images, "p", (64, 80), thermal_size=(32, 40))
    with caplog.at_level(logging.WARNING, logger="ls_backend.images"):
        response = predict(trained, data)
    assert response.status_code == 200, response.get_json()
    (prediction,) = response.get_json()["results"]
    assert {(r["original_width"], r["original_height"]) for r in prediction["result"]} == {(80, 64)}
    assert any("resizing thermal" in record.getMessage() for record in caplog.records)


def test_mismatched_pair_sizes_are_rejected_when_configured(tmp_path: Path):
    app = make_app(make_settings(tmp_path, reject_mismatched_pairs=True))
    publish_tiny(app.backend)
    data = write_pair(app.images, "p", (64, 80), thermal_size=(32, 40))
    assert "REJECT_MISMATCHED_PAIRS" in assert_json_error(predict(app, data), 422)
    same = write_pair(app.images, "q")
    response = predict(app, same, data)
    assert response.status_code == 200
    assert "REJECT_MISMATCHED_PAIRS" in response.get_json()["results"][1]["error"]


@pytest.mark.parametrize(
    ("rgb_mode", "thermal_mode"),
    [("L", "L"), ("RGB", "I;16"), ("RGB", "RGB"), ("L", "I;16")],
    ids=["gray-rgb", "16-bit-thermal", "3-channel-thermal", "gray-and-16-bit"],
)
def test_grayscale_and_16_bit_images_are_handled(trained: AppUnderTest, rgb_mode: str, thermal_mode: str):
    data = write_pair(trained.images, "p", rgb_mode=rgb_mode, thermal_mode=thermal_mode)
    response = predict(trained, data)
    assert response.status_code == 200, response.get_json()
    (prediction,) = response.get_json()["results"]
    assert prediction["result"] and "error" not in prediction


# ------------------------------------------------------------------------------------------ SSRF
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fe80::1]/x.png",
        "http://[::ffff:169.254.169.254]/x.png",
        "http://127.0.0.1:1/x.png",
        "http://localhost:6379/",
        "https://example.com/x.png",
    ],
)
def test_urls_to_hosts_not_allowed(trained: AppUnderTest, url: str):
    data = write_pair(trained.images, "p")
    message = assert_json_error(predict(trained, {"rgb": url, "thermal": data["thermal"]}), 403)
    assert "ALLOWED_IMAGE_HOSTS" in message or "blocked" in message


def test_metadata_address_is_refused_even_when_allowed(tmp_path: Path):
    app = make_app(make_settings(tmp_path, allowed_image_hosts=("169.254.169.254",)))
    publish_tiny(app.backend)
    data = write_pair(app.images, "p")
    url = "http://169.254.169.254/latest/meta-data/"
    assert "blocked address" in assert_json_error(predict(app, {"rgb": url, "thermal": data["thermal"]}), 403)


@pytest.mark.parametrize(
    "url",
    ["gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/x.png", "dict://127.0.0.1:11211/stat", "javascript:x"],
)
def test_unsupported_schemes(trained: AppUnderTest, url: str):
    data = write_pair(trained.images, "p")
    assert "scheme" in assert_json_error(predict(trained, {"rgb": url, "thermal": data["thermal"]}), 400)


@pytest.mark.parametrize(
    "url", ["http://[::1/x.png", "http://[not-an-ip]/x.png", "https://h:99999/x.png?sig=secret"]
)
def test_malformed_urls(trained: AppUnderTest, url: str):
    data = write_pair(trained.images, "p")
    message = assert_json_error(predict(trained, {"rgb": url, "thermal": data["thermal"]}))
    assert "secret" not in message  # query strings (presigned credentials) stay out of messages


def test_redirects_to_other_hosts_are_refused(tmp_path: Path):
    with image_server() as server:
        app = make_app(make_settings(tmp_path, allowed_image_hosts=(f"127.0.0.1:{server.port}",)))
        publish_tiny(app.backend)
        server.routes["/thermal.png"] = (200, {}, png_bytes(80, 64, "L"))
        server.routes["/to-localhost"] = (
            302,
            {"Location": server.url("/thermal.png", host="localhost")},
            b"",
        )
        server.routes["/to-metadata"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
        server.routes["/to-file"] = (302, {"Location": "file:///etc/passwd"}, b"")
        server.routes["/to-invalid"] = (302, {"Location": "http://[::1/x.png"}, b"")
        server.routes["/to-self"] = (302, {"Location": "/thermal.png"}, b"")
        thermal = server.url("/thermal.png")
        for path in ("/to-localhost", "/to-metadata", "/to-file"):
            message = assert_json_error(predict(app, {"rgb": server.url(path), "thermal": thermal}), 403)
            assert "redirect" in message
        message = assert_json_error(predict(app, {"rgb": server.url("/to-invalid"), "thermal": thermal}), 422)
        assert "invalid redirect" in message
        # A redirect on the allowed host itself is followed.
        response = predict(app, {"rgb": server.url("/to-self"), "thermal": thermal})
        assert response.status_code == 200, response.get_json()
        assert server.hits.get("/thermal.png", 0) >= 1


def test_allowed_host_that_fails_is_a_4xx(tmp_path: Path):
    with image_server() as server:
        app = make_app(make_settings(tmp_path, allowed_image_hosts=("127.0.0.1",)))
        publish_tiny(app.backend)
        server.routes["/boom.png"] = (500, {}, b"internal error")
        thermal = write_pair(app.images, "p")["thermal"]
        message = assert_json_error(predict(app, {"rgb": server.url("/boom.png"), "thermal": thermal}), 422)
        assert "HTTP 500" in message
        # Allowed, but nothing listens there.
        message = assert_json_error(
            predict(app, {"rgb": "http://127.0.0.1:1/x.png", "thermal": thermal}), 422
        )
        assert "cannot reach" in message
        assert_json_error(predict(app, {"rgb": server.url("/missing.png"), "thermal": thermal}), 404)


# ------------------------------------------------------------------------------------------ paths
TRAVERSALS = [
    ("/data/local-files/?d=../../etc/passwd", 400),
    ("/data/local-files/?d=images/../../../etc/passwd", 400),
    ("/data/local-files/?d=%2e%2e/%2e%2e/etc/passwd", 400),
    ("/data/local-files/?d=..%2F..%2Fetc%2Fpasswd", 400),
    ("/data/upload/../../etc/passwd", 400),
    ("/etc/passwd", 403),
    ("../../../../etc/passwd", 403),
    ("file:///etc/passwd", 403),
    ("file://otherhost/etc/passwd", 403),
    ("//169.254.169.254/latest/meta-data/", 403),
]


@pytest.mark.parametrize(("url", "status"), TRAVERSALS)
def test_path_traversal(trained: AppUnderTest, url: str, status: int):
    data = write_pair(trained.images, "p")
    message = assert_json_error(predict(trained, {"rgb": url, "thermal": data["thermal"]}), status)
    assert "root:" not in message


@pytest.mark.parametrize(("url", "status"), TRAVERSALS[:5])
def test_path_traversal_through_label_studio_is_refused_before_any_request(
    trained: AppUnderTest, url: str, status: int
):
    """With a Label Studio connection, traversal in a Label Studio URL is refused locally: nothing is sent."""
    with image_server() as studio:
        setup = {
            "project": PROJECT,
            "schema": DETECTION_CONFIG,
            "hostname": studio.url(""),
            "access_token": "0123456789abcdef0123456789abcdef01234567",
        }
        assert trained.client.post("/setup", json=setup).status_code == 200
        data = write_pair(trained.images, "p")
        assert_json_error(predict(trained, {"rgb": url, "thermal": data["thermal"]}), status)
        assert studio.hits == {}


def test_symlink_out_of_the_root(trained: AppUnderTest, tmp_path: Path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(80, 64))
    os.symlink(outside, trained.images / "link.png")
    data = write_pair(trained.images, "p")
    assert "outside" in assert_json_error(
        predict(trained, {"rgb": "link.png", "thermal": data["thermal"]}), 403
    )


def test_local_paths_need_a_root(tmp_path: Path):
    app = make_app(make_settings(tmp_path, local_files_root=None))
    publish_tiny(app.backend)
    message = assert_json_error(predict(app, {"rgb": "a.png", "thermal": "b.png"}), 403)
    assert "LOCAL_FILES_ROOT" in message


# ------------------------------------------------------------------------------------------ Label Studio
def test_label_studio_urls_without_a_connection(trained: AppUnderTest):
    response = predict(trained, {"rgb": "/data/upload/1/a.png", "thermal": "/data/upload/1/b.png"})
    assert "Label Studio" in assert_json_error(response, 422)
    response = predict(trained, {"rgb": "s3://bucket/a.png", "thermal": "s3://bucket/b.png"})
    assert "Label Studio" in assert_json_error(response, 422)


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "token",
    [
        _jwt({"token_type": "refresh", "exp": 4_000_000_000}),  # a PAT: refreshed at an unreachable host
        _jwt({"token_type": "refresh", "exp": "soon"}),  # a JWT with a nonsense expiry
        _jwt({"token_type": "refresh", "exp": [1]}),
        _jwt({"token_type": "refresh", "exp": 1}),  # expired
    ],
)
def test_label_studio_connection_that_cannot_authenticate(trained: AppUnderTest, token: str):
    setup = {
        "project": PROJECT,
        "schema": DETECTION_CONFIG,
        "hostname": "http://127.0.0.1:1",
        "access_token": token,
    }
    assert trained.client.post("/setup", json=setup).status_code == 200
    response = predict(trained, {"rgb": "/data/upload/1/a.png", "thermal": "/data/upload/1/b.png"})
    assert "Label Studio" in assert_json_error(response)


def test_cloud_uri_with_a_task_id_label_studio_cannot_presign(trained: AppUnderTest):
    with image_server() as studio:
        setup = {
            "project": PROJECT,
            "schema": DETECTION_CONFIG,
            "hostname": studio.url(""),
            "access_token": "0123456789abcdef0123456789abcdef01234567",
        }
        assert trained.client.post("/setup", json=setup).status_code == 200
        body = predict_body([{"data": {"rgb": "s3://b/a.png", "thermal": "s3://b/t.png"}}])
        assert "task id" in assert_json_error(trained.client.post("/predict", json=body), 400)
        assert studio.hits == {}
