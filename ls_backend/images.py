"""The backend's one image fetcher: task image URLs -> bytes -> decoded RGB / thermal arrays.

Where an image may come from (docs/architecture.md, section 4: no SSRF, no path traversal):

* Label Studio URLs: relative ones (``/data/upload/...``, ``/data/local-files/?d=...``,
  ``/tasks/<id>/presign/?fileuri=...``) and absolute ones on Label Studio's own host. The
  :class:`~ls_backend.studio.StudioClient` resolves them and supplies the auth header (legacy token or
  personal access token); the header is sent to Label Studio's host only.
* Cloud URIs (``s3://``, ``gs://``, ``azure-blob://``): through Label Studio's presign endpoint for the task;
  Label Studio answers with the bytes or with a redirect to a presigned URL on the bucket's host, which is
  followed (without the auth header) because Label Studio issued it.
* Other ``http(s)`` URLs: only to hosts in ``allowed_hosts`` (``host``, ``host:port`` or ``*.domain``).
* Local paths (``file://`` URLs, absolute paths, paths relative to ``local_root``): only when ``local_root``
  is set and the real path (symlinks resolved) lies under it.

Whatever the host, connections to link-local addresses (169.254.0.0/16, fe80::/10, which hold the cloud
metadata services) and to known metadata addresses are refused, checked on the resolved addresses before
connecting and on the connected peer (so DNS rebinding cannot slip through). Redirects are followed by hand,
at most :data:`MAX_REDIRECTS`, each hop checked like the first; environment proxies are not used, so the
connected peer is the real destination.

Bodies are streamed and cut at ``max_bytes`` (a larger Content-Length is refused before reading); decoded
images are bounded by ``max_pixels`` through :func:`model.data.io.decode_image`'s header check (what
:func:`~model.data.io.load_rgb` / :func:`~model.data.io.load_thermal` decode with). Fetched bytes
are kept in a small on-disk cache (:class:`DiskCache`) so pool scoring, ``/predict`` and training rounds do
not download the same image again.

Every failure is a :class:`FetchError` whose ``status`` is the HTTP status the backend answers with.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import cv2
import numpy as np
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ls_backend.label_config import ProjectSchema
from model.data.io import ImageDecodeError, ImageTooLargeError, load_rgb, load_thermal

__all__ = [
    "BadImageURL",
    "DiskCache",
    "FetchError",
    "ForbiddenImageURL",
    "ImageFetcher",
    "ImageNotFound",
    "ImageTooLarge",
    "NotAnImage",
    "PairSizeMismatch",
    "StudioLike",
    "UpstreamError",
    "host_allowed",
    "is_blocked_address",
]

log = logging.getLogger(__name__)

#: Redirect hops followed per fetch.
MAX_REDIRECTS = 3

#: URI schemes of Label Studio cloud storages, fetched through Label Studio's presign endpoint.
CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob"})

# Paths Label Studio serves (relative task URLs): uploads, local-files storage, storage presign/resolve.
_STUDIO_PATH = re.compile(
    r"^/(data/upload/|data/local-files/?(\?|$)|(tasks|projects)/\d+/(presign|resolve)/)"
)

# Metadata services outside the link-local ranges: AWS over IPv6 (fd00:ec2::254), Alibaba Cloud.
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_CHUNK = 64 * 1024


# ------------------------------------------------------------------------------------------ errors
class FetchError(ValueError):
    """An image could not be fetched or decoded. ``status``: the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class BadImageURL(FetchError):
    """Malformed URL, unsupported scheme, missing task key."""

    status = 400


class ForbiddenImageURL(FetchError):
    """Host not allowed, blocked address, path outside the local root, redirect refused."""

    status = 403


class ImageNotFound(FetchError):
    status = 404


class ImageTooLarge(FetchError):
    """More bytes than ``max_bytes`` or more pixels than ``max_pixels``."""

    status = 413


class NotAnImage(FetchError):
    status = 415


class PairSizeMismatch(FetchError):
    """RGB and thermal sizes differ and the fetcher rejects such pairs."""

    status = 422


class UpstreamError(FetchError):
    """Label Studio or the image host failed (connection error, timeout, 5xx, unexpected answer)."""

    status = 502


