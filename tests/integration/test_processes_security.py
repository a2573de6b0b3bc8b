"""`rgbt-al serve` and `rgbt-al worker` as real processes: generated credentials, long URLs through gunicorn,
and SIGTERM (what `docker stop` and systemd send) stopping them with everything they started."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import requests
from redis import Redis

from ls_backend.processes import ManagedProcess, child_env, rgbt_al_command
from ls_backend.studio_server import free_port
from tests.integration.conftest import REDIS_URL
from tests.proc_tree import descendants, kill_all, wait_gone
from tests.unit.app_support import DETECTION_CONFIG


def _serve(port: int, model_dir: Path, log: Path) -> ManagedProcess:
    """`rgbt-al serve` with no credentials in its environment: the default an admin gets."""
    env = child_env({"MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING", "DEVICE": "cpu"})
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALLOW_UNAUTHENTICATED", "REDIS_URL"):
        env.pop(name, None)
    args = rgbt_al_command("serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "2")
    return ManagedProcess(args, env=env, log_path=log, name="serve")


def _wait_health(server: ManagedProcess, url: str) -> None:
    server.wait_until(
        lambda: requests.get(url + "/health", timeout=1).ok,
        errors=(requests.RequestException,),
        timeout=90,
        interval=0.3,
    )


def _terminate(process: ManagedProcess) -> set[int]:
    """SIGTERM to the command's own pid only (not its group), then what it had started that still runs."""
    started = descendants(process.pid)
    assert started, "the command started no process"
    os.kill(process.pid, signal.SIGTERM)
    assert process.process is not None
    process.process.wait(60)
    left = wait_gone(started, timeout=30)
    kill_all(left)
    return left


def test_serve_generates_credentials_once_answers_long_urls_in_json_and_stops_on_sigterm(tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model_dir = tmp_path / "models"
    server = _serve(port, model_dir, tmp_path / "serve.log")
    with server:
        _wait_health(server, url)
        stored = json.loads((model_dir / ".basic-auth.json").read_text())
        assert (model_dir / ".basic-auth.json").stat().st_mode & 0o777 == 0o600
        log = server.log_path.read_text()
        assert "Generated basic-auth credentials" in log and stored["password"] in log
        setup = {"project": "7.1700000000", "schema": DETECTION_CONFIG}
        assert requests.post(url + "/setup", json=setup, timeout=30).status_code == 401
        auth = (stored["user"], stored["password"])
        assert requests.post(url + "/setup", json=setup, auth=auth, timeout=30).status_code == 200
        # A 5 KB URL passes gunicorn (its request-line limit raised) and gets the app's JSON 414.
        answer = requests.get(url + "/versions?project=7&pad=" + "a" * 5000, auth=auth, timeout=30)
        assert answer.status_code == 414 and answer.headers["Content-Type"].startswith("application/json")
        assert "URL longer than" in answer.json()["error"]
        assert _terminate(server) == set()
        assert server.process is not None and server.process.returncode == 0
    # A second start reads the stored credentials and prints nothing of them.
    again = _serve(port, model_dir, tmp_path / "serve2.log")
    with again:
        _wait_health(again, url)
        assert stored["password"] not in again.log_path.read_text()
        assert json.loads((model_dir / ".basic-auth.json").read_text()) == stored
        assert requests.post(url + "/setup", json=setup, auth=auth, timeout=30).status_code == 200


def test_worker_stops_on_sigterm_and_leaves_no_process_or_registration(tmp_path: Path):
    queue = f"rgbt-test-{uuid.uuid4().hex[:10]}"
    env = child_env({"REDIS_URL": REDIS_URL, "RQ_QUEUE": queue, "MODEL_DIR": str(tmp_path / "models")})
    log = tmp_path / "worker.log"
    worker = ManagedProcess(rgbt_al_command("worker"), env=env, log_path=log, name="worker")
    connection = Redis.from_url(REDIS_URL)
    try:
        with worker:
            worker.wait_until(
                lambda: "Listening on" in log.read_text(), errors=(OSError,), timeout=90, interval=0.2
            )
            os.kill(worker.pid, signal.SIGTERM)
            assert worker.process is not None
            assert worker.process.wait(60) == 0
            assert wait_gone({worker.pid}, 5) == set()
        from rq import Worker as RQWorker

        assert [w for w in RQWorker.all(connection=connection) if queue in w.queue_names()] == []
    finally:
        keys = list(connection.scan_iter(f"*{queue}*", count=1000))
        if keys:
            connection.delete(*keys)
