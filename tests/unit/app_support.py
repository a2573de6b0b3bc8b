"""Helpers of the HTTP app tests (test_app*.py): settings, a real app, real images, real HTTP servers.

Nothing here is a mock: the app is ``create_app`` with an :class:`RGBTBackend` on the embedded
:class:`ThreadRunner`, images are PNG files on disk or served by an ``http.server`` thread, and models are
tiny :class:`ThreeBranchNet` checkpoints published through the real registry.
"""

from __future__ import annotations

import http.server
import io
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from ls_backend.app import create_app
from ls_backend.backend import RGBTBackend
from ls_backend.queues import ThreadRunner
from ls_backend.registry import VersionInfo
from ls_backend.settings import Settings
from model.config import NetConfig
from model.network import ThreeBranchNet

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("person", "car", "bicycle")

_INLINE_DETECTION = (
    '<View><Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
    '<RectangleLabels name="label" toName="rgb"><Label value="person"/><Label value="car"/>'
    '<Label value="bicycle"/></RectangleLabels></View>'
)
_INLINE_SEGMENTATION = _INLINE_DETECTION.replace("RectangleLabels", "BrushLabels")


def _config(name: str, fallback: str) -> str:
    path = REPO / "label_config" / name
    return path.read_text() if path.exists() else fallback


DETECTION_CONFIG = _config("synthetic_detection.xml", _INLINE_DETECTION)
SEGMENTATION_CONFIG = _config("synthetic_segmentation.xml", _INLINE_SEGMENTATION)

#: Label Studio 1.23 identifies projects as "<id>.<created timestamp>" in /setup and /predict.
PROJECT = "7.1700000000"
PROJECT_ID = "7"

#: The model size of every test: tiny, so a CPU forward pass takes milliseconds.
IMAGE_SIZE = (64, 80)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for one test: its own model dir, image root and cache; a tiny CPU model; no retries. Open
    on purpose (ALLOW_UNAUTHENTICATED) unless the test sets credentials: the auth tests say what they need."""
    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "model_dir": tmp_path / "models",
        "local_files_root": images,
        "image_cache_dir": tmp_path / "cache",
        "model_width": 0.0625,
        "model_image_size": IMAGE_SIZE,
        "device": "cpu",
        "job_retries": 0,
        "job_retry_delay": 0.0,
        "train_every_n_annotations": 3,
        "prediction_score_threshold": 0.0,
        "log_level": "WARNING",
    }
    if "basic_auth_user" not in overrides:
        values["allow_unauthenticated"] = True
    values.update(overrides)
    return Settings.from_env({}, **values)


@dataclass
class AppUnderTest:
    settings: Settings
    backend: RGBTBackend
    app: Flask
    client: FlaskClient

    @property
    def runner(self) -> ThreadRunner:
        runner = self.backend.runner
        assert isinstance(runner, ThreadRunner)
        return runner

    @property
    def images(self) -> Path:
        assert self.settings.local_files_root is not None
        return self.settings.local_files_root


def make_app(settings: Settings) -> AppUnderTest:
    """The real WSGI app with the embedded job runner (no REDIS_URL)."""
    backend = RGBTBackend(settings, runner=ThreadRunner(settings))
    app = create_app(settings, backend)
    return AppUnderTest(settings, backend, app, app.test_client())


def tiny_model(task: str = "detection", classes: tuple[str, ...] = CLASSES) -> ThreeBranchNet:
    return ThreeBranchNet(NetConfig(task=task, class_names=classes, width=0.0625, image_size=IMAGE_SIZE))  # type: ignore[arg-type]


def publish_tiny(backend: RGBTBackend, project: str = PROJECT_ID, task: str = "detection") -> VersionInfo:
    """A trained-looking version: a tiny network published through the registry and made current."""
    return backend.registry.publish(project, tiny_model(task), num_train_tasks=2)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch with ``count`` intra-op threads, then restore. On a few shared cores, torch's default
    (one thread per core) spins against other processes: a tiny forward pass takes seconds instead of ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ images
def png_bytes(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    """A random PNG: mode "RGB", "L" (8-bit grayscale) or "I;16" (16-bit grayscale)."""
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif mode == "L":
        array = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif mode == "I;16":
        array = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    else:
        raise ValueError(mode)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR announcing ``width x height`` pixels: a few dozen bytes of header
    that would make a naive decoder allocate gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def write_pair(
    root: Path,
    name: str,
    size: tuple[int, int] = (64, 80),
    *,
    thermal_size: tuple[int, int] | None = None,
    rgb_mode: str = "RGB",
    thermal_mode: str = "L",
    seed: int = 0,
) -> dict[str, str]:
    """Write ``<name>_rgb.png`` and ``<name>_thermal.png`` (sizes are height x width) under ``root``; return
    task data with the paths relative to ``root``."""
    height, width = size
    t_height, t_width = thermal_size or size
    (root / f"{name}_rgb.png").write_bytes(png_bytes(width, height, rgb_mode, seed))
    (root / f"{name}_thermal.png").write_bytes(png_bytes(t_width, t_height, thermal_mode, seed + 1))
    return {"rgb": f"{name}_rgb.png", "thermal": f"{name}_thermal.png"}


# ------------------------------------------------------------------------------------------ HTTP
def assert_json_error(response: TestResponse, status: int | None = None) -> str:
    """A 4xx answer whose body is a JSON object with a non-empty ``error`` message; returns the message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:500])
    if status is not None:
        assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.is_json, response.get_data(as_text=True)[:200]
    body = response.get_json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), body
    return body["error"]


def predict_body(tasks: list[dict[str, Any]], config: str = DETECTION_CONFIG, project: str = PROJECT) -> dict:
    """A /predict body as Label Studio 1.23 sends it."""
    return {"tasks": tasks, "project": project, "label_config": config, "params": {"context": None}}


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class ImageServer:
    """A real HTTP server on 127.0.0.1 serving fixed replies by path; ``hits`` counts requests per path."""

    routes: dict[str, Reply] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def loopback_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """A real threaded HTTP server on 127.0.0.1 (a free port) for the block; yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def image_server() -> Iterator[ImageServer]:
    state = ImageServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            state.hits[path] = state.hits.get(path, 0) + 1
            status, headers, body = state.routes.get(path, (404, {}, b"not found"))
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as port:
        state.port = port
        yield state


# ------------------------------------------------------------------------------------------ jobs
_gate = threading.Event()
_gate_entered = threading.Event()


def hold_runner() -> str:
    """A job that occupies the embedded runner's thread until :func:`release_runner`, so the training jobs
    enqueued meanwhile stay queued (coalescing can then be observed without racing the worker)."""
    _gate_entered.set()
    if not _gate.wait(60):
        raise TimeoutError("the test never released the runner")
    return "released"


@contextmanager
def runner_held(runner: ThreadRunner) -> Iterator[Callable[[], None]]:
    _gate.clear()
    _gate_entered.clear()
    runner.enqueue("tests.unit.app_support.hold_runner", description="test: hold the runner")
    assert _gate_entered.wait(10), "the runner thread did not start the holding job"
    try:
        yield _gate.set
    finally:
        _gate.set()