def _display(url: str) -> str:
    """The URL for messages and logs: query strings dropped (presigned URLs carry credentials), except
    Label Studio's own ``d=`` / ``fileuri=`` parameters, which name the file."""
    if len(url) > 300:
        url = url[:300] + "..."
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1": not a URL, shown without what follows a "?"
        return url.split("?", 1)[0] + ("?..." if "?" in url else "")
    if not parts.query:
        return url
    keep = {k: v for k, v in parse_qs(parts.query).items() if k in ("d", "fileuri")}
    query = "&".join(f"{k}={v[0]}" for k, v in keep.items()) if keep else "..."
    return parts._replace(query=query, fragment="").geturl()


# ------------------------------------------------------------------------------------------ network guard
def is_blocked_address(address: str) -> bool:
    """True for addresses no image fetch may connect to: link-local (IPv4 169.254.0.0/16, IPv6 fe80::/10,
    cloud metadata services live there) and known metadata addresses, also when embedded in IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an IP address: refuse rather than guess
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_link_local or ip in _METADATA_ADDRESSES


class _BlockedAddress(Exception):
    """Raised from inside urllib3's connect; not an OSError so no retry or wrapping layer swallows it."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to the blocked address {address}")
        self.host, self.address = host, address


class _GuardMixin:
    """Refuse blocked destinations before connecting, and check the connected peer afterwards."""

    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        host = self._dns_host
        try:
            infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            infos = []  # let urllib3 report the resolution failure
        for info in infos:
            if is_blocked_address(str(info[4][0])):
                raise _BlockedAddress(host, str(info[4][0]))
        sock = super()._new_conn()  # type: ignore[misc]
        peer = str(sock.getpeername()[0])
        if is_blocked_address(peer):  # DNS answered differently the second time
            sock.close()
            raise _BlockedAddress(host, peer)
        return sock


