"""Property tests: thousands of generated request bodies against the real Flask app never get a 5xx.

Bodies are arbitrary JSON values, raw bytes, and structurally plausible but wrong bodies for /setup,
/predict, /webhook and /train (right keys with wrong values, wrong keys, images that cannot be had). Every
answer must be < 500, and every 4xx must be a JSON object with an ``error`` message.

Image URLs are chosen to fail fast without touching the network (hosts not allowed, paths outside the root,
Label Studio URLs of a project with no connection or one that refuses connections at once), plus a rare valid
pair so the model path runs too (a tiny network). The figures (bodies sent, status histogram, 5xx count) are
merged under ``"fuzz"`` into the reliability figures (``tests/reliability.py``: a temporary file, or
``benchmarks/results/reliability.json`` with ``make reliability``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests.reliability import merge_results
from tests.unit.app_support import (
    DETECTION_CONFIG,
    SEGMENTATION_CONFIG,
    AppUnderTest,
    make_app,
    make_settings,
    png_bomb,
    png_bytes,
    publish_tiny,
    write_pair,
)

#: Requests sent, by route; answers by status; every 5xx and every 4xx without a JSON message.
SENT: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()
ROUTE_STATUSES: Counter[tuple[str, int]] = Counter()
SERVER_ERRORS: list[dict[str, Any]] = []
BAD_ERROR_BODIES: list[dict[str, Any]] = []
#: The property tests this session has run (whatever their outcome).
RAN: set[str] = set()

# Examples per test; the whole file runs in well under 60 s on 2 shared CPU cores.
FAST = 500
SLOW = 300


def fuzz_settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# ------------------------------------------------------------------------------------------ app
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The app's files on a tmpfs when there is one: /setup and webhooks save project info with fsync,
    which on a busy disk would cost more than everything else a request does."""
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="rgbt-fuzz-", dir="/dev/shm"))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fuzz_app(fuzz_root: Path) -> Iterator[AppUnderTest]:
    app = make_app(make_settings(fuzz_root, train_every_n_annotations=5))
    publish_tiny(app.backend, "7")
    write_pair(app.images, "ok")
    write_pair(app.images, "odd", (48, 60), thermal_size=(24, 30), thermal_mode="I;16")
    (app.images / "junk.png").write_bytes(b"GIF89a but not really")
    (app.images / "bomb.png").write_bytes(png_bomb(60_000, 60_000))
    (app.images / "gray.png").write_bytes(png_bytes(80, 64, "L"))
    # The runner's failing training jobs log tracebacks; thousands of them would only slow the run down.
    quiet = logging.getLogger("ls_backend.queues")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield app
    finally:
        quiet.setLevel(level)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    started = time.perf_counter()
    yield
    figures = {
        "bodies_sent": sum(SENT.values()),
        "by_route": dict(sorted(SENT.items())),
        "status_histogram": {str(k): v for k, v in sorted(STATUSES.items())},
        "status_histogram_by_route": {
            route: {str(k): v for (r, k), v in sorted(ROUTE_STATUSES.items()) if r == route}
            for route in sorted(SENT)
        },
        "server_errors_5xx": len(SERVER_ERRORS),
        "error_bodies_without_json_message": len(BAD_ERROR_BODIES),
        "first_5xx": SERVER_ERRORS[:3],
        "seconds": round(time.perf_counter() - started, 1),
        "settings": {"fast_tests_max_examples": FAST, "slow_tests_max_examples": SLOW},
        "hypothesis": hypothesis.__version__,
    }
    merge_results("fuzz", figures)


