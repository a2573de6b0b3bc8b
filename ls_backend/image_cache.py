"""The on-disk image cache: fetched bytes kept so pool scoring, ``/predict`` and training rounds do not
download the same image again; bounded in size, shared safely by threads and processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

__all__ = ["DiskCache"]


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
    """A forked child must not wait on locks that other threads of the parent held at the fork."""
    DiskCache._instances = {}
    DiskCache._instances_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
