"""The one Label Studio client of the backend, on label-studio-sdk 2.1.2, checked against Label Studio 1.23.2.

:class:`StudioClient` wraps the SDK's :class:`~label_studio_sdk.LabelStudio` for the endpoints the SDK has,
and sends the few it lacks (or whose SDK method drops the answer) through the same ``httpx.Client``:

* one HTTP client (connection pool) and one auth path: an ``httpx.Auth`` (:class:`_TokenAuth`) sets the
  ``Authorization`` header of every request, SDK calls included. A legacy token goes as ``Token <key>``; a
  personal access token (a JWT refresh token) is exchanged at ``POST /api/token/refresh/`` for an access token
  sent as ``Bearer <access>``, cached and refreshed shortly before it expires (thread-safe), and once more on
  a 401. :meth:`StudioClient.auth_headers` hands the same header to the image fetcher.
* every request has a timeout; idempotent requests (GET, PATCH, PUT, DELETE) and the bulk prediction import
  are retried a bounded number of times with exponential backoff on connection errors, 429 and 5xx;
* every failure is a :class:`StudioError` naming the request, the URL, the HTTP status and Label Studio's
  error text.

Results are plain JSON dicts, as Label Studio sends them (timestamps stay ISO strings).
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

__all__ = ["UNCERTAINTY_SAMPLING", "StudioClient", "StudioError"]

log = logging.getLogger(__name__)

#: Label Studio's name of the sampling mode that serves unlabelled tasks by ascending prediction score.
UNCERTAINTY_SAMPLING = "Uncertainty sampling"

# The SDK insists on an api_key and derives its own Authorization header from it; that header is replaced
# on every request by _TokenAuth (the one place that knows the real key), so the SDK gets a placeholder that
# is not a JWT (with a JWT the SDK would start refreshing tokens of its own).
_SDK_KEY_PLACEHOLDER = "set-by-rgbt-al-auth"

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})

_HTML = re.compile(r"<!doctype html|<html", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)

T = TypeVar("T")


# ------------------------------------------------------------------------------------------ errors
class StudioError(RuntimeError):
    """A Label Studio request failed. ``status`` is the HTTP status (None: no answer, e.g. unreachable)."""

    def __init__(
        self, message: str, *, url: str | None = None, status: int | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.detail = detail

    @property
    def retryable(self) -> bool:
        """No answer at all, too many requests, or a server error: trying again may succeed."""
        return self.status is None or self.status == 429 or self.status >= 500


def _error_text(body: Any, limit: int = 500) -> str:
    """Label Studio's error message from an error body (``detail`` / ``validation_errors``), shortened."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            if _HTML.search(body[:500]):  # Django's 404 / 500 pages: only their title says anything
                title = _TITLE.search(body)
                return f"an HTML page ({' '.join(title.group(1).split())[:200] if title else 'no title'})"
            text = " ".join(body.split())
            return text[:limit] + ("..." if len(text) > limit else "")
    if isinstance(body, Mapping):
        parts = []
        for key in ("detail", "message", "error"):
            if body.get(key):
                parts.append(str(body[key]))
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"], default=str))
        if not parts:
            parts.append(json.dumps(body, default=str))
        text = "; ".join(parts)
    else:
        text = json.dumps(body, default=str) if body is not None else ""
    return text[:limit] + ("..." if len(text) > limit else "")


