"""Call locks: one holder at a time per name, across the threads and processes of one machine (files under
var/, filelock) or of several machines (Redis, redis-py's Lock).

`CallLocks.hold(name, timeout)` is the whole contract (tests/test_coordination.py runs it against both): it
waits at most `timeout` seconds, then raises LockTimeout. A holder that dies frees the lock: the operating system
drops a dead process's file lock; a Redis lock expires after `expiry` seconds, which the gateway sets longer than
any holder's deadline, so a live holder never loses it.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import filelock
import redis


class LockTimeout(Exception):
    """The lock was not free within the wait allowed."""


def _file_name(name: str) -> str:
    """A file name for any lock name: a digest, so URLs and codes need no escaping."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:32] + ".lock"


class CallLocks(abc.ABC):
    """Named mutual exclusion with a bounded wait."""

    @abc.abstractmethod
    def hold(self, name: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Hold the lock `name` for the block; raise LockTimeout if it is not free within `timeout` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the locks hold open."""


class FileCallLocks(CallLocks):
    """Locks as files in one folder, for every process of one machine."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, filelock.FileLock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, name: str) -> filelock.FileLock:
        """One FileLock per name, kept: thread-local, so each thread flocks its own descriptor and threads of one
        process exclude each other as processes do."""
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = filelock.FileLock(self.folder / _file_name(name), thread_local=True,
                                                             is_singleton=False)
            return lock

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        """flock on the name's file, polling until `timeout`."""
        lock = self._lock_for(name)
        try:
            lock.acquire(timeout=max(timeout, 0), poll_interval=0.005)
        except filelock.Timeout:
            raise LockTimeout(f"{name} was held by another call for {timeout:g} s") from None
        try:
            yield
        finally:
            lock.release()

    def close(self) -> None:
        """Nothing stays open between calls."""


class RedisCallLocks(CallLocks):
    """Locks in Redis, for every gateway process on every machine that shares it."""

    def __init__(self, url: str, *, expiry: float, prefix: str = "gateway:locks:") -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self.expiry = expiry
        self.prefix = prefix

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        """redis-py's Lock: SET NX PX with a token; released only by its holder, expired if the holder died."""
        lock = self.client.lock(self.prefix + name, timeout=self.expiry, sleep=0.005, blocking=True,
                                blocking_timeout=max(timeout, 0.001))
        if not lock.acquire():
            raise LockTimeout(f"{name} was held by another call for {timeout:g} s")
        try:
            yield
        finally:
            with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile: nothing left to free
                lock.release()

    def close(self) -> None:
        """Close the Redis connection pool."""
        self.client.close()
