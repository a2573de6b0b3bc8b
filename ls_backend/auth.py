"""Who may call the backend: HTTP basic auth on every route but ``/health``, required by default.

Label Studio's ML backend connection has basic-auth fields (``POST /api/ml`` with ``auth_method=BASIC_AUTH``,
``basic_auth_user``, ``basic_auth_pass``), so the backend asks for them unless the admin says otherwise:

* ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` set: those.
* neither set: ``rgbt-al serve`` generates a user and password on its first start, stores them in
  ``<MODEL_DIR>/.basic-auth.json`` (mode 0600, created exclusively) and prints them once, as Label Studio
  prints its first admin's; later starts (and the workers, which share MODEL_DIR) read that file.
* ``ALLOW_UNAUTHENTICATED=true``: no authentication, on purpose.

A server started some other way with no credentials anywhere refuses every protected route (fail closed).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ls_backend.settings import Settings, SettingsError

#: The generated credentials, under MODEL_DIR.
CREDENTIALS_FILE = ".basic-auth.json"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def matches(self, user: str | None, password: str | None) -> bool:
        """Constant-time comparison of UTF-8 bytes (``compare_digest`` refuses non-ASCII ``str``)."""
        user_ok = hmac.compare_digest((user or "").encode("utf-8", "surrogatepass"), self.user.encode())
        pass_ok = hmac.compare_digest(
            (password or "").encode("utf-8", "surrogatepass"), self.password.encode()
        )
        return user_ok and pass_ok


def credentials_path(settings: Settings) -> Path:
    return settings.model_dir / CREDENTIALS_FILE


def configured_credentials(settings: Settings) -> Credentials | None:
    """The credentials requests must carry: the settings', else the generated file's; None when neither."""
    if settings.basic_auth_user:
        return Credentials(settings.basic_auth_user, settings.basic_auth_pass)
    path = credentials_path(settings)
    try:
        data = json.loads(path.read_text())
        credentials = Credentials(str(data["user"]), str(data["password"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SettingsError(f"{path} is unreadable ({error}): delete it for new credentials") from error
    if not credentials.user or not credentials.password:
        raise SettingsError(f"{path} has an empty user or password: delete it for new credentials")
    return credentials


def ensure_credentials(settings: Settings) -> tuple[Credentials | None, bool]:
    """(credentials, whether they were generated now). None when ALLOW_UNAUTHENTICATED is on."""
    if settings.allow_unauthenticated:
        return None, False
    existing = configured_credentials(settings)
    if existing is not None:
        return existing, False
    credentials = Credentials("rgbt-al", secrets.token_urlsafe(24))
    path = credentials_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two first starts at once, one writes; 0600 from the start, never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return configured_credentials(settings), False
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"user": credentials.user, "password": credentials.password}, handle)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return credentials, True
