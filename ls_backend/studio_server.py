"""Install and run a real Label Studio, headless: for ``rgbt-al demo`` and the end-to-end tests.

* :func:`ensure_label_studio` installs ``label-studio==<version>`` into its own virtual environment
  (``~/.cache/rgbt-al/ls-venv-<version>``, made with the base interpreter, not this project's venv: Label
  Studio pins its own Django, DRF, label-studio-sdk... versions) once, and reuses it afterwards.
* :class:`LabelStudioServer` starts ``label-studio start`` on a loopback port with a data directory of its
  own, a known user and a known legacy API token, waits until it answers, and stops it (the whole process
  group).

Example::

    exe = ensure_label_studio()
    with LabelStudioServer(exe, data_dir=Path("/tmp/ls"), files_root=Path("/tmp/images")) as server:
        server.wait_ready()
        client = StudioClient(server.url, server.token)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import requests

__all__ = [
    "DEFAULT_ROOT",
    "DEFAULT_VERSION",
    "LabelStudioServer",
    "StudioServerError",
    "ensure_database_template",
    "ensure_label_studio",
    "free_port",
]

DEFAULT_VERSION = "1.23.2"
DEFAULT_ROOT = Path(os.environ.get("RGBT_AL_CACHE", Path.home() / ".cache" / "rgbt-al"))

#: Written into a venv after a complete install; a venv without it is rebuilt.
_MARKER = ".rgbt-al-installed"

#: Label Studio's SQLite file in its data dir (with DJANGO_DB=sqlite).
_DATABASE = "label_studio.sqlite3"


class StudioServerError(RuntimeError):
    """Label Studio could not be installed, started or reached; the message says why (with the log tail)."""


def _log(message: str) -> None:
    print(f"[label-studio] {message}", file=sys.stderr, flush=True)


def _base_python() -> str:
    """The interpreter to build Label Studio's venv with: the one this project's venv was made from."""
    for candidate in (getattr(sys, "_base_executable", None), shutil.which("python3"), sys.executable):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StudioServerError("no Python interpreter found to build Label Studio's virtualenv")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) on ``path``: one installer at a time across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process installing Label Studio ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], what: str) -> None:
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        raise StudioServerError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{tail}")
    _log(f"{what}: done in {time.monotonic() - started:.0f} s")


def ensure_label_studio(version: str = DEFAULT_VERSION, root: Path = DEFAULT_ROOT) -> Path:
    """The ``label-studio`` executable of Label Studio ``version``, installing it first when needed.

    The install lives in ``root/ls-venv-<version>``; a marker file written after a successful ``pip install``
    tells a complete install from an interrupted one (which is removed and redone). Concurrent callers (pytest
    workers, a demo started twice) serialise on a file lock. The first install takes a few minutes.
    """
    root = Path(root).expanduser()
    venv = root / f"ls-venv-{version}"
    executable = venv / "bin" / "label-studio"
    marker = venv / _MARKER
    if marker.is_file() and executable.is_file():
        return executable
    with _file_lock(root / f".ls-venv-{version}.lock"):
        if marker.is_file() and executable.is_file():  # another process finished while we waited
            return executable
        python = venv / "bin" / "python"
        if venv.exists() and not python.is_file():
            _log(f"removing a broken virtualenv at {venv}")
            shutil.rmtree(venv)
        if not venv.exists():
            _log(f"creating a virtualenv for Label Studio {version} at {venv}")
            _run([_base_python(), "-m", "venv", str(venv)], "python -m venv")
        _log(f"installing label-studio=={version} (a few minutes the first time)")
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
        _run([*pip, "install", "--quiet", f"label-studio=={version}"], f"pip install label-studio=={version}")
        if not executable.is_file():
            raise StudioServerError(f"pip installed label-studio=={version}, but {executable} is missing")
        marker.write_text(f"label-studio=={version}\n")
        _log(f"Label Studio {version} is installed: {executable}")
    return executable


def _server_base_env(data_dir: Path) -> dict[str, str]:
    """Environment for any ``label-studio`` command: this process's, minus this project's venv, plus SQLite in
    ``data_dir`` and no network calls to pypi.org."""
    env = dict(os.environ)
    # The server must not inherit this project's venv (it has its own Python packages).
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "DJANGO_DB": "sqlite",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            # No telemetry, no update checks: the machines may have no internet, and startup stays fast.
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def ensure_database_template(executable: Path) -> Path:
    """A migrated, empty Label Studio SQLite database for ``executable``'s install, made once.

    The first start on an empty data dir spends most of its time (a minute or more here) running Django
    migrations; a server given this file (:class:`LabelStudioServer` ``database_template``) starts from a copy
    and is ready in seconds. The database holds no user: the server creates its account on the first start.
    """
    venv = Path(executable).resolve().parent.parent
    template = venv / "db-template" / _DATABASE
    if template.is_file():
        return template
    with _file_lock(venv / ".db-template.lock"):
        if template.is_file():
            return template
        work = venv / "db-template.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _log("migrating an empty Label Studio database once (later servers start from a copy)")
        started = time.monotonic()
        result = subprocess.run(
            [str(executable), "version", "--data-dir", str(work)],
            env=_server_base_env(work),
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not (work / _DATABASE).is_file():
            tail = "\n".join(result.stdout.splitlines()[-30:])
            raise StudioServerError(
                f"migrating a Label Studio database failed (exit {result.returncode}):\n{tail}"
            )
        template.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / _DATABASE, template)
        shutil.rmtree(work, ignore_errors=True)
        _log(f"database template ready in {time.monotonic() - started:.0f} s: {template}")
    return template


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a race with other processes is possible
    but unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LabelStudioServer:
    """One headless Label Studio process (SQLite database in ``data_dir``).

    A fresh ``data_dir`` gets, on the first start, the user ``username`` / ``password`` with the legacy API
    token ``token`` (Label Studio creates them from ``LABEL_STUDIO_USERNAME`` / ``_PASSWORD`` /
    ``_USER_TOKEN``); later starts on the same directory reuse that user, so keep the same credentials.

    Args:
        executable: the ``label-studio`` program (see :func:`ensure_label_studio`).
        data_dir: database, uploads and the server log (``label-studio.log``).
        port: TCP port; a free one when None.
        host: address to listen on and to reach it at.
        files_root: folder local-files storages may serve (``LOCAL_FILES_DOCUMENT_ROOT``); None disables
            local-files serving.
        username, password, token: the account; the token must be 6 to 40 characters (Django's token
            table); a random one when None.
        env: extra environment variables for the server.
        database_template: a migrated empty database (:func:`ensure_database_template`) copied into a data
            dir that has none, so the first start skips the migrations.
    """

    def __init__(
        self,
        executable: Path,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        files_root: Path | None = None,
        username: str = "admin@example.com",
        password: str = "rgbt-al-admin",
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        database_template: Path | None = None,
    ) -> None:
        self.executable = Path(executable).absolute()
        self.data_dir = Path(data_dir).resolve()  # the server runs in it: relative paths would nest
        self.port = int(port) if port is not None else free_port(host)
        self.host = host
        self.files_root = Path(files_root).resolve() if files_root is not None else None
        self._username = username
        self._password = password
        self._token = token or secrets.token_hex(20)  # 40 hex characters: the legacy token's length
        if not 5 < len(self._token) <= 40 or not self._token.isprintable() or " " in self._token:
            # Label Studio ignores tokens of 5 characters or fewer; Django's token column holds 40.
            raise ValueError("the Label Studio token must be 6 to 40 printable characters without spaces")
        self.extra_env = dict(env or {})
        self.database_template = Path(database_template) if database_template is not None else None
        self.log_path = self.data_dir / "label-studio.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        """Base URL, no trailing slash, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        """The user's legacy API token (``Authorization: Token <token>``)."""
        return self._token

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        return self._password

    # ------------------------------------------------------------------ lifecycle
    def environment(self) -> dict[str, str]:
        """The server's environment: this process's, plus the settings a headless test/demo server needs."""
        env = _server_base_env(self.data_dir)
        env.update(
            {
                # The account created on the first start of a fresh data dir, with a known token. Legacy
                # tokens are off by default since 1.20; personal access tokens stay available as well.
                "LABEL_STUDIO_USERNAME": self._username,
                "LABEL_STUDIO_PASSWORD": self._password,
                "LABEL_STUDIO_USER_TOKEN": self._token,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                # Label Studio refuses outgoing requests (ML backend URLs, webhooks) to loopback and private
                # addresses by default, an SSRF guard ("URL resolves to a reserved network address"). The demo
                # and the tests run the backend on 127.0.0.1 and compose on a private Docker network, so the
                # guard must be off for them to connect the backend at all.
                "USE_DEFAULT_BANNED_SUBNETS": "false",
                # 1.23.2's default prediction import recounts every task of the project per request, so a
                # bulk page gets slower as the project grows (2.7 s -> 17.7 s per 500 over a 10k push); this
                # feature flag switches to its memory-efficient import (benchmarks/bench_push.py: 6x faster).
                "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short": "true",
            }
        )
        if self.files_root is not None:
            env["LOCAL_FILES_SERVING_ENABLED"] = "true"
            env["LOCAL_FILES_DOCUMENT_ROOT"] = str(self.files_root)
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        return [
            str(self.executable),
            "start",
            "--no-browser",
            # No --host: Label Studio then writes relative URLs (/data/upload/..., /data/local-files/...)
            # into tasks, which stay valid whatever address the server is reached at.
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            # Legacy tokens for the organisation created on the first start (the user and its token come from
            # the environment, not the command line, so they do not show in `ps`).
            "--enable-legacy-api-token",
        ]

    def start(self) -> LabelStudioServer:
        """Start the server process (returns at once; call :meth:`wait_ready`)."""
        if self.running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        database = self.data_dir / _DATABASE
        if self.database_template is not None and not database.exists():
            shutil.copyfile(self.database_template, database)
        if self.files_root is not None:
            self.files_root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self._log_handle = log
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            cwd=self.data_dir,
            start_new_session=True,  # its own process group: stop() ends the server and its children
        )
        _log(f"starting Label Studio on {self.url} (pid {self.process.pid}, log {self.log_path})")
        return self

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Poll ``/health`` until Label Studio answers; returns the seconds waited.

        Raises :class:`StudioServerError` with the log tail when the process exits or ``timeout`` passes.
        """
        if self.process is None:
            raise StudioServerError("Label Studio is not started")
        started = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise StudioServerError(
                    f"Label Studio exited with code {code} before it was ready; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    waited = time.monotonic() - started
                    _log(f"Label Studio is ready on {self.url} after {waited:.1f} s")
                    return waited
            if time.monotonic() - started > timeout:
                raise StudioServerError(
                    f"Label Studio did not answer on {self.url}/health within {timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        elif process is not None:
            # The leader exited; children (if any) may still run in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        handle, self._log_handle = self._log_handle, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"LabelStudioServer({self.url}, data_dir={str(self.data_dir)!r}, {state})"