@pytest.fixture(autouse=True)
def record_property(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    RAN.add(request.node.originalname)


def check(route: str, body: Any, response: TestResponse) -> None:
    SENT[route] += 1
    STATUSES[response.status_code] += 1
    ROUTE_STATUSES[(route, response.status_code)] += 1
    if response.status_code >= 500:
        SERVER_ERRORS.append(
            {
                "route": route,
                "status": response.status_code,
                "body": repr(body)[:300],
                "answer": response.get_data(as_text=True)[:300],
            }
        )
    assert response.status_code < 500, (route, body, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:
        payload = response.get_json(silent=True) if response.is_json else None
        ok = isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"].strip()
        if not ok:
            BAD_ERROR_BODIES.append(
                {"route": route, "status": response.status_code, "body": repr(body)[:300]}
            )
        assert ok, (route, body, response.status_code, response.get_data(as_text=True)[:500])


def post(app: AppUnderTest, route: str, body: Any) -> None:
    check(route, body, app.client.post(route, json=body))


# ------------------------------------------------------------------------------------------ strategies
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

PROJECT_IDS = [
    "7.1700000000",
    "7",
    7,
    "8.17",
    8,
    "0",
    "-1",
    "abc",
    "",
    " 7 ",
    "7.",
    ".7",
    "\u00b2",
    "9" * 30,
    "1e3",
    "7/../8",
    "7\x00",
]
projects = st.one_of(st.sampled_from(PROJECT_IDS), st.integers(), st.text(max_size=10), json_values)

I2 = '<Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
CONFIGS = [
    DETECTION_CONFIG,
    SEGMENTATION_CONFIG,
    "",
    "<View/>",
    "not xml <",
    "<View>" + I2 + "</View>",
    '<View><Image name="rgb" value="$rgb"/><RectangleLabels name="l" toName="rgb"><Label value="a"/>'
    "</RectangleLabels></View>",
    "<View>" + I2 + '<PolygonLabels name="p" toName="thermal"><Label value="car"/></PolygonLabels></View>',
    "<View>" + I2 + '<RectangleLabels name="l" toName="rgb"><Label value="dog"/></RectangleLabels></View>',
    '<!DOCTYPE v [<!ENTITY a "b">]><View>' + I2 + "</View>",
]
configs = st.one_of(st.sampled_from(CONFIGS), st.text(max_size=40), json_values)

URLS = [
    "",
    " ",
    "missing.png",
    "junk.png",
    "bomb.png",
    "gray.png",
    "ok_rgb.png",
    "ok_thermal.png",
    "odd_rgb.png",
    "odd_thermal.png",
    "/etc/passwd",
    "../../etc/passwd",
    "file:///etc/passwd",
    "file://host/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:1/x.png",
    "https://example.com/a.png",
    "http://[::1",
    "http://a:99999/x",
    "s3://bucket/a.png",
    "gs://b/a.png",
    "/data/upload/1/a.png",
    "/data/local-files/?d=../x.png",
    "/data/local-files/?d=ok_rgb.png",
    "/tasks/1/presign/?fileuri=czM6Ly9iL2E=",
    "gopher://127.0.0.1:6379/_",
    "C:\\images\\a.png",
    "a\x00.png",
    "%2e%2e/%2e%2e/etc/passwd",
    "//169.254.169.254/x",
]
urls = st.one_of(st.sampled_from(URLS), st.text(max_size=24), json_values)
# Plausible bodies: a right envelope (a known project, a usable config) around tasks whose images are drawn
# from URLS, so the image checks and the model path run; the other strategies break the envelope itself.
plausible_predict = st.fixed_dictionaries(
    {
        "tasks": st.lists(
            st.fixed_dictionaries(
                {
                    "data": st.fixed_dictionaries(
                        {"rgb": st.sampled_from(URLS), "thermal": st.sampled_from(URLS)}
                    )
                },
                optional={"id": st.integers(1, 10**6)},
            ),
            min_size=1,
            max_size=4,
        ),
        "project": st.sampled_from(["7.1700000000", "7", "8.1700000000", 9]),
        "label_config": st.sampled_from(CONFIGS[:2] + CONFIGS[7:9]),
        "params": st.just({"context": None}),
    }
)
data = st.one_of(
    st.fixed_dictionaries({}, optional={"rgb": urls, "thermal": urls, "image": urls}),
    st.fixed_dictionaries({"rgb": urls, "thermal": urls}),
    json_values,
)
tasks = st.one_of(
    st.fixed_dictionaries({"data": data}, optional={"id": st.one_of(st.integers(), json_values)}),
    json_values,
)
predict_bodies = st.one_of(
    plausible_predict,
    st.fixed_dictionaries(
        {"tasks": st.lists(tasks, max_size=5), "project": projects, "label_config": configs},
        optional={"params": st.one_of(st.fixed_dictionaries({"context": json_values}), json_values)},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "tasks": st.one_of(st.lists(tasks, max_size=3), json_values),
            "project": projects,
            "label_config": configs,
            "params": json_values,
        },
    ),
)

# /setup writes the way back to Label Studio: its projects are kept apart (ids 500..), and its valid
# hostnames refuse connections at once, so no later request waits on a network.
setup_projects = st.one_of(st.sampled_from(["500.1700000000", "501", 502, "503.x"]), st.text(max_size=6))
HOSTNAMES = [
    "http://127.0.0.1:1",
    "https://127.0.0.1:1/ls/",
    "localhost:8080",
    "http://",
    "http://[::1",
    "http://h:99999",
    "ftp://x",
    "",
    "  ",
    "javascript:alert(1)",
]
TOKENS = [
    "0123456789abcdef0123456789abcdef01234567",
    "",
    "tok en",
    "a.b.c",
    "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6InNvb24ifQ.c2ln",
]
setup_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "project": st.sampled_from(["500.1700000000", "501", 502]),
            "schema": st.sampled_from(CONFIGS[:2]),
            "hostname": st.sampled_from(HOSTNAMES),
            "access_token": st.sampled_from(TOKENS),
            "extra_params": st.just({}),
        }
    ),
    st.fixed_dictionaries(
        {"project": setup_projects, "schema": configs},
        optional={
            "hostname": st.one_of(st.sampled_from(HOSTNAMES), st.text(max_size=20), json_values),
            "access_token": st.one_of(st.sampled_from(TOKENS), st.text(max_size=20), json_values),
            "extra_params": json_values,
        },
    ),
    st.dictionaries(st.sampled_from(["project", "schema", "hostname", "access_token"]), json_values),
)

