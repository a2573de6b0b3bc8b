"""Where the backend may connect to fetch an image: the URL policy against SSRF.

* :func:`host_allowed`: the ``ALLOWED_IMAGE_HOSTS`` match (``host``, ``host:port``, ``*.domain``).
* :func:`is_blocked_address` and :func:`guarded_session`: connections to link-local addresses (169.254.0.0/16,
  fe80::/10, where cloud metadata services live) and known metadata addresses are refused, checked on the
  resolved addresses before connecting and on the connected peer (so DNS rebinding cannot slip through);
  environment proxies are not used, so the connected peer is the real destination.
* :func:`origin`: (scheme, host, port) of a URL, what tokens and redirects are compared by.
* :func:`redact_url`: a URL as messages and logs may show it (no user:password, no presigned query).

:class:`ls_backend.images.ImageFetcher` applies the policy on every request and every redirect hop.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "BlockedAddress",
    "guarded_session",
    "host_allowed",
    "is_blocked_address",
    "is_windows_path",
    "origin",
    "redact_url",
]

# Metadata services outside the link-local ranges: AWS over IPv6 (fd00:ec2::254), Alibaba Cloud.
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_USERINFO = re.compile(r"(//)[^/?#]*@")


def redact_url(url: str) -> str:
    """The URL for messages and logs: user and password (``user:pass@host``) and query strings dropped
    (presigned URLs carry credentials), except Label Studio's own ``d=`` / ``fileuri=`` parameters, which name
    the file."""
    url = _USERINFO.sub(r"\1***@", url, count=1)
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


class BlockedAddress(Exception):
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
                raise BlockedAddress(host, str(info[4][0]))
        sock = super()._new_conn()  # type: ignore[misc]
        peer = str(sock.getpeername()[0])
        if is_blocked_address(peer):  # DNS answered differently the second time
            sock.close()
            raise BlockedAddress(host, peer)
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


def guarded_session() -> requests.Session:
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


def origin(url: str) -> tuple[str, str, int] | None:
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
    url_origin = origin(url)
    if url_origin is None:
        return False
    _, host, port = url_origin
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


def is_windows_path(url: str) -> bool:
    # "C:\images\a.png" parses with scheme "c": it is a local path, not a URL.
    return len(url) > 2 and url[0].isalpha() and url[1] == ":" and url[2] in "\\/"


def _after_fork_in_child() -> None:
    """A forked child (an RQ work horse) must not reuse its parent's pooled sockets."""
    global _sessions
    _sessions = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
