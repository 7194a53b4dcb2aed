"""Call locks: one holder at a time per name, across the threads and processes of one machine (files under
var/, flock) or of several machines (Redis, redis-py's Lock).

`CallLocks.hold(name, timeout)` is the whole contract (tests/test_coordination.py runs it against both): it
waits at most `timeout` seconds, then raises LockTimeout. A holder that dies frees the lock: the operating system
drops a dead process's file lock; a Redis lock expires after `expiry` seconds, which the gateway sets longer than
any holder's deadline, so a live holder never loses it. Both poll for a held lock, so within a process the threads
wait their turn on a threading lock first and only one of them polls.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis


class LockTimeout(Exception):
    """The lock was not free within the wait allowed."""


def _file_name(name: str) -> str:
    """A file name for any lock name: a digest, so URLs and codes need no escaping."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:32] + ".lock"


class CallLocks(abc.ABC):
    """Named mutual exclusion with a bounded wait."""

    def __init__(self) -> None:
        self._turns: dict[str, threading.Lock] = {}
        self._turns_pid = os.getpid()
        self._turns_guard = threading.Lock()

    @contextlib.contextmanager
    def _turn(self, name: str, timeout: float) -> Iterator[float]:
        """This process's turn at `name`, before the shared lock: the process's threads wait for one another on a
        threading lock, which costs nothing while it waits, so only the thread whose turn it is polls the shared one
        (64 threads polling a held lock every 5 ms had doubled the CPU time of an Ongoing request, bench section
        2). Yields the seconds left of `timeout`; raises LockTimeout when the turn does not come in time."""
        deadline = time.monotonic() + max(timeout, 0)
        with self._turns_guard:
            if self._turns_pid != os.getpid():  # a forked child: its parent's locks are not its own
                self._turns, self._turns_pid = {}, os.getpid()
            turn = self._turns.setdefault(name, threading.Lock())
        if not turn.acquire(timeout=max(timeout, 0)):
            raise LockTimeout(f"{name} was held by another call for {timeout:g} s")
        try:
            yield max(deadline - time.monotonic(), 0.0)
        finally:
            turn.release()

    @abc.abstractmethod
    def hold(self, name: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Hold the lock `name` for the block; raise LockTimeout if it is not free within `timeout` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the locks hold open."""


class FileCallLocks(CallLocks):
    """Locks as files in one folder, for every process of one machine: `flock` on a descriptor each thread keeps.

    flock locks belong to an open file, so each thread opens the lock's file once and keeps it (threads of one
    process then exclude each other as processes do), and a child process after a fork opens its own rather than
    share its parent's. The operating system drops the locks of a process that dies. This is filelock's core
    without its per-call bookkeeping, which cost a backend call about 0.1 ms (bench section 7).
    """

    POLL_SECONDS = 0.005

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._opened: list[tuple[int, int]] = []  # (process id, descriptor), to close them all
        self._guard = threading.Lock()

    def _descriptor(self, name: str) -> int:
        """This thread's descriptor of the name's file (opened again in a child process)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid, local.descriptors = os.getpid(), {}
        descriptor = local.descriptors.get(name)
        if descriptor is None:
            descriptor = os.open(self.folder / _file_name(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            local.descriptors[name] = descriptor
            with self._guard:
                self._opened.append((os.getpid(), descriptor))
        return descriptor

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        """This process's turn, then flock on the name's file, polling until `timeout`."""
        with self._turn(name, timeout) as left:
            descriptor = self._descriptor(name)
            deadline = time.monotonic() + left
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{name} was held by another call for {timeout:g} s") from None
                    time.sleep(self.POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the descriptors this process opened."""
        with self._guard:
            opened, self._opened = self._opened, []
        for pid, descriptor in opened:
            if pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(descriptor)
        self._local = threading.local()


class RedisCallLocks(CallLocks):
    """Locks in Redis, for every gateway process on every machine that shares it."""

    def __init__(self, url: str, *, expiry: float, prefix: str = "gateway:locks:") -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self.expiry = expiry
        self.prefix = prefix

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        """This process's turn, then redis-py's Lock: SET NX PX with a token; released only by its holder, expired if
        the holder died."""
        with self._turn(name, timeout) as left:
            lock = self.client.lock(self.prefix + name, timeout=self.expiry, sleep=0.005, blocking=True,
                                    blocking_timeout=max(left, 0.001))
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
