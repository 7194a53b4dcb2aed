"""Call locks: one holder at a time per name, across the threads and processes of one machine (files under
var/, flock) or of several machines (Redis, redis-py's Lock).

`CallLocks.hold(name, timeout)` is the whole contract (tests/test_coordination.py runs it against both): it
waits at most `timeout` seconds, then raises LockTimeout; a lock store that cannot be used when the lock is taken
raises LockUnavailable (nothing has run yet). Releasing is bookkeeping after the block's work
(gateway/bookkeeping.py): a release that fails is counted and logged, never raised, so the block's outcome stands.
A holder that dies frees the lock: the operating system drops a dead process's file lock; a Redis lock expires
after `expiry` seconds, which the gateway sets longer than any holder's deadline, so a live holder never loses it.
Both poll for a held lock, so within a process the threads wait their turn on a threading lock first and only one
of them polls.
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
import redis.lock

from gateway.bookkeeping import STORE_ERRORS, note_failure
from gateway.config import StoreSettings
from gateway.stores import redis_client


class LockTimeout(Exception):
    """The lock was not free within the wait allowed."""


class LockUnavailable(Exception):
    """The lock's store (the lock files' folder, Redis) could not be used to take the lock."""

    def __init__(self, store: str, error: BaseException) -> None:
        super().__init__(f"the call locks' store ({store}) could not be used: {type(error).__name__}")
        self.store = store


def _release_failed(name: str, error: BaseException) -> None:
    """A lock that could not be released: counted and logged; it frees itself when its holder's process ends (a
    file lock) or when it expires (a Redis lock)."""
    note_failure("call_lock", error, f"the call lock {name!r} was not released (it frees itself when it expires or "
                 "its process ends); the call's outcome stands")


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
    """Locks as files in one folder, for every process of one machine: `flock` on a descriptor the process keeps.

    flock locks belong to an open file, so each process opens a lock's file once and keeps it — one descriptor per
    name, whatever its thread count: its threads take turns at a name first (CallLocks._turn), so only one of them
    at a time takes the flock — and a child process after a fork opens its own rather than share its parent's. The
    operating system drops the locks of a process that dies. This is filelock's core without its per-call
    bookkeeping, which cost a backend call about 0.1 ms (bench section 7).
    """

    POLL_SECONDS = 0.005

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._descriptors: dict[str, int] = {}  # name -> this process's descriptor of its file
        self._descriptors_pid = os.getpid()
        self._opened: list[tuple[int, int]] = []  # (process id, descriptor), to close them all
        self._guard = threading.Lock()

    def _descriptor(self, name: str) -> int:
        """This process's descriptor of the name's file (opened again in a child process)."""
        with self._guard:
            if self._descriptors_pid != os.getpid():
                self._descriptors, self._descriptors_pid = {}, os.getpid()
            descriptor = self._descriptors.get(name)
            if descriptor is None:
                descriptor = os.open(self.folder / _file_name(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._descriptors[name] = descriptor
                self._opened.append((os.getpid(), descriptor))
        return descriptor

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        """This process's turn, then flock on the name's file, polling until `timeout`."""
        with self._turn(name, timeout) as left:
            deadline = time.monotonic() + left
            try:
                descriptor = self._descriptor(name)
                while True:
                    try:
                        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise LockTimeout(f"{name} was held by another call for {timeout:g} s") from None
                        time.sleep(self.POLL_SECONDS)
            except OSError as error:
                raise LockUnavailable("lock files", error) from error
            try:
                yield
            finally:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
                except OSError as error:
                    _release_failed(name, error)

    def close(self) -> None:
        """Close the descriptors this process opened."""
        with self._guard:
            opened, self._opened, self._descriptors = self._opened, [], {}
        for pid, descriptor in opened:
            if pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(descriptor)


class RedisCallLocks(CallLocks):
    """Locks in Redis, for every gateway process on every machine that shares it.

    A lock held costs two round trips, which is nearly all its cost: SET NX PX with the holder's token to take it,
    and redis-py's Lua script to release it only if the token is still the holder's (a plain DEL could free a
    lock that expired and another holder took). Each process keeps one redis-py Lock per name, made once: only the
    thread whose turn it is at the name uses it, so its token needs no thread-local storage.
    """

    POLL_SECONDS = 0.005

    def __init__(self, url: str, *, expiry: float, prefix: str = "gateway:locks:",
                 stores: StoreSettings | None = None) -> None:
        super().__init__()
        self.client = redis_client(url, stores, store="call locks")
        self.expiry = expiry
        self.prefix = prefix
        self._locks: dict[str, redis.lock.Lock] = {}
        self._locks_pid = os.getpid()

    def _lock(self, name: str) -> redis.lock.Lock:
        """This process's redis-py Lock of `name` (made again in a child process); used under the name's turn."""
        if self._locks_pid != os.getpid():  # a forked child: its parent's locks (and their tokens) are not its own
            self._locks, self._locks_pid = {}, os.getpid()
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = self.client.lock(self.prefix + name, timeout=self.expiry,
                                                        sleep=self.POLL_SECONDS, thread_local=False)
        return lock

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float) -> Iterator[None]:
        """This process's turn, then redis-py's Lock: SET NX PX with a token; released only by its holder, expired if
        the holder died."""
        with self._turn(name, timeout) as left:
            lock = self._lock(name)
            try:
                acquired = lock.acquire(blocking=True, blocking_timeout=max(left, 0.001))
            except STORE_ERRORS as error:
                raise LockUnavailable("Redis", error) from error
            if not acquired:
                raise LockTimeout(f"{name} was held by another call for {timeout:g} s")
            try:
                yield
            finally:
                try:
                    lock.release()
                except redis.exceptions.LockError:  # expired meanwhile: nothing left to free
                    pass
                except STORE_ERRORS as error:
                    _release_failed(name, error)

    def close(self) -> None:
        """Close the Redis connection pool."""
        self.client.close()