class _GuardedHTTPConnection(_GuardMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


_sessions = threading.local()


def _session() -> requests.Session:
    """A per-thread session (connection reuse) whose connections go through the address guard."""
    session = getattr(_sessions, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # no env proxies (the guard must see the real peer) and no .netrc auth
        adapter = _GuardedAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _sessions.session = session
    return session


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with default ports filled in; None when the URL has no host (or is invalid)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def host_allowed(url: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether the URL's host matches an entry: ``host`` (any port), ``host:port``, or ``*.domain`` (any
    subdomain of ``domain``, not ``domain`` itself). Case-insensitive."""
    origin = _origin(url)
    if origin is None:
        return False
    _, host, port = origin
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if not entry:
            continue
        pattern, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and int(entry_port) != port:
            continue
        pattern = pattern.strip("[]")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):  # ".example.com": a subdomain, never the bare domain
                return True
        elif host == pattern:
            return True
    return False


def _has_port(entry: str) -> bool:
    # "host:8080", "[::1]:8080" have a port; "::1" and "[::1]" do not.
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1 and entry.rsplit(":", 1)[1].isdigit()


# ------------------------------------------------------------------------------------------ cache
class _KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class DiskCache:
    """Bytes on disk keyed by sha256 of a string (the image URL), bounded in total size, LRU.

    * Writes go to a temporary file in the cache folder and are renamed into place (``os.replace`` is atomic),
      so readers in any thread or process see a whole file or none.
    * A hit refreshes the file's mtime; eviction removes the least recently used files (oldest mtime) until
      the total is under 90% of ``max_bytes``. The total is tracked per process, recounted from disk every
      :attr:`RECOUNT_SECONDS` and before evicting, so several processes sharing the folder keep it bounded.
    * Files that vanish (evicted by another process) read as misses.

    Use :meth:`shared` to get one instance per folder within a process.
    """

    #: Seconds between recounts of the folder's total size (other processes' writes).
    RECOUNT_SECONDS: ClassVar[float] = 30.0

    _instances: ClassVar[dict[tuple[Path, int], DiskCache]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._size: int | None = None  # counted lazily: constructing a cache stays cheap
        self._counted_at = 0.0
        self.locks = _KeyedLocks()

    @classmethod
    def shared(cls, root: Path, max_bytes: int) -> DiskCache:
        key = (Path(root).resolve(), int(max_bytes))
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls(key[0], key[1])
            return cls._instances[key]

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: mark as recently used
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"-{key[:8]}")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        with self._lock:
            # Other processes write to the folder too: recount from disk now and then, count our own writes
            # in between.
            if self._size is None or time.monotonic() - self._counted_at > self.RECOUNT_SECONDS:
                self._size, self._counted_at = self._count(), time.monotonic()
            else:
                self._size += len(data)
            over = self._size > self.max_bytes
        if over:
            self.evict()

    def discard(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self.path(key).unlink()

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries = []
        stale = time.time() - 3600
        for folder in self.root.glob("??"):
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    with contextlib.suppress(OSError):
                        stat = entry.stat()
                        if entry.name.startswith(".tmp-"):
                            if stat.st_mtime < stale:  # left by a killed writer
                                os.unlink(entry.path)
                            continue
                        entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        return entries

    def _count(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self) -> None:
        """Remove least recently used files until the total is under 90% of ``max_bytes``."""
        with self._lock:
            entries = sorted(self._entries(), key=lambda e: e[0])
            total = sum(size for _, size, _ in entries)
            target = int(self.max_bytes * 0.9)
            for _, size, path in entries:
                if total <= target:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                total -= size
            self._size, self._counted_at = total, time.monotonic()


def _after_fork_in_child() -> None:
    """A forked child (an RQ work horse) starts with fresh sessions and caches: it must not reuse its parent's
    pooled sockets, nor wait on locks that other threads of the parent held at the fork."""
    global _sessions
    _sessions = threading.local()
    DiskCache._instances = {}
    DiskCache._instances_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------------------------------ fetcher
class StudioLike(Protocol):
    """What the fetcher needs of :class:`ls_backend.studio.StudioClient`."""

    def resolve_url(self, url: str) -> str: ...

    def auth_headers(self) -> dict[str, str]: ...


class ImageFetcher:
    """Fetch and decode task images safely. Cheap to construct: caches and sessions are shared.

    Args:
        studio: the project's Label Studio client; None when unknown (then only allowed hosts and local
            files can be fetched).
        allowed_hosts: hosts that plain http(s) URLs may point to (``host``, ``host:port``, ``*.domain``).
        local_root: folder local paths must resolve into; None refuses all local paths.
        max_bytes: largest image file fetched.
        max_pixels: largest image decoded (width x height).
        cache_dir: on-disk cache folder; None disables caching.
        cache_max_bytes: size bound of the cache.
        timeout: seconds to connect and between received bytes.
        reject_mismatched: raise :class:`PairSizeMismatch` for pairs of different sizes instead of resizing
            the thermal image to the RGB size.
    """

    def __init__(
        self,
        studio: StudioLike | None,
        *,
        allowed_hosts: Sequence[str] = (),
        local_root: Path | None = None,
        max_bytes: int = 50 * 1024 * 1024,
        max_pixels: int = 40_000_000,
        cache_dir: Path | None = None,
        cache_max_bytes: int = 2 * 1024**3,
        timeout: float = 30.0,
        reject_mismatched: bool = False,
    ) -> None:
        self.studio = studio
        self.allowed_hosts = tuple(allowed_hosts)
        self.local_root = Path(local_root).resolve() if local_root is not None else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.timeout = float(timeout)
        self.reject_mismatched = reject_mismatched
        self.cache = DiskCache.shared(cache_dir, cache_max_bytes) if cache_dir is not None else None
        self._studio_base: str | None = None

    # ---------------------------------------------------------------- bytes
    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        """The raw bytes behind a task image URL (from the cache when there). ``task_id`` is needed for
        cloud URIs (Label Studio presigns per task)."""
        kind, target = self._route(url)
        if kind == "local":
            return self._read_local(target)
        if kind == "cloud":
            return self._cached(target, lambda: self._fetch_cloud(target, task_id))
        return self._cached(target, lambda: self._get(target, display=url, studio=kind == "studio"))

    def forget(self, url: str) -> None:
        """Drop a URL's cached bytes (e.g. they did not decode, so they must not be served again)."""
        if self.cache is not None:
            with contextlib.suppress(FetchError):
                kind, target = self._route(url)
                if kind != "local":
                    self.cache.discard(DiskCache.key(target))

    def _route(self, url: str) -> tuple[str, str]:
        """("local" | "cloud" | "studio" | "remote", the path or absolute URL to fetch, which also keys the
        cache: cloud URIs by the URI, since the presigned URL changes with every request)."""
        if not isinstance(url, str) or not url.strip():
            raise BadImageURL(f"image URL must be a non-empty string, got {url!r}", url=str(url))
        url = url.strip()
        if any(ord(c) < 32 for c in url):
            raise BadImageURL(f"image URL {_display(url)!r} contains control characters", url=url)
        try:
            parts = urlsplit(url)
        except ValueError as error:  # e.g. an unclosed IPv6 bracket
            raise BadImageURL(f"image URL {_display(url)!r} is not a valid URL: {error}", url=url) from error
        scheme = parts.scheme.lower()
        if not scheme and _STUDIO_PATH.match(url):
            # The path, and the file Label Studio is asked for (local-files "d=", presign "fileuri="):
            # traversal is refused here rather than left to Label Studio.
            named = [unquote(parts.path)] + [
                value
                for key, values in parse_qs(parts.query).items()
                if key in ("d", "fileuri")
                for value in values
            ]
            if any(".." in text.replace("\\", "/").split("/") for text in named):
                raise BadImageURL(
                    f"image URL {_display(url)!r}: dot segments in a Label Studio path", url=url
                )
            return "studio", self._studio_url(url)
        if scheme == "file" or not scheme or _is_windows_path(url):
            return "local", url
        if scheme in CLOUD_SCHEMES:
            return "cloud", url
        if scheme not in ("http", "https"):
            raise BadImageURL(
                f"image URL {_display(url)!r}: unsupported scheme {scheme!r} (http, https, file, "
                f"{', '.join(sorted(CLOUD_SCHEMES))} or a Label Studio path)",
                url=url,
            )
        if _origin(url) is None:
            raise BadImageURL(f"image URL {_display(url)!r} has no valid host", url=url)
        if self._on_studio(url):
            return "studio", url
        if not host_allowed(url, self.allowed_hosts):
            raise ForbiddenImageURL(
                f"image URL {_display(url)!r}: host {parts.hostname!r} is not Label Studio and "
                "not in ALLOWED_IMAGE_HOSTS",
                url=url,
            )
        return "remote", url

    def _cached(self, key_text: str, fetch: Callable[[], bytes]) -> bytes:
        if self.cache is None:
            return fetch()
        key = DiskCache.key(key_text)
        # One download per URL at a time in this process; other threads wait and read the cache.
        with self.cache.locks.hold(key):
            data = self.cache.get(key)
            if data is not None and len(data) <= self.max_bytes:
                return data
            data = fetch()
            try:
                self.cache.put(key, data)
            except OSError as error:  # a full or read-only disk must not fail the fetch
                log.warning("image cache: cannot store %s: %s", _display(key_text), error)
            return data

    # ---------------------------------------------------------------- Label Studio
    def _require_studio(self, url: str) -> StudioLike:
        if self.studio is None:
            raise UpstreamError(
                f"image URL {_display(url)!r} is served by Label Studio, but this backend has no Label "
                "Studio connection (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the backend "
                "from Label Studio)",
                url=url,
            )
        return self.studio

    def _studio_auth(self, url: str) -> dict[str, str]:
        """Label Studio's auth header; getting it may fail (a personal access token is refreshed first)."""
        try:
            return self._require_studio(url).auth_headers()
        except FetchError:
            raise
        except Exception as error:  # StudioError, or a token the client cannot use
            raise UpstreamError(
                f"image URL {_display(url)!r}: cannot authenticate with Label Studio: {error}", url=url
            ) from error

    def _studio_url(self, url: str) -> str:
        return self._require_studio(url).resolve_url(url)

    def _studio_origin(self) -> tuple[str, str, int] | None:
        if self.studio is None:
            return None
        if self._studio_base is None:
            self._studio_base = self.studio.resolve_url("/")
        return _origin(self._studio_base)

    def _on_studio(self, url: str) -> bool:
        origin = _origin(url)
        return origin is not None and origin == self._studio_origin()

    def _fetch_cloud(self, uri: str, task_id: int | None) -> bytes:
        self._require_studio(uri)
        if task_id is None:
            raise BadImageURL(
                f"image URI {_display(uri)!r} is in cloud storage: it is fetched through Label Studio's "
                "presign endpoint, which needs the task id",
                url=uri,
            )
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        presign = self._studio_url(f"/tasks/{int(task_id)}/presign/?fileuri={fileuri}")
        return self._get(presign, display=uri, studio=True, presign=True)

    # ---------------------------------------------------------------- HTTP
    def _get(self, url: str, *, display: str, studio: bool, presign: bool = False) -> bytes:
        """GET with manual redirects: every hop is checked; Label Studio's auth goes to its host only."""
        studio_origin = self._studio_origin() if studio else None
        trusted: set[tuple[str, str, int]] = {studio_origin} if studio_origin else set()
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            origin = _origin(current)
            headers = {"Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
            if studio and origin == studio_origin:
                headers.update(self._studio_auth(display))
            try:
                response = _session().get(
                    current, headers=headers, stream=True, allow_redirects=False, timeout=self.timeout
                )
            except _BlockedAddress as error:
                raise ForbiddenImageURL(f"image URL {_display(display)!r}: {error}", url=display) from error
            except requests.Timeout as error:
                raise UpstreamError(
                    f"image URL {_display(display)!r}: timed out after {self.timeout:g} s", url=display
                ) from error
            except requests.RequestException as error:
                raise UpstreamError(
                    f"image URL {_display(display)!r}: cannot reach {urlsplit(current).netloc}: "
                    f"{type(error).__name__}",
                    url=display,
                ) from error
            except ValueError as error:  # requests parses a redirect's Location even when not following it
                raise UpstreamError(
                    f"image URL {_display(display)!r}: {urlsplit(current).netloc} answered with an invalid "
                    f"redirect ({error})",
                    url=display,
                ) from error
            with response:
                if response.is_redirect:
                    try:
                        target = urljoin(current, response.headers["Location"])
                    except ValueError:
                        target = ""  # an invalid Location: refused below like a non-http one
                    if hop == MAX_REDIRECTS:
                        raise UpstreamError(
                            f"image URL {_display(display)!r}: more than {MAX_REDIRECTS} redirects",
                            url=display,
                        )
                    target_origin = _origin(target)
                    if target_origin is None:
                        raise ForbiddenImageURL(
                            f"image URL {_display(display)!r}: redirect to a non-http or invalid URL refused",
                            url=display,
                        )
                    if (
                        studio
                        and target_origin == studio_origin
                        and urlsplit(target).path.startswith("/user/login")
                    ):
                        raise UpstreamError(
                            f"image URL {_display(display)!r}: Label Studio redirected to its login page, "
                            "the backend's token was not accepted",
                            url=display,
                        )
                    if presign and origin == studio_origin and target_origin != studio_origin:
                        # Label Studio redirects to the presigned URL on the bucket's host: trust that host.
                        trusted.add(target_origin)
                    elif target_origin not in trusted and not host_allowed(target, self.allowed_hosts):
                        raise ForbiddenImageURL(
                            f"image URL {_display(display)!r}: redirect to {target_origin[1]!r} refused "
                            "(host not allowed)",
                            url=display,
                        )
                    current = target
                    continue
                return self._read_body(response, display, studio=studio and origin == studio_origin)
        raise AssertionError("unreachable")

    def _read_body(self, response: requests.Response, display: str, *, studio: bool) -> bytes:
        if response.status_code in (404, 410):
            raise ImageNotFound(
                f"image URL {_display(display)!r}: not found (HTTP {response.status_code})", url=display
            )
        if studio and response.status_code in (401, 403):
            raise UpstreamError(
                f"image URL {_display(display)!r}: Label Studio refused the backend's token "
                f"(HTTP {response.status_code}); check LABEL_STUDIO_API_KEY",
                url=display,
            )
        if not 200 <= response.status_code < 300:
            raise UpstreamError(
                f"image URL {_display(display)!r}: upstream answered HTTP {response.status_code}", url=display
            )
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise ImageTooLarge(
                f"image URL {_display(display)!r}: {int(length)} bytes, more than the limit of "
                f"{self.max_bytes} (MAX_IMAGE_BYTES)",
                url=display,
            )
        chunks: list[bytes] = []
        received = 0
        try:
            while received <= self.max_bytes:
                # Never ask for more than one byte past the limit.
                chunk = response.raw.read(min(_CHUNK, self.max_bytes + 1 - received), decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            raise UpstreamError(
                f"image URL {_display(display)!r}: transfer failed: {type(error).__name__}", url=display
            ) from error
        if received > self.max_bytes:
            raise ImageTooLarge(
                f"image URL {_display(display)!r}: more than the limit of {self.max_bytes} bytes "
                "(MAX_IMAGE_BYTES)",
                url=display,
            )
        return b"".join(chunks)

    # ---------------------------------------------------------------- local files
    def _read_local(self, url: str) -> bytes:
        if self.local_root is None:
            raise ForbiddenImageURL(
                f"image path {url!r}: local files are not allowed (LOCAL_FILES_ROOT is not set)", url=url
            )
        parts = urlsplit(url)
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost"):
                raise ForbiddenImageURL(f"image URL {url!r}: file URLs on other hosts are refused", url=url)
            raw = unquote(parts.path)
        else:
            raw = url
        if "\x00" in raw:
            raise BadImageURL(f"image path {url!r} contains a NUL byte", url=url)
        candidate = Path(raw)
        if not candidate.is_absolute():
            candidate = self.local_root / candidate
        # realpath resolves symlinks and "..": what is checked is what is opened.
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(self.local_root):
            raise ForbiddenImageURL(f"image path {url!r} is outside LOCAL_FILES_ROOT", url=url)
        try:
            with open(real, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > self.max_bytes:
                    raise ImageTooLarge(
                        f"image path {url!r}: {size} bytes, more than the limit of {self.max_bytes} "
                        "(MAX_IMAGE_BYTES)",
                        url=url,
                    )
                data = handle.read(self.max_bytes + 1)
        except FileNotFoundError as error:
            raise ImageNotFound(f"image path {url!r} does not exist", url=url) from error
        except IsADirectoryError as error:
            raise BadImageURL(f"image path {url!r} is a directory", url=url) from error
        except PermissionError as error:
            raise ForbiddenImageURL(f"image path {url!r} is not readable", url=url) from error
        if len(data) > self.max_bytes:  # the file grew while being read
            raise ImageTooLarge(f"image path {url!r}: more than {self.max_bytes} bytes", url=url)
        return data

    # ---------------------------------------------------------------- decoding
    def load_image(self, url: str, task_id: int | None, *, thermal: bool) -> np.ndarray:
        """Fetch and decode one image: (H, W, 3) uint8 RGB or (H, W) uint8 thermal."""
        data = self.fetch_bytes(url, task_id)
        try:
            # load_* decode through decode_image, which checks the header's pixel count before decoding.
            load = load_thermal if thermal else load_rgb
            return load(data, max_pixels=self.max_pixels)
        except ImageTooLargeError as error:
            raise ImageTooLarge(f"image URL {_display(url)!r}: {error}", url=url) from error
        except ImageDecodeError as error:
            self.forget(url)  # do not keep serving a truncated or wrong body
            raise NotAnImage(
                f"image URL {_display(url)!r} is not a readable image: {error}", url=url
            ) from error

    def load_pair(
        self, task_data: Mapping[str, Any], schema: ProjectSchema, task_id: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A task's (rgb (H, W, 3) uint8, thermal (H, W) uint8), keys from the config's ``<Image>`` tags.

        A thermal image of another size is resized to the RGB size (bilinear) with a warning, or refused
        with :class:`PairSizeMismatch` when ``reject_mismatched``.
        """
        urls = []
        for slot in (schema.rgb, schema.thermal):
            value = task_data.get(slot.value_key) if isinstance(task_data, Mapping) else None
            if not isinstance(value, str) or not value.strip():
                raise BadImageURL(
                    f"task {task_id}: data has no image URL under {slot.value_key!r} "
                    f'(the config\'s <Image name="{slot.name}" value="${slot.value_key}">)'
                )
            urls.append(value)
        rgb = self.load_image(urls[0], task_id, thermal=False)
        thermal = self.load_image(urls[1], task_id, thermal=True)
        if rgb.shape[:2] != thermal.shape[:2]:
            message = (
                f"task {task_id}: RGB is {rgb.shape[1]}x{rgb.shape[0]} but thermal is "
                f"{thermal.shape[1]}x{thermal.shape[0]} (width x height)"
            )
            if self.reject_mismatched:
                raise PairSizeMismatch(message + "; REJECT_MISMATCHED_PAIRS is set", url=urls[1])
            log.warning("%s; resizing thermal to the RGB size", message)
            thermal = cv2.resize(thermal, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        return rgb, thermal


def _is_windows_path(url: str) -> bool:
    # "C:\images\a.png" parses with scheme "c": it is a local path, not a URL.
    return len(url) > 2 and url[0].isalpha() and url[1] == ":" and url[2] in "\\/"