# ------------------------------------------------------------------------------------------ auth
def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT (not verified: the server does that), or None when ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class _TokenAuth(httpx.Auth):
    """The Authorization header for Label Studio, from a legacy token or a personal access token (PAT).

    * legacy token (40 hex characters): ``Token <key>``;
    * PAT (a JWT with ``token_type: refresh``): ``Bearer <access token>``; the access token comes from
      ``POST /api/token/refresh/`` (Label Studio's access tokens live 5 minutes), is cached, and is
      refreshed ``refresh_margin`` seconds before it expires or when Label Studio answers 401;
    * a JWT access token given directly: ``Bearer <key>`` as is (it cannot be renewed).
    """

    def __init__(self, base_url: str, key: str, *, timeout: float, refresh_margin: float = 30.0) -> None:
        self.key = key.strip()
        if not self.key:
            raise ValueError("Label Studio API key is empty")
        claims = _jwt_claims(self.key)
        self.kind = "legacy" if claims is None else str(claims.get("token_type") or "refresh")
        self._key_expires = float(claims["exp"]) if claims and "exp" in claims else None
        self.refresh_url = f"{base_url}/api/token/refresh/"
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self._lock = threading.Lock()
        self._access: str | None = None
        self._renew_at = 0.0

    def reset_lock(self) -> None:
        """A new lock (in a forked child: the parent's may have been held by a thread that is not there)."""
        self._lock = threading.Lock()

    def header(self, *, stale: str | None = None) -> str:
        """The header value to send. ``stale``: a value Label Studio just refused; a new access token is
        fetched unless another thread already replaced it."""
        if self.kind == "legacy":
            return f"Token {self.key}"
        if self.kind != "refresh":
            return f"Bearer {self.key}"
        with self._lock:
            current = f"Bearer {self._access}" if self._access else None
            if current is None or time.time() >= self._renew_at or (stale is not None and stale == current):
                self._refresh()
            return f"Bearer {self._access}"

    def _refresh(self) -> None:
        if self._key_expires is not None and time.time() >= self._key_expires:
            raise StudioError(
                f"the Label Studio personal access token expired at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self._key_expires))}: create a new one "
                "(Account & Settings > Personal Access Token)",
                url=self.refresh_url,
                status=401,
            )
        try:
            # A request of its own, outside the client (and so outside this auth flow).
            response = httpx.post(self.refresh_url, json={"refresh": self.key}, timeout=self.timeout)
        except httpx.TransportError as error:
            raise StudioError(
                f"POST {self.refresh_url}: cannot reach Label Studio to refresh the access token: {error!r}",
                url=self.refresh_url,
            ) from error
        if response.status_code != 200:
            detail = _error_text(response.content)
            raise StudioError(
                f"POST {self.refresh_url}: HTTP {response.status_code}: Label Studio refused the personal "
                f"access token: {detail}",
                url=self.refresh_url,
                status=response.status_code,
                detail=detail,
            )
        access = response.json().get("access")
        if not isinstance(access, str) or not access:
            raise StudioError(f"POST {self.refresh_url}: no access token in the answer", url=self.refresh_url)
        claims = _jwt_claims(access) or {}
        now = time.time()
        expires = float(claims.get("exp", now + 300))
        lifetime = max(expires - float(claims.get("iat", now)), 0.0)
        self._access = access
        self._renew_at = expires - min(self.refresh_margin, lifetime / 2)
        log.debug("Label Studio access token refreshed, valid until %s", time.ctime(expires))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self.header()
        request.headers["Authorization"] = sent
        response = yield request
        if response.status_code == 401 and self.kind == "refresh":
            # The access token may have been revoked or expired early (clock skew): renew it once.
            request.headers["Authorization"] = self.header(stale=sent)
            yield request


