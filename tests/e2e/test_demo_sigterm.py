"""`rgbt-al demo` stopped with SIGTERM (what `docker stop` and systemd send) stops its RQ worker, the
backend and Label Studio: nothing it started is left running, orphaned, on the shared Redis."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import requests
from redis import Redis

from ls_backend.processes import ManagedProcess, child_env, rgbt_al_command
from ls_backend.studio_server import free_port
from tests.e2e.conftest import SHARED_REDIS_URL
from tests.proc_tree import descendants, kill_all, wait_gone


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def test_demo_stops_its_worker_and_servers_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    backend_port = free_port()
    args = rgbt_al_command(
        "demo",
        "--data-dir", str(data),
        "--port", str(free_port()),
        "--backend-port", str(backend_port),
        "--pairs", "8",
        "--initial", "4",
        "--redis-url", SHARED_REDIS_URL,
    )  # fmt: skip
    demo = ManagedProcess(args, env=child_env({}), log_path=tmp_path / "demo.log", name="demo")
    worker_log = data / "logs" / "worker.log"
    queue = None
    with demo:
        demo.wait_until(
            lambda: "Listening on" in worker_log.read_text()
            and requests.get(f"http://127.0.0.1:{backend_port}/health", timeout=1).ok,
            errors=(OSError, requests.RequestException),
            timeout=600,
            interval=0.5,
        )
        started = descendants(demo.pid)
        for pid in started:
            try:
                queue = queue or _environ(pid).get("RQ_QUEUE")
            except OSError:
                continue
        assert queue and queue.startswith("rgbt-al-demo-"), queue
        # The demo's own pid only, as `docker stop` does: its children are in process groups of their own.
        os.kill(demo.pid, signal.SIGTERM)
        assert demo.process is not None
        code = demo.process.wait(120)
        left = wait_gone(started, timeout=60)
        kill_all(left)
        assert left == set(), f"still running after SIGTERM: {sorted(left)}"
        log = demo.log_path.read_text(errors="replace")
        assert code == 0 and "[demo] stopping" in log, f"exit {code}; the demo's log ends:\n{log[-3000:]}"
    connection = Redis.from_url(SHARED_REDIS_URL)
    from rq import Worker as RQWorker

    assert [w.name for w in RQWorker.all(connection=connection) if queue in w.queue_names()] == []
    keys = list(connection.scan_iter(f"*{queue}*", count=1000))
    if keys:
        connection.delete(*keys)
