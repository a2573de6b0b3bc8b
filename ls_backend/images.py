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

The URL policy lives in :mod:`ls_backend.url_policy`, the on-disk cache in :mod:`ls_backend.image_cache`;
this module routes each URL, presigns cloud URIs through Label Studio, fetches and decodes.

Whatever the host, connections to link-local addresses (169.254.0.0/16, fe80::/10, which hold the cloud
metadata services) and to known metadata addresses are refused, checked on the resolved addresses before
connecting and on the connected peer (so DNS rebinding cannot slip through). Redirects are followed by hand,
at most :data:`MAX_REDIRECTS`, each hop checked like the first; environment proxies are not used, so the
connected peer is the real destination.

Bodies are streamed and cut at ``max_bytes`` (a larger Content-Length is refused before reading); decoded
images are bounded by ``max_pixels`` and by ``max_decode_bytes`` (width x height x channels x bytes per
sample) through :func:`model.data.io.decode_image`'s header check (what :func:`~model.data.io.load_rgb` /
:func:`~model.data.io.load_thermal` decode with), and every decode first reserves its peak memory in the
process-wide :class:`~model.data.io.DecodeBudget` (``decode_budget`` bytes), waiting at most
``decode_wait`` seconds (then :class:`DecodeBusy`, 429). A fetcher given a deadline (:meth:`ImageFetcher.
with_deadline`, what ``/predict`` uses) cuts every socket wait, body read and budget wait at that deadline
(:class:`FetchDeadline`). Fetched bytes are kept in a small on-disk cache
(:class:`~ls_backend.image_cache.DiskCache`) so pool scoring, ``/predict`` and training rounds do not
download the same image again.

Every failure is a :class:`FetchError` whose ``status`` is the HTTP status the backend answers with.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import cv2
import numpy as np
import requests
import urllib3

from ls_backend.image_cache import DiskCache
from ls_backend.label_config import ProjectSchema
from ls_backend.url_policy import (
    BlockedAddress,
    guarded_session,
    host_allowed,
    is_windows_path,
    origin,
    redact_url,
)
from model.data.io import (
    DecodeBudget,
    DecodeBusyError,
    ImageDecodeError,
    ImageInfo,
    ImageTooLargeError,
    decode_peak_bytes,
    load_rgb,
    load_thermal,
    probe,
)

