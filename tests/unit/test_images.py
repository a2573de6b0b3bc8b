"""The image fetcher against real HTTP servers on 127.0.0.1 (no mocked HTTP).

Two names of the same machine stand for two hosts: ``127.0.0.1`` (allowed) and ``localhost`` (not allowed).
A second server plays Label Studio: it checks the Authorization header and redirects presign requests to a
third one, the bucket.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import logging
import multiprocessing
import os
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from ls_backend.image_cache import DiskCache
from ls_backend.images import (
    MAX_REDIRECTS,
    BadImageURL,
    FetchError,
    ForbiddenImageURL,
    ImageFetcher,
    ImageNotFound,
    ImageTooLarge,
    NotAnImage,
    PairSizeMismatch,
    UpstreamError,
)
from ls_backend.label_config import schema_from_config
from ls_backend.studio import StudioClient
from ls_backend.url_policy import host_allowed, is_blocked_address

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # shaped like a legacy token
SCHEMA = schema_from_config(
    '<View><Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'
    '<RectangleLabels name="l" toName="rgb"><Label value="person"/></RectangleLabels></View>'
)


def png(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR claiming ``width x height`` pixels, and nothing to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


# ------------------------------------------------------------------------------------------ servers
Reply = tuple[int, dict[str, str], bytes] | Callable[["Handler"], None]


@dataclass
class Server:
    routes: dict[str, Reply] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    auth: list[str | None] = field(default_factory=list)
    require_token: bool = False
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        state.hits[path] += 1
        state.auth.append(self.headers.get("Authorization"))
        if state.require_token and self.headers.get("Authorization") != f"Token {TOKEN}":
            self.reply(401, {}, b'{"detail": "Authentication credentials were not provided."}')
            return
        reply = state.routes.get(path)
        if reply is None:
            self.reply(404, {}, b"not found")
        elif callable(reply):
            reply(self)
        else:
            self.reply(*reply)

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def make_server() -> Iterator[Callable[[], Server]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start() -> Server:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        state = Server(port=httpd.server_address[1])
        httpd.state = state  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(make_server: Callable[[], Server]) -> Server:
    return make_server()


def studio_client(base_url: str, token: str = TOKEN) -> StudioClient:
    """The real Label Studio client (legacy token): the fetcher resolves URLs and signs requests with it."""
    return StudioClient(base_url, token, retries=1)


def fetcher(tmp_path: Path | None = None, **kwargs) -> ImageFetcher:
    options = {
        "allowed_hosts": ["127.0.0.1"],
        "max_bytes": 1 << 20,
        "max_pixels": 10_000_000,
        "timeout": 5.0,
        "cache_dir": None,
    }
    options.update(kwargs)
    return ImageFetcher(options.pop("studio", None), **options)


# ------------------------------------------------------------------------------------------ hosts
@pytest.mark.parametrize(
    ("url", "allowed", "expected"),
    [
        ("http://images.example.com/a.png", ["images.example.com"], True),
        ("https://IMAGES.example.com:8443/a.png", ["images.example.com"], True),
        ("http://images.example.com:8080/a.png", ["images.example.com:8080"], True),
        ("http://images.example.com:8081/a.png", ["images.example.com:8080"], False),
        ("http://a.b.example.com/a.png", ["*.example.com"], True),
        ("http://example.com/a.png", ["*.example.com"], False),
        ("http://evilexample.com/a.png", ["*.example.com"], False),
        ("http://example.com.evil.org/a.png", ["example.com"], False),
        ("http://[::1]:9000/a.png", ["[::1]:9000"], True),
        ("http://[::1]:9000/a.png", ["::1"], True),
        ("http://user@example.com@evil.org/a.png", ["example.com"], False),
        ("ftp://example.com/a.png", ["example.com"], False),
    ],
)
def test_host_allowed(url: str, allowed: list[str], expected: bool) -> None:
    assert host_allowed(url, allowed) is expected


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("169.254.169.254", True),
        ("169.254.1.2", True),
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fd00:ec2::254", True),
        ("::ffff:169.254.169.254", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("8.8.8.8", False),
        ("::1", False),
    ],
)
def test_blocked_addresses(address: str, blocked: bool) -> None:
    assert is_blocked_address(address) is blocked


# ------------------------------------------------------------------------------------------ http(s)
def test_allowed_host_ok(server: Server) -> None:
    body = png(8, 6)
    server.routes["/a.png"] = (200, {"Content-Type": "image/png"}, body)
    assert fetcher().fetch_bytes(server.url("/a.png")) == body


def test_disallowed_host_403(server: Server) -> None:
    server.routes["/a.png"] = (200, {}, png(8, 6))
    with pytest.raises(ForbiddenImageURL, match="not in ALLOWED_IMAGE_HOSTS") as info:
        fetcher().fetch_bytes(server.url("/a.png", host="localhost"))
    assert info.value.status == 403
    assert server.hits["/a.png"] == 0


def test_redirects_are_checked_hop_by_hop(server: Server) -> None:
    server.routes["/a.png"] = (200, {}, png(8, 6))
    server.routes["/to-allowed"] = (302, {"Location": "/a.png"}, b"")
    server.routes["/to-other-host"] = (302, {"Location": server.url("/a.png", host="localhost")}, b"")
    server.routes["/to-metadata"] = (307, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    server.routes["/to-file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    images = fetcher(allowed_hosts=["127.0.0.1", "169.254.169.254"])
    assert images.fetch_bytes(server.url("/to-allowed")) == png(8, 6)
    with pytest.raises(ForbiddenImageURL, match="redirect to 'localhost' refused"):
        images.fetch_bytes(server.url("/to-other-host"))
    with pytest.raises(ForbiddenImageURL, match=r"blocked address 169\.254\.169\.254"):
        images.fetch_bytes(server.url("/to-metadata"))
    with pytest.raises(ForbiddenImageURL, match="non-http"):
        images.fetch_bytes(server.url("/to-file"))
    with pytest.raises(UpstreamError, match=f"more than {MAX_REDIRECTS} redirects"):
        images.fetch_bytes(server.url("/loop"))
    assert server.hits["/loop"] == MAX_REDIRECTS + 1
    assert server.hits["/a.png"] == 1  # the refused redirect target was never requested


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/"]
)
def test_link_local_refused_even_when_allowed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[object] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        connects.append(address)
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(ForbiddenImageURL, match="blocked address"):
        fetcher(allowed_hosts=["169.254.169.254", "::ffff:169.254.169.254"]).fetch_bytes(url)
    assert connects == []  # refused before any connection attempt


def test_host_names_resolving_to_link_local_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one stand-in of this file: DNS, so that a name resolves to the metadata address.
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host == "metadata.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ForbiddenImageURL, match=r"metadata\.example\.test resolves to the blocked address"):
        fetcher(allowed_hosts=["*.example.test"]).fetch_bytes(
            "http://metadata.example.test/latest/meta-data/"
        )


def test_oversize_declared_length_413_without_reading(server: Server) -> None:
    sent = {"bytes": 0}

    def huge(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1 << 30))
        handler.end_headers()
        try:
            for _ in range(1 << 14):
                handler.wfile.write(b"\0" * 65536)
                sent["bytes"] += 65536
        except OSError:
            pass

    server.routes["/huge"] = huge
    with pytest.raises(ImageTooLarge, match="1073741824 bytes") as info:
        fetcher().fetch_bytes(server.url("/huge"))
    assert info.value.status == 413


def test_oversize_streamed_body_413_reads_at_most_the_limit(server: Server) -> None:
    sent = {"bytes": 0, "done": threading.Event()}

    def endless(handler: Handler) -> None:
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: HTTP/1.0 body until the connection closes
        try:
            for _ in range(1 << 14):  # up to 1 GiB
                handler.wfile.write(b"\0" * 65536)
                sent["bytes"] += 65536
        except OSError:
            pass
        finally:
            sent["done"].set()

    server.routes["/endless"] = endless
    with pytest.raises(ImageTooLarge, match="more than the limit"):
        fetcher(max_bytes=256 * 1024).fetch_bytes(server.url("/endless"))
    assert sent["done"].wait(5)
    assert sent["bytes"] < 64 * (
        1 << 20
    )  # the client hung up long before 1 GiB (socket buffers hold a few MiB)


def test_not_found_and_upstream_errors(server: Server) -> None:
    server.routes["/boom"] = (500, {}, b"internal error")
    with pytest.raises(ImageNotFound) as info:
        fetcher().fetch_bytes(server.url("/missing.png"))
    assert info.value.status == 404 and "missing.png" in str(info.value)
    with pytest.raises(UpstreamError, match="HTTP 500") as info:
        fetcher().fetch_bytes(server.url("/boom"))
    assert info.value.status == 502


def test_unreachable_host_and_timeout_are_502(server: Server) -> None:
    def slow(handler: Handler) -> None:
        time.sleep(1.5)
        with contextlib.suppress(OSError):  # the client gave up long ago
            handler.reply(200, {}, b"late")

    server.routes["/slow"] = slow
    with pytest.raises(UpstreamError, match="timed out"):
        fetcher(timeout=0.3).fetch_bytes(server.url("/slow"))
    closed = server.url("/a.png").replace(str(server.port), "1")  # nothing listens on port 1
    with pytest.raises(UpstreamError, match="cannot reach"):
        fetcher().fetch_bytes(closed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "non-empty string"),
        ("ftp://127.0.0.1/a.png", "unsupported scheme"),
        ("javascript:alert(1)", "unsupported scheme"),
        ("http://127.0.0.1/a\n.png", "control characters"),
        ("http:///a.png", "no valid host"),
    ],
)
def test_bad_urls_400(url: str, message: str) -> None:
    with pytest.raises(BadImageURL, match=message) as info:
        fetcher().fetch_bytes(url)
    assert info.value.status == 400


def test_query_strings_are_not_leaked_into_messages(server: Server) -> None:
    with pytest.raises(ImageNotFound) as info:
        fetcher().fetch_bytes(server.url("/x.png?X-Amz-Signature=secret"))
    assert "secret" not in str(info.value)


# ------------------------------------------------------------------------------------------ decoding
def test_non_image_415_and_not_cached(server: Server, tmp_path: Path) -> None:
    server.routes["/page.png"] = (200, {"Content-Type": "text/html"}, b"<html>login</html>")
    images = fetcher(cache_dir=tmp_path / "cache")
    for expected_hits in (1, 2):
        with pytest.raises(NotAnImage) as info:
            images.load_image(server.url("/page.png"), None, thermal=False)
        assert info.value.status == 415
        assert server.hits["/page.png"] == expected_hits  # a body that did not decode is not served again


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (4_000, 3_000)])
def test_pixel_bomb_refused(server: Server, width: int, height: int) -> None:
    # 10^10 pixels, and 12 MP: under PIL's own bomb guard but over this fetcher's max_pixels of 10 MP.
    server.routes["/bomb.png"] = (200, {}, png_header_only(width, height))
    with pytest.raises(ImageTooLarge) as info:
        fetcher(max_pixels=10_000_000).load_image(server.url("/bomb.png"), None, thermal=True)
    assert info.value.status == 413


def test_load_pair_and_size_mismatch(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.routes["/rgb.png"] = (200, {}, png(8, 6))
    server.routes["/thermal.png"] = (200, {}, png(8, 6, "L"))
    server.routes["/small-thermal.png"] = (200, {}, png(4, 3, "L"))
    data = {"rgb": server.url("/rgb.png"), "thermal": server.url("/thermal.png")}
    rgb, thermal = fetcher().load_pair(data, SCHEMA, 1)
    assert (rgb.shape, rgb.dtype, thermal.shape, thermal.dtype) == ((6, 8, 3), np.uint8, (6, 8), np.uint8)

    data["thermal"] = server.url("/small-thermal.png")
    with caplog.at_level(logging.WARNING, logger="ls_backend.images"):
        rgb, thermal = fetcher().load_pair(data, SCHEMA, 2)
    assert thermal.shape == (6, 8)
    assert "task 2: RGB is 8x6 but thermal is 4x3" in caplog.text
    with pytest.raises(PairSizeMismatch, match="RGB is 8x6 but thermal is 4x3") as info:
        fetcher(reject_mismatched=True).load_pair(data, SCHEMA, 3)
    assert info.value.status == 422

    with pytest.raises(BadImageURL, match="no image URL under 'thermal'"):
        fetcher().load_pair({"rgb": data["rgb"]}, SCHEMA, 4)


# ------------------------------------------------------------------------------------------ local files
@pytest.fixture
def local_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png(4, 4))
    (tmp_path / "secret.png").write_bytes(b"outside")
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "inside-link.png").symlink_to(root / "sub" / "a.png")
    return root


def test_local_files_under_the_root(local_tree: Path) -> None:
    images = fetcher(local_root=local_tree)
    expected = png(4, 4)
    assert images.fetch_bytes(str(local_tree / "sub" / "a.png")) == expected
    assert images.fetch_bytes((local_tree / "sub" / "a.png").as_uri()) == expected
    assert images.fetch_bytes("sub/a.png") == expected
    assert images.fetch_bytes(str(local_tree / "inside-link.png")) == expected
    with pytest.raises(ImageNotFound):
        images.fetch_bytes(str(local_tree / "sub" / "missing.png"))


@pytest.mark.parametrize(
    "path",
    [
        "{root}/../secret.png",
        "{root}/sub/../../secret.png",
        "../secret.png",
        "{root}/escape.png",  # a symlink inside the root pointing out of it
        "file://{root}/../secret.png",
        "file://{root}/%2e%2e/secret.png",
        "/etc/passwd",
    ],
)
def test_traversal_and_symlink_escape_refused(local_tree: Path, path: str) -> None:
    with pytest.raises(ForbiddenImageURL, match="outside LOCAL_FILES_ROOT") as info:
        fetcher(local_root=local_tree).fetch_bytes(path.format(root=local_tree))
    assert info.value.status == 403


def test_local_files_refused_without_a_root(local_tree: Path) -> None:
    with pytest.raises(ForbiddenImageURL, match="LOCAL_FILES_ROOT is not set"):
        fetcher().fetch_bytes(str(local_tree / "sub" / "a.png"))
    with pytest.raises(ForbiddenImageURL, match="other hosts"):
        fetcher(local_root=local_tree).fetch_bytes("file://evil.org/etc/passwd")


def test_local_file_too_large(local_tree: Path) -> None:
    (local_tree / "big.png").write_bytes(b"\0" * 2048)
    with pytest.raises(ImageTooLarge):
        fetcher(local_root=local_tree, max_bytes=1024).fetch_bytes(str(local_tree / "big.png"))


# ------------------------------------------------------------------------------------------ cache
def test_cache_hit_avoids_a_second_request(server: Server, tmp_path: Path) -> None:
    body = png(8, 6)
    server.routes["/a.png"] = (200, {}, body)
    cache = tmp_path / "cache"
    assert fetcher(cache_dir=cache).fetch_bytes(server.url("/a.png")) == body
    assert fetcher(cache_dir=cache).fetch_bytes(server.url("/a.png")) == body  # a new fetcher, same cache
    assert server.hits["/a.png"] == 1
    assert not list(cache.rglob(".tmp-*"))


def test_concurrent_fetches_of_one_url(server: Server, tmp_path: Path) -> None:
    body = png(64, 48)

    def slow_image(handler: Handler) -> None:
        time.sleep(0.2)  # long enough for every thread to arrive while the first download runs
        handler.reply(200, {}, body)

    server.routes["/slow.png"] = slow_image
    images = fetcher(cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: images.fetch_bytes(server.url("/slow.png")), range(32)))
    assert all(r == body for r in results)
    assert server.hits["/slow.png"] == 1


def _fetch_in_child(args: tuple[str, str]) -> bytes:
    url, cache_dir = args
    return fetcher(cache_dir=Path(cache_dir)).fetch_bytes(url)


def test_concurrent_processes_share_the_cache(server: Server, tmp_path: Path) -> None:
    body = png(32, 24, seed=5)
    server.routes["/shared.png"] = (200, {}, body)
    jobs = [(server.url("/shared.png"), str(tmp_path / "cache"))] * 8
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_fetch_in_child, jobs)
    assert results == [body] * 8
    assert 1 <= server.hits["/shared.png"] <= 4  # at most one download per process, usually one in all
    assert fetcher(cache_dir=tmp_path / "cache").fetch_bytes(server.url("/shared.png")) == body
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_concurrent_writers_never_expose_partial_files(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1 << 30)
    key = DiskCache.key("http://example.com/a.png")
    payloads = [bytes([i]) * (200_000 + i) for i in range(8)]
    seen: list[bytes | None] = []

    def write(payload: bytes) -> None:
        for _ in range(5):
            cache.put(key, payload)
            seen.append(cache.get(key))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, payloads))
    assert all(value in payloads for value in seen)
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1000)
    keys = [DiskCache.key(str(i)) for i in range(4)]
    now = time.time()
    for i, key in enumerate(keys[:3]):
        cache.put(key, b"x" * 300)
        path = cache.path(key)
        os.utime(path, (now - 100 + i, now - 100 + i))  # 0 oldest, 2 newest
    assert cache.get(keys[0]) is not None  # a hit makes 0 the most recently used
    cache.put(keys[3], b"y" * 300)  # 1200 > 1000: evict down to 900
    assert cache.get(keys[1]) is None
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))


# ------------------------------------------------------------------------------------------ Label Studio
@pytest.fixture
def studio_server(make_server: Callable[[], Server]) -> Server:
    studio = make_server()
    studio.require_token = True
    return studio


def test_studio_relative_and_absolute_urls_carry_the_token(studio_server: Server) -> None:
    body = png(8, 6)
    studio_server.routes["/data/upload/1/a.png"] = (200, {}, body)
    studio_server.routes["/data/local-files/"] = (200, {}, body)
    images = fetcher(studio=studio_client(studio_server.url("")), allowed_hosts=[])
    assert images.fetch_bytes("/data/upload/1/a.png") == body
    assert images.fetch_bytes("/data/local-files/?d=images/a.png") == body
    # Absolute URLs on Label Studio's host need no ALLOWED_IMAGE_HOSTS entry.
    assert images.fetch_bytes(studio_server.url("/data/upload/1/a.png")) == body
    assert set(studio_server.auth) == {f"Token {TOKEN}"}


def test_studio_token_refused_is_502(studio_server: Server) -> None:
    studio_server.routes["/data/upload/1/a.png"] = (200, {}, png(8, 6))
    images = fetcher(studio=studio_client(studio_server.url(""), "wrong"))
    with pytest.raises(UpstreamError, match="HTTP 401"):
        images.fetch_bytes("/data/upload/1/a.png")


def test_studio_login_redirect_and_dot_segments(studio_server: Server) -> None:
    studio_server.require_token = False
    studio_server.routes["/data/upload/1/a.png"] = (
        302,
        {"Location": "/user/login/?next=/data/upload/1/a.png"},
        b"",
    )
    images = fetcher(studio=studio_client(studio_server.url("")))
    with pytest.raises(UpstreamError, match="login page"):
        images.fetch_bytes("/data/upload/1/a.png")
    with pytest.raises(BadImageURL, match="dot segments"):
        images.fetch_bytes("/data/upload/../../api/users")
    assert studio_server.hits["/user/login/"] == 0


def test_studio_urls_without_a_studio_connection() -> None:
    with pytest.raises(UpstreamError, match="no Label Studio connection"):
        fetcher().fetch_bytes("/data/upload/1/a.png")


def test_cloud_uri_through_presign_redirect(make_server: Callable[[], Server], studio_server: Server) -> None:
    # The bucket boundary: a plain HTTP server on another host name, reached only by Label Studio's redirect.
    bucket = make_server()
    body = png(8, 6, seed=3)
    bucket.routes["/bucket/rgb/0001.png"] = (200, {}, body)
    presigned = bucket.url("/bucket/rgb/0001.png?X-Amz-Signature=abc", host="localhost")
    fileuris: list[str] = []

    def presign(handler: Handler) -> None:
        fileuri = parse_qs(urlsplit(handler.path).query)["fileuri"][0]
        fileuris.append(base64.urlsafe_b64decode(fileuri).decode())
        handler.reply(303, {"Location": presigned}, b"")

    studio_server.routes["/tasks/42/presign/"] = presign
    images = fetcher(studio=studio_client(studio_server.url("")), allowed_hosts=[])
    assert images.fetch_bytes("s3://bucket/rgb/0001.png", task_id=42) == body
    assert fileuris == ["s3://bucket/rgb/0001.png"]
    assert bucket.auth == [None]  # Label Studio's token never leaves Label Studio's host
    with pytest.raises(BadImageURL, match="needs the task id"):
        images.fetch_bytes("gs://bucket/a.png")


def test_cloud_uri_cached_by_uri_not_by_presigned_url(
    make_server: Callable[[], Server], studio_server: Server, tmp_path: Path
) -> None:
    bucket = make_server()
    bucket.routes["/a.png"] = (200, {}, png(8, 6))
    counter = iter(range(100))

    def presign(handler: Handler) -> None:
        signed = bucket.url(f"/a.png?sig={next(counter)}", host="localhost")  # a new signature every time
        handler.reply(303, {"Location": signed}, b"")

    studio_server.routes["/tasks/1/presign/"] = presign
    images = fetcher(studio=studio_client(studio_server.url("")), cache_dir=tmp_path / "cache")
    for _ in range(3):
        images.fetch_bytes("azure-blob://container/a.png", task_id=1)
    assert bucket.hits["/a.png"] == 1


def test_errors_are_fetch_errors_with_statuses() -> None:
    for error, status in [
        (BadImageURL, 400),
        (ForbiddenImageURL, 403),
        (ImageNotFound, 404),
        (ImageTooLarge, 413),
        (NotAnImage, 415),
        (PairSizeMismatch, 422),
        (UpstreamError, 502),
    ]:
        assert issubclass(error, FetchError) and issubclass(error, ValueError)
        assert error.status == status
