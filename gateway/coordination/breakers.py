"""Circuit breaker state shared by the gateway's processes: pybreaker's storage interface, kept in SQLite under
var/ (every process of one machine) or in Redis (pybreaker's own CircuitRedisStorage, every machine).

tests/test_coordination.py runs one contract over both. `ConcurrentCircuitBreaker` is pybreaker's breaker
without the lock pybreaker holds around every guarded call (which would serialize all calls to a connection in a
process); instead a half-open breaker lets one probe at a time through per process, and fails the others fast.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pybreaker
import redis

STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)


class SqliteBreakerStorage(pybreaker.CircuitBreakerStorage):
    """One breaker's state, counters and opening time in a row of an SQLite file (WAL, one connection a thread)."""

    def __init__(self, path: str | Path, name: str) -> None:
        super().__init__("sqlite")
        self.path, self.breaker = str(path), name
        self._local = threading.local()
        self._execute("CREATE TABLE IF NOT EXISTS breakers (name TEXT PRIMARY KEY, state TEXT NOT NULL, "
                      "fail_counter INTEGER NOT NULL, success_counter INTEGER NOT NULL, opened_at REAL)")
        self._execute("INSERT OR IGNORE INTO breakers VALUES (?, ?, 0, 0, NULL)", (name, pybreaker.STATE_CLOSED))

    def _execute(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        connection = getattr(self._local, "connection", None)
        # A connection must not cross fork() (gunicorn forks workers from the preloaded app): a new process opens
        # its own.
        if connection is None or getattr(self._local, "pid", None) != os.getpid():
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection.execute(sql, parameters).fetchall()

    def _value(self, column: str) -> Any:
        return self._execute(f"SELECT {column} FROM breakers WHERE name = ?", (self.breaker,))[0][0]  # noqa: S608

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        return self._value("state")

    @state.setter
    def state(self, state: str) -> None:
        self._execute("UPDATE breakers SET state = ? WHERE name = ?", (str(state), self.breaker))

    def increment_counter(self) -> None:
        """One more consecutive failure."""
        self._execute("UPDATE breakers SET fail_counter = fail_counter + 1 WHERE name = ?", (self.breaker,))

    def reset_counter(self) -> None:
        """No consecutive failures; writes nothing when there were none (every success calls this)."""
        self._execute("UPDATE breakers SET fail_counter = 0 WHERE name = ? AND fail_counter != 0", (self.breaker,))

    def increment_success_counter(self) -> None:
        """One more consecutive success while half-open."""
        self._execute("UPDATE breakers SET success_counter = success_counter + 1 WHERE name = ?", (self.breaker,))

    def reset_success_counter(self) -> None:
        """No consecutive successes."""
        self._execute("UPDATE breakers SET success_counter = 0 WHERE name = ? AND success_counter != 0",
                      (self.breaker,))

    @property
    def counter(self) -> int:
        """Consecutive failures."""
        return self._value("fail_counter")

    @property
    def success_counter(self) -> int:
        """Consecutive successes while half-open."""
        return self._value("success_counter")

    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened."""
        value = self._value("opened_at")
        return None if value is None else datetime.fromtimestamp(value, UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._execute("UPDATE breakers SET opened_at = ? WHERE name = ?", (when.timestamp(), self.breaker))

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class RedisBreakerStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, keeping the opening time to the microsecond (pybreaker keeps whole seconds, so an
    open breaker would let a probe through up to a second early, and one reset below a second at once)."""

    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened."""
        try:
            value = self._redis.get(self._namespace("opened_at"))
        except redis.RedisError:
            self.logger.exception("RedisError")
            return None
        return datetime.fromtimestamp(float(value), UTC) if value else None

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        key = self._namespace("opened_at")

        def set_if_later(pipe: redis.client.Pipeline) -> None:
            current = pipe.get(key)
            pipe.multi()
            if not current or when.timestamp() > float(current):
                pipe.set(key, repr(when.timestamp()))

        try:
            self._redis.transaction(set_if_later, key)
        except redis.RedisError:
            self.logger.exception("RedisError")


def redis_breaker_storage(client: redis.Redis, name: str) -> pybreaker.CircuitRedisStorage:
    """The Redis storage of the breaker `name`."""
    return RedisBreakerStorage(pybreaker.STATE_CLOSED, client, namespace=f"gateway:breakers:{name}")


class ConcurrentCircuitBreaker(pybreaker.CircuitBreaker):
    """pybreaker's state machine, with calls running concurrently and one probe at a time when half-open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._probe = threading.RLock()  # reentrant: an open breaker that turns half-open calls itself again

    def retry_after(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None when it lets calls through now."""
        if self.current_state != pybreaker.STATE_OPEN:
            return None
        opened_at = self._state_storage.opened_at
        if opened_at is None:
            return None
        left = opened_at.timestamp() + self.reset_timeout - datetime.now(UTC).timestamp()
        return left if left > 0 else None

    def call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `func` under the breaker's rules without holding a lock around it."""
        if self.current_state == pybreaker.STATE_CLOSED:
            return self.state.call(func, *args, **kwargs)
        if not self._probe.acquire(blocking=False):
            raise pybreaker.CircuitBreakerError("a probe call is already deciding")
        try:
            return self.state.call(func, *args, **kwargs)
        finally:
            self._probe.release()