# ------------------------------------------------------------------------------------------ results
def _plain(value: Any) -> Any:
    """SDK results (pydantic models, lists of them) as the JSON Label Studio sent."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _labeled(task: Mapping[str, Any]) -> bool:
    """Whether a task has an annotation that was not cancelled (skipped)."""
    return any(isinstance(a, Mapping) and not a.get("was_cancelled") for a in task.get("annotations") or [])


# ------------------------------------------------------------------------------------------ client
class StudioClient:
    """A Label Studio connection: ``url`` (e.g. ``http://localhost:8080``) and an API key (legacy token or
    personal access token).

    Args:
        timeout: seconds for every request (connect and read).
        retries: attempts of a retried request in all (idempotent requests and the prediction import).
        backoff: seconds before the second attempt, doubling for each further one.
        page_size: tasks per page when listing.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        page_size: int = 100,
    ) -> None:
        url = (url or "").strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Label Studio URL must be http(s)://host[:port][/path], got {url!r}")
        self.base_url = url
        self.timeout = float(timeout)
        self.retries = max(1, int(retries))
        self.backoff = float(backoff)
        self.page_size = int(page_size)
        self._auth = _TokenAuth(url, api_key, timeout=self.timeout)
        self._connect()
        self._options: RequestOptions = {"timeout": self.timeout, "max_retries": 0}

    def _connect(self) -> None:
        """Build the HTTP client and the SDK on it (again in a forked child: a process forked after the client
        was made, such as a gunicorn worker, must not share the parent's pooled connections or locks)."""
        self._pid = os.getpid()
        # follow_redirects=False: the API answers directly; a redirect means a wrong URL or a login page.
        # No cookies: Label Studio sets a session cookie on API answers, and requests carrying it would be
        # authenticated by session (with Django's CSRF checks) instead of by the token.
        self._http = httpx.Client(
            auth=self._auth,
            timeout=self.timeout,
            follow_redirects=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        self.sdk = LabelStudio(
            base_url=self.base_url,
            api_key=_SDK_KEY_PLACEHOLDER,
            httpx_client=self._http,
            timeout=self.timeout,
            max_retries=0,  # retries are this class's business (bounded, idempotent requests only)
        )

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            self._auth.reset_lock()
            self._connect()

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> StudioClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StudioClient({self.base_url!r}, {self._auth.kind} token)"

    # ---------------------------------------------------------------- URLs and auth
    def resolve_url(self, url: str) -> str:
        """An absolute URL for a Label Studio-relative one (``/data/upload/...``,
        ``/data/local-files/?d=...``); ``"/"`` gives the base URL with a trailing slash; absolute URLs come
        back unchanged. A base URL with a path (Label Studio under a prefix) keeps its prefix, without
        doubling one the URL already has."""
        parts = urlsplit(url)
        if parts.scheme:
            return url
        base = urlsplit(self.base_url)
        if url.startswith("//"):  # scheme-relative
            return f"{base.scheme}:{url}"
        origin = f"{base.scheme}://{base.netloc}"
        prefix = base.path.rstrip("/")
        if not url.startswith("/"):
            return f"{self.base_url}/{url}"
        if prefix and (url == prefix or url.startswith(prefix + "/")):
            return origin + url
        return origin + prefix + url

    def auth_headers(self) -> dict[str, str]:
        """Headers for a raw HTTP request to Label Studio (image fetches): the same Authorization the client
        sends. For a personal access token this may refresh the access token (a request to Label Studio)."""
        self._check_process()
        return {"Authorization": self._auth.header()}

    # ---------------------------------------------------------------- plumbing
    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _retrying(self, method: str, url: str, call: Callable[[], T], retry: bool | None) -> T:
        """Run ``call`` (which raises StudioError), retrying retryable failures when ``retry`` (default: for
        idempotent methods) up to ``self.retries`` attempts, waiting ``backoff`` * 2^k between them."""
        attempts = self.retries if (method in _IDEMPOTENT if retry is None else retry) else 1
        delay = self.backoff
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except StudioError as error:
                if not error.retryable or attempt == attempts:
                    if attempt > 1:
                        raise StudioError(
                            f"{error} (after {attempt} attempts)",
                            url=error.url,
                            status=error.status,
                            detail=error.detail,
                        ) from error
                    raise
                log.warning("%s (attempt %d/%d, retrying in %.1f s)", error, attempt, attempts, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, method: str, url: str, error: Exception) -> StudioError:
        """A StudioError for an exception raised by httpx or the SDK."""
        if isinstance(error, StudioError):
            return error
        if isinstance(error, ApiError):
            status = error.status_code
            detail = _error_text(error.body)
            return StudioError(
                f"{method} {url}: HTTP {status}: {detail}", url=url, status=status, detail=detail
            )
        if isinstance(error, httpx.TimeoutException):
            return StudioError(
                f"{method} {url}: Label Studio did not answer within {self.timeout:g} s", url=url
            )
        if isinstance(error, httpx.TransportError):
            return StudioError(f"{method} {url}: cannot reach Label Studio: {error!r}", url=url)
        raise error

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        retry: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """A raw API call through the client's connection and auth: the decoded JSON answer (None if empty).

        ``path`` is relative to the base URL (``api/projects/1/next/``). Raises :class:`StudioError`.
        """
        method = method.upper()
        url = self._url(path)
        self._check_process()

        def call() -> Any:
            try:
                response = self._http.request(
                    method,
                    url,
                    params=dict(params) if params else None,
                    json=json_body,
                    files=files,
                    data=data,
                    timeout=timeout if timeout is not None else self.timeout,
                )
            except (httpx.HTTPError, StudioError) as error:
                raise self._failure(method, url, error) from error
            if response.is_redirect:
                location = response.headers.get("location", "")
                raise StudioError(
                    f"{method} {url}: HTTP {response.status_code}: redirected to {location!r} (a wrong Label "
                    "Studio URL, or a login page: check the token)",
                    url=url,
                    status=response.status_code,
                )
            if response.status_code >= 400:
                detail = _error_text(response.content)
                raise StudioError(
                    f"{method} {url}: HTTP {response.status_code}: {detail}",
                    url=url,
                    status=response.status_code,
                    detail=detail,
                )
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as error:
                raise StudioError(
                    f"{method} {url}: HTTP {response.status_code}: the answer is not JSON "
                    f"({_error_text(response.content, 200)})",
                    url=url,
                    status=response.status_code,
                ) from error

        return self._retrying(method, url, call, retry)

    def _sdk(
        self, method: str, path: str, call: Callable[[RequestOptions], Any], retry: bool | None = None
    ) -> Any:
        """An SDK call (given the request options to pass on): errors as StudioError, the result as JSON."""
        url = self._url(path)
        self._check_process()

        def run() -> Any:
            try:
                return _plain(call(self._options))
            except (ApiError, httpx.HTTPError, StudioError) as error:
                raise self._failure(method, url, error) from error

        return self._retrying(method, url, run, retry)

    # ---------------------------------------------------------------- projects
    @staticmethod
    def _split_fields(
        method: Callable[..., Any], fields: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(keyword arguments the SDK method takes, the rest: sent as extra body fields)."""
        accepted = inspect.signature(method).parameters
        known = {k: v for k, v in fields.items() if k in accepted}
        return known, {k: v for k, v in fields.items() if k not in accepted}

    def _with_body(self, options: RequestOptions, extra: Mapping[str, Any]) -> RequestOptions:
        return {**options, "additional_body_parameters": dict(extra)} if extra else options

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        """Create a project; ``fields`` are any other project fields (``description``, ``sampling``...)."""
        known, extra = self._split_fields(self.sdk.projects.create, fields)
        return self._sdk(
            "POST",
            "api/projects/",
            lambda o: self.sdk.projects.create(
                title=title, label_config=label_config, **known, request_options=self._with_body(o, extra)
            ),
            retry=False,
        )

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH project fields (``label_config``, ``model_version``, ``sampling``...): the new project."""
        known, extra = self._split_fields(self.sdk.projects.update, fields)
        return self._sdk(
            "PATCH",
            f"api/projects/{project_id}/",
            lambda o: self.sdk.projects.update(
                int(project_id), **known, request_options=self._with_body(o, extra)
            ),
        )

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self._sdk(
            "GET",
            f"api/projects/{project_id}/",
            lambda o: self.sdk.projects.get(int(project_id), request_options=o),
        )

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly ``title`` (the oldest one if several), or None."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.request(
                "GET", "api/projects/", params={"title": title, "page": page, "page_size": 100}
            )
            results = answer.get("results", []) if isinstance(answer, Mapping) else answer or []
            found.extend(p for p in results if p.get("title") == title)
            if not isinstance(answer, Mapping) or not answer.get("next"):
                break
            page += 1
        return min(found, key=lambda p: int(p["id"])) if found else None

    def delete_project(self, project_id: int) -> None:
        self._sdk(
            "DELETE",
            f"api/projects/{project_id}/",
            lambda o: self.sdk.projects.delete(int(project_id), request_options=o),
        )

    def set_model_version(self, project_id: int, version: str) -> dict[str, Any]:
        """Point the project at ``version``: uncertainty sampling uses only predictions of this version."""
        return self.update_project(project_id, model_version=version)

    def set_uncertainty_sampling(self, project_id: int, model_version: str | None = None) -> dict[str, Any]:
        """Serve unlabelled tasks by ascending prediction score (of the project's ``model_version``; set it
        too when given). The Community edition's UI offers only sequential and random sampling."""
        fields: dict[str, Any] = {"sampling": UNCERTAINTY_SAMPLING}
        if model_version is not None:
            fields["model_version"] = model_version
        return self.update_project(project_id, **fields)

    def next_task(self, project_id: int) -> dict[str, Any] | None:
        """The task Label Studio serves this user next (``GET /api/projects/{id}/next/``); None when it has
        none left to serve."""
        try:
            return self.request("GET", f"api/projects/{project_id}/next/", retry=True)
        except StudioError as error:
            if error.status == 404 and "project" not in (error.detail or "").lower():
                return None
            raise

    # ---------------------------------------------------------------- tasks
    def iter_tasks(
        self, project_id: int, labeled: bool | None = None, *, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every task of the project with its ``data``, ``annotations`` and ``predictions``, by ascending id.

        ``labeled``: True for tasks with at least one annotation that was not cancelled (skipped), False for
        the others, None for all. Pages are keyed by task id (``id > last seen``), not numbered, so tasks
        labelled while iterating do not shift the pages and make others be skipped.
        """
        size = int(page_size or self.page_size)
        last_id = 0
        while True:
            items: list[dict[str, Any]] = [
                {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last_id}
            ]
            if labeled is not None:
                # total_annotations counts annotations that were not cancelled.
                items.append(
                    {
                        "filter": "filter:tasks:total_annotations",
                        "operator": "greater" if labeled else "equal",
                        "type": "Number",
                        "value": 0,
                    }
                )
            query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}
            answer = self.request(
                "GET",
                "api/tasks/",
                params={
                    "project": int(project_id),
                    "fields": "all",
                    "page": 1,
                    "page_size": size,
                    "query": json.dumps(query),
                },
            )
            tasks = answer.get("tasks", []) if isinstance(answer, Mapping) else answer
            if not tasks:
                return
            for task in tasks:
                if labeled is None or _labeled(task) == labeled:
                    yield task
            newest = max(int(t["id"]) for t in tasks)
            if newest <= last_id:  # the server ignored the id filter: stop rather than loop forever
                raise StudioError(
                    f"GET {self._url('api/tasks/')}: the task list does not advance past {last_id}"
                )
            last_id = newest
            if len(tasks) < size:
                return

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self.request("GET", f"api/tasks/{int(task_id)}/")

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import tasks (``{"rgb": URL, "thermal": URL}`` each, or ``{"data": {...}, ...}``) in one request;
        returns the created task ids in input order."""
        if not tasks:
            return []
        answer = self._sdk(
            "POST",
            f"api/projects/{project_id}/import",
            lambda o: self.sdk.projects.import_tasks(
                int(project_id), request=[dict(t) for t in tasks], return_task_ids=True, request_options=o
            ),
            retry=False,
        )
        ids = answer.get("task_ids") if isinstance(answer, Mapping) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise StudioError(
                f"POST {self._url(f'api/projects/{project_id}/import')}: expected {len(tasks)} task ids, got "
                f"{_error_text(answer, 300)}"
            )
        return [int(i) for i in ids]

    def add_local_files_storage(
        self,
        project_id: int,
        path: str,
        *,
        title: str = "rgbt-al local files",
        regex_filter: str | None = None,
        use_blob_urls: bool = False,
        sync: bool = False,
    ) -> dict[str, Any]:
        """Connect a local-files storage (``path`` under Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``), so
        tasks may reference ``/data/local-files/?d=<path relative to the document root>``. ``sync`` imports
        its files as tasks (one per file with ``use_blob_urls``; pairs are imported with
        :meth:`import_tasks` instead)."""
        fields: dict[str, Any] = {
            "project": int(project_id),
            "path": str(path),
            "title": title,
            "use_blob_urls": use_blob_urls,
        }
        if regex_filter is not None:
            fields["regex_filter"] = regex_filter
        storage = self._sdk(
            "POST",
            "api/storages/localfiles/",
            lambda o: self.sdk.import_storage.local.create(**fields, request_options=o),
            retry=False,
        )
        if sync:
            storage = self._sdk(
                "POST",
                f"api/storages/localfiles/{storage['id']}/sync",
                lambda o: self.sdk.import_storage.local.sync(int(storage["id"]), request_options=o),
                retry=False,
            )
        return storage

    # ---------------------------------------------------------------- annotations and predictions
    def create_annotation(self, task_id: int, result: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """Annotate a task as the token's user (``fields``: ``was_cancelled``, ``lead_time``...)."""
        known, extra = self._split_fields(self.sdk.annotations.create, fields)
        return self._sdk(
            "POST",
            f"api/tasks/{task_id}/annotations/",
            lambda o: self.sdk.annotations.create(
                int(task_id), result=result, **known, request_options=self._with_body(o, extra)
            ),
            retry=False,
        )

    def list_predictions(
        self, project_id: int | None = None, task_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Predictions of a project and/or a task (all the token's user may see when neither is given)."""
        return self._sdk(
            "GET",
            "api/predictions/",
            lambda o: self.sdk.predictions.list(
                project=int(project_id) if project_id is not None else None,
                task=int(task_id) if task_id is not None else None,
                request_options=o,
            ),
        )

    def import_predictions(self, project_id: int, predictions: Sequence[Mapping[str, Any]]) -> int:
        """Create predictions in bulk (ONE request): ``{task, result, score, model_version}`` each; returns
        how many Label Studio created. Retried on connection errors, 429 and 5xx (``retries`` attempts,
        ``backoff`` doubling), then :class:`StudioError`. A retry after a lost answer may duplicate a page;
        duplicates of one version rank the task the same and go with the version's deletion."""
        if not predictions:
            return 0
        body = [dict(p) for p in predictions]
        answer = self._sdk(
            "POST",
            f"api/projects/{project_id}/import/predictions",
            lambda o: self.sdk.projects.import_predictions(int(project_id), request=body, request_options=o),
            retry=True,
        )
        created = answer.get("created") if isinstance(answer, Mapping) else None
        return int(created) if created is not None else len(body)

    def create_prediction(self, prediction: Mapping[str, Any]) -> dict[str, Any]:
        """Create ONE prediction (``POST /api/predictions/``): ``{task, result, score, model_version}`` and
        ``cluster``, which this route keeps and the bulk :meth:`import_predictions` drops (Label Studio
        1.23.2's ``ImportPredictionsAPI`` builds each prediction from task, result, score and model_version
        only). Retried like :meth:`import_predictions`; a retry after a lost answer may duplicate it."""
        body = dict(prediction)
        known, extra = self._split_fields(self.sdk.predictions.create, body)
        return self._sdk(
            "POST",
            "api/predictions/",
            lambda o: self.sdk.predictions.create(**known, request_options=self._with_body(o, extra)),
            retry=True,
        )

    def update_prediction(self, prediction_id: int, **fields: Any) -> dict[str, Any]:
        """Change fields of one prediction (``PATCH /api/predictions/{id}/``), e.g. its ``cluster``."""
        known, extra = self._split_fields(self.sdk.predictions.update, fields)
        return self._sdk(
            "PATCH",
            f"api/predictions/{prediction_id}/",
            lambda o: self.sdk.predictions.update(
                int(prediction_id), **known, request_options=self._with_body(o, extra)
            ),
            retry=True,
        )

    def model_versions(self, project_id: int) -> dict[str, int]:
        """``{model_version: number of predictions}`` of the project (its own ``model_version`` listed even
        with no predictions)."""
        answer = self.request("GET", f"api/projects/{project_id}/model-versions/")
        return {str(k): int(v) for k, v in (answer or {}).items()}

    def delete_predictions(self, project_id: int, keep_model_versions: set[str]) -> int:
        """Delete the project's predictions whose ``model_version`` is not in ``keep_model_versions``, one
        request per version (``DELETE /api/projects/{id}/model-versions/``); returns how many predictions
        were deleted.

        Label Studio clears the project's ``model_version`` when deleting predictions while that version is an
        ML backend's title; it is restored here when it is one of the kept versions. Predictions without a
        version cannot be deleted this way and are left alone.
        """
        keep = {str(v) for v in keep_model_versions}
        versions = self.model_versions(project_id)
        doomed = [v for v, count in versions.items() if v not in keep and v and count > 0]
        if not doomed:
            return 0
        before = self.get_project(project_id).get("model_version")
        deleted = 0
        for version in doomed:
            answer = self.request(
                "DELETE", f"api/projects/{project_id}/model-versions/", json_body={"model_version": version}
            )
            deleted += int((answer or {}).get("deleted_predictions", 0))
        if before and before in keep and self.get_project(project_id).get("model_version") != before:
            self.set_model_version(project_id, before)
        log.info("project %s: deleted %d predictions of versions %s", project_id, deleted, doomed)
        return deleted

    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int]) -> dict[str, Any]:
        """What the Data Manager's "Retrieve predictions" action does: Label Studio asks the project's ML
        backend to predict the tasks (one ``/predict`` call with all of them) and stores the predictions
        (read them with :meth:`list_predictions`). Returns Label Studio's answer (``processed_items``...)."""
        return (
            self.request(
                "POST",
                "api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": int(project_id)},
                json_body={"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}},
                retry=False,
                timeout=max(self.timeout, 120.0),  # Label Studio waits up to 100 s for the backend's /predict
            )
            or {}
        )

    # ---------------------------------------------------------------- ML backends
    def connect_ml_backend(
        self,
        project_id: int,
        url: str,
        title: str = "rgbt-al",
        *,
        auth_user: str | None = None,
        auth_pass: str | None = None,
        is_interactive: bool = False,
        extra_params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Connect an ML backend to the project (``POST /api/ml``). Label Studio calls its ``/health`` and
        ``/setup`` right away and refuses the connection when they fail; ``extra_params`` go to every
        ``/setup``."""
        fields: dict[str, Any] = {
            "project": int(project_id),
            "url": url,
            "title": title,
            "is_interactive": is_interactive,
        }
        if extra_params is not None:
            fields["extra_params"] = extra_params
        if auth_user is not None:
            fields.update(
                auth_method="BASIC_AUTH", basic_auth_user=auth_user, basic_auth_pass=auth_pass or ""
            )
        return self._sdk(
            "POST",
            "api/ml/",
            lambda o: self.sdk.ml.create(**fields, request_options=o),
            retry=False,
        )

    def update_ml_backend(self, ml_backend_id: int, **fields: Any) -> dict[str, Any]:
        """Change a connection (``PATCH /api/ml/{id}``); Label Studio calls the backend's ``/setup`` again."""
        return self._sdk(
            "PATCH",
            f"api/ml/{ml_backend_id}",
            lambda o: self.sdk.ml.update(int(ml_backend_id), **fields, request_options=o),
            retry=False,
        )

    def set_ml_backend_auth(self, ml_backend_id: int, auth_user: str, auth_pass: str) -> dict[str, Any]:
        """Give an existing ML backend connection basic-auth credentials."""
        return self.update_ml_backend(
            ml_backend_id, auth_method="BASIC_AUTH", basic_auth_user=auth_user, basic_auth_pass=auth_pass
        )

    def list_webhooks(self, project_id: int) -> list[dict[str, Any]]:
        def call(options: RequestOptions) -> Any:
            return self.sdk.webhooks.list(project=str(project_id), request_options=options)

        return self._sdk("GET", "api/webhooks/", call)

    def set_webhook_headers(self, webhook_id: int, headers: Mapping[str, str]) -> dict[str, Any]:
        """Replace a webhook's extra request headers (``PATCH /api/webhooks/{id}/``)."""
        return self._sdk(
            "PATCH",
            f"api/webhooks/{webhook_id}/",
            lambda o: self.sdk.webhooks.update(int(webhook_id), headers=dict(headers), request_options=o),
        )

    def list_ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        return self._sdk(
            "GET", "api/ml/", lambda o: self.sdk.ml.list(project=int(project_id), request_options=o)
        )

    def train(self, ml_backend_id: int) -> None:
        """Ask Label Studio to start training the ML backend (it sends the backend ``/train``)."""
        self._sdk(
            "POST",
            f"api/ml/{ml_backend_id}/train",
            lambda o: self.sdk.ml.train(int(ml_backend_id), request_options=o),
            retry=False,
        )
