"""One slow request cannot stall the others (issue 15, item 5).

A real HTTP server on loopback (an allowed image host) holds every ``/slow/`` image request until the test
releases it, or gives up after a safety wait and answers 503; ``/fast/`` images are served at once. The
facts asserted are orderings, never durations:

* a 1-task ``/predict`` of another project against a fast source completes while a 16-task request's images
  are all still held by the slow host (the old shared 8-thread fetch pool served it only after the slow
  host let go);
* one request never has more than ``PREDICT_FETCH_THREADS`` images in flight;
* a request whose images do not come ends at ``PREDICT_DEADLINE_SECONDS`` with a JSON error naming the
  deadline, while the slow host still holds its images, or still trickles their bytes.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.unit.app_support import (
    AppUnderTest,
    assert_json_error,
    loopback_server,
    make_app,
    make_settings,
    png_bytes,
    predict_body,
    torch_threads,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Seconds a held image request waits for the test before the server gives up on it (a safety net only:
#: a passing test releases the server long before).
SAFETY_WAIT = 20.0

FAST_PROJECT = "8.1700000000"


@dataclass
class SlowHost:
    port: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    gave_up: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    served_slow: int = 0
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_in_flight(self, count: int) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.in_flight >= count, timeout=SAFETY_WAIT)


@contextmanager
def slow_host() -> Iterator[SlowHost]:
    state = SlowHost()
    rgb, thermal = png_bytes(80, 64, "RGB"), png_bytes(80, 64, "L", seed=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = thermal if "thermal" in self.path else rgb
            if self.path.startswith("/trickle/"):
                # Headers at once, then one byte at a time, each well within any socket timeout.
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for byte in body[: int(SAFETY_WAIT / 0.05)]:  # then the body is cut short
                    if state.release.wait(0.05):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                state.gave_up.set()
                return
            if self.path.startswith("/slow/"):
                with state.arrived:
                    state.in_flight += 1
                    state.max_in_flight = max(state.max_in_flight, state.in_flight)
                    state.arrived.notify_all()
                released = state.release.wait(SAFETY_WAIT)
                with state.arrived:
                    state.in_flight -= 1
                    state.served_slow += 1
                if not released:
                    state.gave_up.set()
                    self.send_error(503)
                    return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as port:
        state.port = port
        try:
            yield state
        finally:
            state.release.set()  # held requests finish before the server shuts down


def _app(tmp_path: Path, host: SlowHost, **overrides: Any) -> AppUnderTest:
    return make_app(make_settings(tmp_path, allowed_image_hosts=(f"127.0.0.1:{host.port}",), **overrides))


def _tasks(host: SlowHost, kind: str, count: int) -> list[dict[str, Any]]:
    urls = [(host.url(f"/{kind}/{i}_rgb.png"), host.url(f"/{kind}/{i}_thermal.png")) for i in range(count)]
    return [{"id": 100 + i, "data": {"rgb": r, "thermal": t}} for i, (r, t) in enumerate(urls)]


def _in_thread(app: AppUnderTest, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    answer: dict[str, Any] = {}
    client = app.app.test_client()

    def post() -> None:
        response = client.post("/predict", json=body)
        answer["status"], answer["json"] = response.status_code, response.get_json()

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, answer


def test_a_slow_request_does_not_delay_another_projects_predict(tmp_path: Path) -> None:
    with slow_host() as host, torch_threads(1):
        app = _app(tmp_path, host, predict_fetch_threads=4)
        slow, slow_answer = _in_thread(app, predict_body(_tasks(host, "slow", 16)))
        assert host.wait_in_flight(4), "the slow request's fetches never reached the slow host"

        fast = app.client.post("/predict", json=predict_body(_tasks(host, "fast", 1), project=FAST_PROJECT))
        # The fast request completed while every slow image was still held: nothing was served or given up.
        held = not host.release.is_set() and not host.gave_up.is_set() and host.served_slow == 0
        assert fast.status_code == 200, fast.get_json()
        assert fast.get_json()["results"][0]["result"] is not None
        assert held and slow.is_alive(), "the fast /predict waited for the slow host"

        host.release.set()
        slow.join(60)
        assert slow_answer["status"] == 200, slow_answer
        assert len(slow_answer["json"]["results"]) == 16
        assert "errors" not in slow_answer["json"], slow_answer["json"].get("errors")


def test_one_request_has_at_most_its_fetch_threads_in_flight(tmp_path: Path) -> None:
    with slow_host() as host, torch_threads(1):
        app = _app(tmp_path, host, predict_fetch_threads=3)
        slow, answer = _in_thread(app, predict_body(_tasks(host, "slow", 10)))
        assert host.wait_in_flight(3)
        # A fourth fetch would have to arrive while the three are held; a fast request of another project
        # passing through shows the server kept answering meanwhile.
        fast = app.client.post("/predict", json=predict_body(_tasks(host, "fast", 1), project=FAST_PROJECT))
        assert fast.status_code == 200
        assert host.max_in_flight == 3 and host.served_slow == 0
        host.release.set()
        slow.join(60)
        assert answer["status"] == 200 and host.max_in_flight == 3


def test_a_request_ends_at_its_deadline_while_the_host_still_holds_its_images(tmp_path: Path) -> None:
    with slow_host() as host, torch_threads(1):
        app = _app(tmp_path, host, predict_fetch_threads=2, predict_deadline_seconds=1.0)
        response = app.client.post("/predict", json=predict_body(_tasks(host, "slow", 5)))
        held = not host.gave_up.is_set() and host.served_slow == 0
        message = assert_json_error(response)
        assert "deadline" in message and "PREDICT_DEADLINE_SECONDS" in message
        assert held, "the request waited for the slow host instead of its deadline"
        # Tasks that could not start before the deadline never reached the host.
        assert host.max_in_flight <= 2


def test_a_trickling_host_is_cut_at_the_deadline(tmp_path: Path) -> None:
    """Bytes that keep coming, each within the socket timeout, do not outlast the request's deadline."""
    with slow_host() as host, torch_threads(1):
        app = _app(tmp_path, host, predict_deadline_seconds=1.0)
        response = app.client.post("/predict", json=predict_body(_tasks(host, "trickle", 1)))
        finished_trickling = host.gave_up.is_set()
        assert "deadline" in assert_json_error(response)
        assert not finished_trickling, "the request read the whole trickled body instead of its deadline"