ACTIONS = [
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "START_TRAINING",
    "PROJECT_UPDATED",
    "TASKS_CREATED",
    "",
    "annotation_created",
    "START_TRAINING ",
]
plausible_webhook = st.fixed_dictionaries(
    {
        "action": st.sampled_from(ACTIONS),
        "project": st.fixed_dictionaries(
            {"id": st.sampled_from([7, "7", 8, 9])}, optional={"label_config": st.sampled_from(CONFIGS)}
        ),
    },
    optional={"annotation": json_values, "annotations": st.lists(json_values, max_size=3)},
)
webhook_bodies = st.one_of(
    plausible_webhook,
    st.fixed_dictionaries(
        {"action": st.one_of(st.sampled_from(ACTIONS), st.text(max_size=12), json_values)},
        optional={
            "project": st.one_of(
                st.fixed_dictionaries(
                    {"id": projects}, optional={"label_config": configs, "title": json_values}
                ),
                json_values,
            ),
            "annotation": json_values,
            "annotations": st.one_of(st.lists(json_values, max_size=4), json_values),
            "task": json_values,
        },
    ),
    st.dictionaries(st.sampled_from(["action", "project", "annotation", "annotations"]), json_values),
)
train_bodies = st.fixed_dictionaries({}, optional={"project": projects, "label_config": configs})

ROUTES = ["/setup", "/predict", "/webhook", "/train"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
]


# ------------------------------------------------------------------------------------------ properties
@fuzz_settings(FAST)
@given(route=st.sampled_from(ROUTES), body=json_values)
def test_arbitrary_json_values(fuzz_app: AppUnderTest, route: str, body: Any):
    post(fuzz_app, route, body)


@fuzz_settings(FAST)
@given(
    route=st.sampled_from(ROUTES), raw=st.binary(max_size=200), content_type=st.sampled_from(CONTENT_TYPES)
)
def test_arbitrary_bytes(fuzz_app: AppUnderTest, route: str, raw: bytes, content_type: str):
    check(route, raw, fuzz_app.client.post(route, data=raw, content_type=content_type))


@fuzz_settings(FAST)
@given(body=setup_bodies)
def test_setup_bodies(fuzz_app: AppUnderTest, body: dict):
    post(fuzz_app, "/setup", body)


@fuzz_settings(SLOW)
@given(body=predict_bodies)
def test_predict_bodies(fuzz_app: AppUnderTest, body: dict):
    post(fuzz_app, "/predict", body)


@fuzz_settings(FAST)
@given(body=webhook_bodies)
def test_webhook_bodies(fuzz_app: AppUnderTest, body: dict):
    post(fuzz_app, "/webhook", body)


@fuzz_settings(SLOW)
@given(body=train_bodies)
def test_train_bodies(fuzz_app: AppUnderTest, body: dict):
    post(fuzz_app, "/train", body)


@fuzz_settings(SLOW)
@given(
    route=st.sampled_from(["/versions", "/jobs", "/health", "/", "/metrics"]),
    query=st.dictionaries(
        st.sampled_from(["project", "limit", "x"]),
        st.one_of(st.sampled_from(["7", "8.17", "500", "-3", "1000"]), st.text(max_size=12)),
        max_size=2,
    ),
    job=st.text(max_size=16),
)
def test_get_routes(fuzz_app: AppUnderTest, route: str, query: dict, job: str):
    check(route, query, fuzz_app.client.get(route, query_string=query))
    check(
        "/jobs/<id>",
        job,
        fuzz_app.client.get("/jobs/" + job.replace("/", "").replace("?", "").replace("#", "")),
    )


PROPERTIES = (
    test_arbitrary_json_values,
    test_arbitrary_bytes,
    test_setup_bodies,
    test_predict_bodies,
    test_webhook_bodies,
    test_train_bodies,
    test_get_routes,
)


def test_fuzzing_sent_thousands_of_bodies_and_no_5xx(fuzz_app: AppUnderTest):
    """The figures the report records, over every property above. Properties this session has not run (the
    test alone, ``-k``, another order) run here first, so the check never depends on what else was chosen."""
    for prop in PROPERTIES:
        if prop.__name__ not in RAN:
            prop(fuzz_app=fuzz_app)
    assert sum(SENT.values()) >= 3000, SENT
    assert not SERVER_ERRORS, SERVER_ERRORS[:3]
    assert not BAD_ERROR_BODIES, BAD_ERROR_BODIES[:3]
    assert STATUSES[200] > 0 and sum(v for k, v in STATUSES.items() if 400 <= k < 500) > 0, STATUSES