__all__ = [
    "BadImageURL",
    "DecodeBusy",
    "FetchDeadline",
    "FetchError",
    "ForbiddenImageURL",
    "ImageFetcher",
    "ImageNotFound",
    "ImageTooLarge",
    "NotAnImage",
    "PairSizeMismatch",
    "StudioLike",
    "UpstreamError",
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




class FetchDeadline(UpstreamError):
    """The request's deadline passed before the image was fetched and decoded."""

    status = 504


class DecodeBusy(FetchError):
    """The process's decode memory budget stayed full for the whole wait: the caller should try again."""

    status = 429


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
        studio_trusted: whether the admin configured Label Studio's origin (LABEL_STUDIO_URL). When it came
            from a ``/setup`` caller instead, what happened on the way to it (refused, timed out, HTTP
            status, not an image) is logged but answered with one generic message, so the backend cannot
            be used to probe which hosts and ports answer.
        reject_mismatched: raise :class:`PairSizeMismatch` for pairs of different sizes instead of resizing
            the thermal image to the RGB size.
        max_decode_bytes: largest decoded image in bytes (width x height x channels x bytes per sample).
        decode_budget: bytes that decodes in flight may hold together in this process (the shared
            :class:`~model.data.io.DecodeBudget` of that size); None: unbounded.
        decode_wait: seconds a decode waits for room in the budget before :class:`DecodeBusy`.
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
        studio_trusted: bool = True,
        max_decode_bytes: int = 128 * 1024**2,
        decode_budget: int | None = 512 * 1024**2,
        decode_wait: float = 20.0,
    ) -> None:
        self.studio = studio
        self.studio_trusted = studio_trusted
        self.allowed_hosts = tuple(allowed_hosts)
        self.local_root = Path(local_root).resolve() if local_root is not None else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.timeout = float(timeout)
        self.reject_mismatched = reject_mismatched
        self.max_decode_bytes = int(max_decode_bytes)
        self.decode_budget = DecodeBudget.shared(decode_budget) if decode_budget is not None else None
        self.decode_wait = float(decode_wait)
        self.deadline: float | None = None  # time.monotonic() by which every fetch and decode must be done
        self.cache = DiskCache.shared(cache_dir, cache_max_bytes) if cache_dir is not None else None
        self._studio_base: str | None = None

    def with_deadline(self, seconds: float) -> ImageFetcher:
        """A copy of this fetcher whose fetches and decodes all end within ``seconds`` from now."""
        bounded = copy.copy(self)
        bounded.deadline = time.monotonic() + float(seconds)
        return bounded

    def _time_left(self, url: str, wait: float) -> float:
        """``wait`` cut to what is left of the deadline; :class:`FetchDeadline` when nothing is."""
        if self.deadline is None:
            return wait
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchDeadline(
                f"image URL {redact_url(url)!r}: not loaded before the request's deadline "
                "(PREDICT_DEADLINE_SECONDS)",
                url=url,
            )
        return min(wait, left)

    # ---------------------------------------------------------------- bytes
    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        """The raw bytes behind a task image URL (from the cache when there). ``task_id`` is needed for
        cloud URIs (Label Studio presigns per task)."""
        kind, target = self._route(url)
        if kind == "local":
            return self._read_local(target)
        with self._opaque(kind, url):
            if kind == "cloud":
                return self._cached(target, lambda: self._fetch_cloud(target, task_id))
            return self._cached(target, lambda: self._get(target, display=url, studio=kind == "studio"))

    @contextlib.contextmanager
    def _opaque(self, kind: str, url: str) -> Iterator[None]:
        """Failures on the way to a Label Studio origin a ``/setup`` caller named, as one generic error."""
        try:
            yield
        except FetchError as error:
            if (
                kind not in ("studio", "cloud")
                or self.studio_trusted
                or self.studio is None
                or isinstance(error, BadImageURL)  # refused before any connection: nothing to learn
            ):
                raise
            log.warning("image URL %s: %s", redact_url(url), error)
            raise UpstreamError(
                f"image URL {redact_url(url)!r}: Label Studio did not serve it "
                "(details in the backend's log)",
                url=url,
            ) from error

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
            raise BadImageURL(f"image URL {redact_url(url)!r} contains control characters", url=url)
        try:
            parts = urlsplit(url)
        except ValueError as error:  # e.g. an unclosed IPv6 bracket
            raise BadImageURL(
                f"image URL {redact_url(url)!r} is not a valid URL: {error}", url=url
            ) from error
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
                    f"image URL {redact_url(url)!r}: dot segments in a Label Studio path", url=url
                )
            return "studio", self._studio_url(url)
        if scheme == "file" or not scheme or is_windows_path(url):
            return "local", url
        if scheme in CLOUD_SCHEMES:
            return "cloud", url
        if scheme not in ("http", "https"):
            raise BadImageURL(
                f"image URL {redact_url(url)!r}: unsupported scheme {scheme!r} (http, https, file, "
                f"{', '.join(sorted(CLOUD_SCHEMES))} or a Label Studio path)",
                url=url,
            )
        if origin(url) is None:
            raise BadImageURL(f"image URL {redact_url(url)!r} has no valid host", url=url)
        if self._on_studio(url):
            return "studio", url
        if not host_allowed(url, self.allowed_hosts):
            raise ForbiddenImageURL(
                f"image URL {redact_url(url)!r}: host {parts.hostname!r} is not Label Studio and "
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
                log.warning("image cache: cannot store %s: %s", redact_url(key_text), error)
            return data

    # ---------------------------------------------------------------- Label Studio
    def _require_studio(self, url: str) -> StudioLike:
        if self.studio is None:
            raise UpstreamError(
                f"image URL {redact_url(url)!r} is served by Label Studio, but this backend has no Label "
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
                f"image URL {redact_url(url)!r}: cannot authenticate with Label Studio: {error}", url=url
            ) from error

    def _studio_url(self, url: str) -> str:
        return self._require_studio(url).resolve_url(url)

    def _studio_origin(self) -> tuple[str, str, int] | None:
        if self.studio is None:
            return None
        if self._studio_base is None:
            self._studio_base = self.studio.resolve_url("/")
        return origin(self._studio_base)

    def _on_studio(self, url: str) -> bool:
        url_origin = origin(url)
        return url_origin is not None and url_origin == self._studio_origin()

    def _fetch_cloud(self, uri: str, task_id: int | None) -> bytes:
        self._require_studio(uri)
        if task_id is None:
            raise BadImageURL(
                f"image URI {redact_url(uri)!r} is in cloud storage: it is fetched through Label Studio's "
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
            hop_origin = origin(current)
            headers = {"Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
            if studio and hop_origin == studio_origin:
                headers.update(self._studio_auth(display))
            timeout = self._time_left(display, self.timeout)
            try:
                response = guarded_session().get(
                    current, headers=headers, stream=True, allow_redirects=False, timeout=timeout
                )
            except BlockedAddress as error:
                raise ForbiddenImageURL(f"image URL {redact_url(display)!r}: {error}", url=display) from error
            except requests.Timeout as error:
                self._time_left(display, 0)  # the request's deadline, when that is what ran out
                raise UpstreamError(
                    f"image URL {redact_url(display)!r}: timed out after {self.timeout:g} s", url=display
                ) from error
            except requests.RequestException as error:
                raise UpstreamError(
                    f"image URL {redact_url(display)!r}: cannot reach {urlsplit(current).netloc}: "
                    f"{type(error).__name__}",
                    url=display,
                ) from error
            except ValueError as error:  # requests parses a redirect's Location even when not following it
                raise UpstreamError(
                    f"image URL {redact_url(display)!r}: {urlsplit(current).netloc} answered with an invalid "
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
                            f"image URL {redact_url(display)!r}: more than {MAX_REDIRECTS} redirects",
                            url=display,
                        )
                    target_origin = origin(target)
                    if target_origin is None:
                        raise ForbiddenImageURL(
                            f"image URL {redact_url(display)!r}: redirect to a non-http or invalid URL "
                            "refused",
                            url=display,
                        )
                    if (
                        studio
                        and target_origin == studio_origin
                        and urlsplit(target).path.startswith("/user/login")
                    ):
                        raise UpstreamError(
                            f"image URL {redact_url(display)!r}: Label Studio redirected to its login page, "
                            "the backend's token was not accepted",
                            url=display,
                        )
                    if presign and hop_origin == studio_origin and target_origin != studio_origin:
                        # Label Studio redirects to the presigned URL on the bucket's host: trust that host.
                        trusted.add(target_origin)
                    elif target_origin not in trusted and not host_allowed(target, self.allowed_hosts):
                        raise ForbiddenImageURL(
                            f"image URL {redact_url(display)!r}: redirect to {target_origin[1]!r} refused "
                            "(host not allowed)",
                            url=display,
                        )
                    current = target
                    continue
                return self._read_body(response, display, studio=studio and hop_origin == studio_origin)
        raise AssertionError("unreachable")

    def _read_body(self, response: requests.Response, display: str, *, studio: bool) -> bytes:
        if response.status_code in (404, 410):
            raise ImageNotFound(
                f"image URL {redact_url(display)!r}: not found (HTTP {response.status_code})", url=display
            )
        if studio and response.status_code in (401, 403):
            raise UpstreamError(
                f"image URL {redact_url(display)!r}: Label Studio refused the backend's token "
                f"(HTTP {response.status_code}); check LABEL_STUDIO_API_KEY",
                url=display,
            )
        if not 200 <= response.status_code < 300:
            raise UpstreamError(
                f"image URL {redact_url(display)!r}: upstream answered HTTP {response.status_code}",
                url=display,
            )
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise ImageTooLarge(
                f"image URL {redact_url(display)!r}: {int(length)} bytes, more than the limit of "
                f"{self.max_bytes} (MAX_IMAGE_BYTES)",
                url=display,
            )
        chunks: list[bytes] = []
        received = 0
        try:
            while received <= self.max_bytes:
                # A host that trickles bytes never trips the socket timeout: the deadline is checked after
                # every receive (read1: one receive at most, where read() waits for the whole chunk).
                self._time_left(display, 0)
                # Never ask for more than one byte past the limit.
                chunk = response.raw.read1(min(_CHUNK, self.max_bytes + 1 - received), decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            raise UpstreamError(
                f"image URL {redact_url(display)!r}: transfer failed: {type(error).__name__}", url=display
            ) from error
        if received > self.max_bytes:
            raise ImageTooLarge(
                f"image URL {redact_url(display)!r}: more than the limit of {self.max_bytes} bytes "
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
                raise ForbiddenImageURL(
                    f"image URL {redact_url(url)!r}: file URLs on other hosts are refused", url=url
                )
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
    def load_image(
        self, url: str, task_id: int | None, *, thermal: bool, reduce_to: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Fetch and decode one image: (H, W, 3) uint8 RGB or (H, W) uint8 thermal (``reduce_to``: decoded
        straight to about that (height, width), see :func:`model.data.io.decode_image`)."""
        return self._load_image(url, task_id, thermal=thermal, reduce_to=reduce_to)[0]

    def _load_image(
        self, url: str, task_id: int | None, *, thermal: bool, reduce_to: tuple[int, int] | None
    ) -> tuple[np.ndarray, ImageInfo]:
        data = self.fetch_bytes(url, task_id)
        kind = self._route(url)[0]
        # Whether a caller-named host answered with an image or not is no more visible than how it failed.
        with self._opaque(kind, url):
            try:
                # The header is read first: size, channels and bit depth bound the decode before it starts.
                info = probe(data)
                if self.decode_budget is None:
                    reservation: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
                else:
                    wait = self._time_left(url, self.decode_wait)
                    reservation = self.decode_budget.reserve(decode_peak_bytes(info), wait)
                load = load_thermal if thermal else load_rgb
                with reservation:
                    array = load(
                        data, max_pixels=self.max_pixels, max_bytes=self.max_decode_bytes, reduce_to=reduce_to
                    )
                return array, info
            except DecodeBusyError as error:
                self._time_left(url, 0)  # the request's deadline, when that is what ran out
                raise DecodeBusy(f"image URL {redact_url(url)!r}: {error}", url=url) from error
            except ImageTooLargeError as error:
                raise ImageTooLarge(
                    f"image URL {redact_url(url)!r}: {error} (MAX_IMAGE_PIXELS, MAX_DECODE_BYTES)", url=url
                ) from error
            except ImageDecodeError as error:
                self.forget(url)  # do not keep serving a truncated or wrong body
                raise NotAnImage(
                    f"image URL {redact_url(url)!r} is not a readable image: {error}", url=url
                ) from error

    def load_pair(
        self, task_data: Mapping[str, Any], schema: ProjectSchema, task_id: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A task's (rgb (H, W, 3) uint8, thermal (H, W) uint8), keys from the config's ``<Image>`` tags.

        A thermal image of another size is resized to the RGB size (bilinear) with a warning, or refused
        with :class:`PairSizeMismatch` when ``reject_mismatched``.
        """
        rgb, thermal, _ = self.load_pair_reduced(task_data, schema, task_id, None)
        return rgb, thermal

    def load_pair_reduced(
        self,
        task_data: Mapping[str, Any],
        schema: ProjectSchema,
        task_id: int | None,
        reduce_to: tuple[int, int] | None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """:meth:`load_pair` decoding straight to about ``reduce_to`` (the network's (height, width)), for
        inference: (rgb, thermal, the RGB image's original (height, width), which predictions map back to).
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
        rgb, rgb_info = self._load_image(urls[0], task_id, thermal=False, reduce_to=reduce_to)
        thermal, thermal_info = self._load_image(urls[1], task_id, thermal=True, reduce_to=reduce_to)
        if (rgb_info.height, rgb_info.width) != (thermal_info.height, thermal_info.width):
            message = (
                f"task {task_id}: RGB is {rgb_info.width}x{rgb_info.height} but thermal is "
                f"{thermal_info.width}x{thermal_info.height} (width x height)"
            )
            if self.reject_mismatched:
                raise PairSizeMismatch(message + "; REJECT_MISMATCHED_PAIRS is set", url=urls[1])
            log.warning("%s; resizing thermal to the RGB size", message)
        if rgb.shape[:2] != thermal.shape[:2]:  # sizes differ, or equal sizes reduced differently
            thermal = cv2.resize(thermal, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        return rgb, thermal, (rgb_info.height, rgb_info.width)
