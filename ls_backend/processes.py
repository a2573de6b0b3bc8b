"""The backend's own processes (`rgbt-al serve`, `rgbt-al worker`) started as children: for the demo, the
end-to-end tests and the benchmarks. Each runs in its own process group with its output in a log file."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import requests


class ProcessError(RuntimeError):
    """A child process could not start or died; the message carries its log tail."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """A child process with a log file, stopped with its whole process group."""

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str], log_path: Path, name: str) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() reaches gunicorn's workers too
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ProcessError(f"{self.name} is not started")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.process is None else self.process.returncode
            raise ProcessError(f"{self.name} exited ({code}); log {self.log_path}:\n{_tail(self.log_path)}")

    def wait_until(
        self,
        ready: Callable[[], bool],
        *,
        errors: tuple[type[BaseException], ...],
        timeout: float,
        interval: float,
    ) -> None:
        """Poll ``ready()`` (an ``errors`` exception counts as not yet) until it is true; ProcessError, with
        the log tail, when the process dies or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if ready():
                    return
            except errors:
                pass
            time.sleep(interval)
        raise ProcessError(f"{self.name} not ready after {timeout:.0f} s:\n{_tail(self.log_path)}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole group (SIGKILL: the fault tests' "worker killed mid-job")."""
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def rgbt_al_command(*args: str) -> list[str]:
    """`rgbt-al ARGS` run with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "ls_backend.cli", *args]


class BackendServer(ManagedProcess):
    """`rgbt-al serve` on ``host:port``; configuration through ``env`` (see ls_backend/settings.py).

    The backend requires basic auth by default: unless ``env`` sets BASIC_AUTH_USER or ALLOW_UNAUTHENTICATED,
    a random user and password are added to it. :attr:`auth` holds them (None when open on purpose);
    :meth:`session` is a ``requests`` session that sends them.
    """

    def __init__(
        self, port: int, *, env: Mapping[str, str], log_path: Path, host: str = "127.0.0.1", threads: int = 8
    ) -> None:
        args = rgbt_al_command("serve", "--host", host, "--port", str(port), "--threads", str(threads))
        env = dict(env)
        self.auth: tuple[str, str] | None = None
        if env.get("BASIC_AUTH_USER"):
            self.auth = (env["BASIC_AUTH_USER"], env.get("BASIC_AUTH_PASS", ""))
        elif env.get("ALLOW_UNAUTHENTICATED", "").strip().lower() not in ("1", "true", "yes", "on"):
            self.auth = ("rgbt-al", secrets.token_urlsafe(16))
            env.update(BASIC_AUTH_USER=self.auth[0], BASIC_AUTH_PASS=self.auth[1])
        super().__init__(args, env=env, log_path=log_path, name=f"backend on {host}:{port}")
        self.url = f"http://{host}:{port}"

    def session(self) -> requests.Session:
        session = requests.Session()
        session.auth = self.auth
        return session

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_until(
            lambda: requests.get(self.url + "/health", timeout=1).ok,
            errors=(requests.RequestException,),
            timeout=timeout,
            interval=0.3,
        )


class Worker(ManagedProcess):
    """`rgbt-al worker`: an RQ worker taking training and scoring jobs (needs REDIS_URL in ``env``)."""

    def __init__(self, *, env: Mapping[str, str], log_path: Path, burst: bool = False) -> None:
        args = rgbt_al_command("worker", *(["--burst"] if burst else []))
        super().__init__(args, env=env, log_path=log_path, name="worker")


class RedisServer(ManagedProcess):
    """A private ``redis-server`` on ``127.0.0.1:port`` without persistence (a restart starts it empty): the
    fault tests stop and restart it at will, never the shared one."""

    def __init__(self, port: int, *, log_path: Path, executable: str = "redis-server") -> None:
        args = [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(log_path.parent),
        ]  # fmt: skip
        super().__init__(args, env=os.environ, log_path=log_path, name=f"redis on port {port}")
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def wait_ready(self, timeout: float = 30.0) -> None:
        import redis

        self.wait_until(
            lambda: bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping()),
            errors=(redis.RedisError,),
            timeout=timeout,
            interval=0.05,
        )

    def restart(self) -> None:
        """Start it again on the same port after :meth:`kill` or :meth:`stop` (empty: nothing persisted)."""
        if self.process is not None:
            self.process.wait(15)
        self.start()
        self.wait_ready()


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus ``settings``, with threads capped so children share the CPU."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    # OpenMP threads spin while waiting by default: beside Label Studio and other children on a small CPU
    # that made a forward pass 6x slower (benchmarks/README figures); passive waiting yields the core.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update({key: str(value) for key, value in settings.items()})
    return env
