"""Circuit breaker state shared by the gateway's processes: pybreaker's storage interface, kept in SQLite under
var/ (every process of one machine) or in Redis (every machine).

tests/test_coordination.py runs one contract over both. `ConcurrentCircuitBreaker` is pybreaker's breaker
without the lock pybreaker holds around every guarded call (which would serialize all calls to a connection in a
process); instead a half-open breaker lets one probe at a time through per process, and fails the others fast. Its
shared state is bookkeeping (gateway/bookkeeping.py): when it cannot be read or written the breaker goes on with
this process's own copy (FallbackBreakerStorage), and no call fails for it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pybreaker
import redis

from gateway.bookkeeping import STORE_ERRORS, note_failure
from gateway.config import StoreSettings
from gateway.sqlite_file import SqliteFile

STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)
log = logging.getLogger("gateway.breakers")
#: what FallbackBreakerStorage reads -> the attribute of its copy
_COPIES = {"state": "_state", "counter": "_failures", "success_counter": "_successes", "opened_at": "_opened_at"}


BREAKERS_SCHEMA = ("CREATE TABLE IF NOT EXISTS breakers (name TEXT PRIMARY KEY, state TEXT NOT NULL, "
                   "fail_counter INTEGER NOT NULL, success_counter INTEGER NOT NULL, opened_at REAL)")


class BreakerFile(SqliteFile):
    """The SQLite file of the breakers' state: one small pool of connections per process (sqlite_file.py), shared
    by every breaker, whatever the number of threads and connections."""

    def __init__(self, path: str | Path, *, stores: StoreSettings | None = None) -> None:
        self._open_file(path, schema=BREAKERS_SCHEMA, schema_version=1, synchronous="NORMAL", what="breaker state",
                        stores=stores)

    def execute(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        """Run one statement on a borrowed connection; its rows."""
        with self._borrowed() as db:
            return db.execute(sql, parameters).fetchall()

    def close(self) -> None:
        """Close the connections; the file cannot be used afterwards."""
        self._close_file()


class SqliteBreakerStorage(pybreaker.CircuitBreakerStorage):
    """One breaker's state, counters and opening time in a row of the breakers' SQLite file (WAL)."""

    def __init__(self, database: BreakerFile | str | Path, name: str) -> None:
        super().__init__("sqlite")
        # Given a path, the storage opens the file itself (and closes it); the gateway passes one file to all.
        self._owns_file = not isinstance(database, BreakerFile)
        self.database = BreakerFile(database) if self._owns_file else database
        self.path, self.breaker = str(self.database.path), name
        self._execute("INSERT OR IGNORE INTO breakers VALUES (?, ?, 0, 0, NULL)", (name, pybreaker.STATE_CLOSED))

    def _execute(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        return self.database.execute(sql, parameters)

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
        """Close the file when this storage opened it."""
        if self._owns_file:
            self.database.close()


class RedisBreakerStorage(pybreaker.CircuitBreakerStorage):
    """One breaker's state in Redis under pybreaker's key names (`<namespace>:pybreaker:state`, ...), its opening
    time kept to the microsecond (pybreaker keeps whole seconds, so an open breaker would let a probe through up to a
    second early, and one reset below a second at once).

    Unlike pybreaker's CircuitRedisStorage it passes Redis errors on, rather than logging each with its traceback and
    answering a guess: the breaker's FallbackBreakerStorage decides what to do without Redis.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        super().__init__("redis")
        self._redis = client
        self._prefix = f"{namespace}:pybreaker:"

    def _get(self, name: str) -> str | None:
        value = self._redis.get(self._prefix + name)
        return value.decode() if isinstance(value, bytes) else value

    @property
    def state(self) -> str:
        """closed, open or half-open (closed until anything was stored)."""
        return self._get("state") or pybreaker.STATE_CLOSED

    @state.setter
    def state(self, state: str) -> None:
        self._redis.set(self._prefix + "state", str(state))

    def increment_counter(self) -> None:
        """One more consecutive failure."""
        self._redis.incr(self._prefix + "fail_counter")

    def reset_counter(self) -> None:
        """No consecutive failures."""
        self._redis.set(self._prefix + "fail_counter", 0)

    def increment_success_counter(self) -> None:
        """One more consecutive success while half-open."""
        self._redis.incr(self._prefix + "success_counter")

    def reset_success_counter(self) -> None:
        """No consecutive successes."""
        self._redis.set(self._prefix + "success_counter", 0)

    @property
    def counter(self) -> int:
        """Consecutive failures."""
        return int(self._get("fail_counter") or 0)

    @property
    def success_counter(self) -> int:
        """Consecutive successes while half-open."""
        return int(self._get("success_counter") or 0)

    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened."""
        value = self._get("opened_at")
        return datetime.fromtimestamp(float(value), UTC) if value else None

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        key = self._prefix + "opened_at"

        def set_if_later(pipe: redis.client.Pipeline) -> None:
            current = pipe.get(key)
            pipe.multi()
            if not current or when.timestamp() > float(current):
                pipe.set(key, repr(when.timestamp()))

        self._redis.transaction(set_if_later, key)


def redis_breaker_storage(client: redis.Redis, name: str) -> RedisBreakerStorage:
    """The Redis storage of the breaker `name`."""
    return RedisBreakerStorage(client, namespace=f"gateway:breakers:{name}")


class FallbackBreakerStorage(pybreaker.CircuitBreakerStorage):
    """A breaker's shared state with this process's own copy, which it goes on with while the shared one cannot be
    read or written.

    Every write goes to the copy and to the shared state; every read that succeeds refreshes the copy. When the shared
    state fails (STORE_ERRORS), the copy answers, and the shared state is left alone for RETRY_SECONDS, so a store
    that hangs costs one wait, not one per read; each failure is counted, and logged at most once per
    LOG_INTERVAL_SECONDS. Resetting a counter reads it first and writes only when it is not zero already: every
    successful call resets the failures, and a read still succeeds while another process holds SQLite's write lock.
    """

    RETRY_SECONDS = 5.0
    LOG_INTERVAL_SECONDS = 60.0

    def __init__(self, shared: pybreaker.CircuitBreakerStorage, breaker: str) -> None:
        super().__init__(shared.name)
        self.shared, self.breaker = shared, breaker
        self._state: str = pybreaker.STATE_CLOSED
        self._failures = self._successes = 0
        self._opened_at: datetime | None = None
        self._skip_until = 0.0
        self._failing = False

    def _shared(self, action: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, what the action returned) or (False, None) when the shared state failed or is being left alone."""
        if time.monotonic() < self._skip_until:
            return False, None
        try:
            value = action()
        except STORE_ERRORS as error:
            self._skip_until = time.monotonic() + self.RETRY_SECONDS
            self._failing = True
            note_failure("breaker_state", error, f"the circuit breaker of connection {self.breaker!r} goes on with "
                         "this process's own state", subject=self.breaker, interval=self.LOG_INTERVAL_SECONDS)
            return False, None
        if self._failing:
            self._failing = False
            log.info("the shared state of the circuit breaker of connection %r answers again", self.breaker)
        return True, value

    def _read(self, name: str) -> Any:
        """The shared value of `name`, kept in the copy; the copy's when the shared state cannot answer."""
        ok, value = self._shared(lambda: getattr(self.shared, name))
        if ok:
            setattr(self, _COPIES[name], value)
            return value
        return getattr(self, _COPIES[name])

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        return self._read("state")

    @state.setter
    def state(self, state: str) -> None:
        self._state = str(state)
        self._shared(lambda: setattr(self.shared, "state", state))

    def increment_counter(self) -> None:
        """One more consecutive failure."""
        self._failures += 1
        self._shared(self.shared.increment_counter)

    def reset_counter(self) -> None:
        """No consecutive failures; nothing is written when there were none."""
        self._failures = 0
        ok, value = self._shared(lambda: self.shared.counter)
        if ok and value:
            self._shared(self.shared.reset_counter)

    def increment_success_counter(self) -> None:
        """One more consecutive success while half-open."""
        self._successes += 1
        self._shared(self.shared.increment_success_counter)

    def reset_success_counter(self) -> None:
        """No consecutive successes; nothing is written when there were none."""
        self._successes = 0
        ok, value = self._shared(lambda: self.shared.success_counter)
        if ok and value:
            self._shared(self.shared.reset_success_counter)

    @property
    def counter(self) -> int:
        """Consecutive failures."""
        return self._read("counter")

    @property
    def success_counter(self) -> int:
        """Consecutive successes while half-open."""
        return self._read("success_counter")

    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened."""
        return self._read("opened_at")

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._opened_at = when
        self._shared(lambda: setattr(self.shared, "opened_at", when))


class BreakerOpen(Exception):
    """The breaker refuses a call: open (`retry_after`: seconds until a probe may go), or half-open with its probe
    in flight (`retry_after` None)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("the circuit breaker is open" if retry_after is not None
                         else "a probe call is already deciding")
        self.retry_after = retry_after


class ConcurrentCircuitBreaker(pybreaker.CircuitBreaker):
    """pybreaker's state machine, its shared state behind a FallbackBreakerStorage, with calls running concurrently
    and one probe at a time (per process) when half-open.

    A call is admitted (`admit`, which reads the state once) and its outcome recorded afterwards (`record_success`,
    `record_failure`, or `withdraw` when it was never sent), so the connection runs the call between the two without
    the breaker around it; `call` does all three around a function.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        shared = kwargs.get("state_storage")
        if shared is not None:
            kwargs["state_storage"] = FallbackBreakerStorage(shared, kwargs.get("name") or shared.name)
        super().__init__(*args, **kwargs)
        self._probe = threading.Lock()

    def _left(self, opened_at: datetime | None) -> float | None:
        if opened_at is None:
            return None
        left = opened_at.timestamp() + self.reset_timeout - datetime.now(UTC).timestamp()
        return left if left > 0 else None

    def retry_after(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None when it lets calls through now."""
        if self.current_state != pybreaker.STATE_OPEN:
            return None
        return self._left(self._state_storage.opened_at)

    def snapshot(self) -> tuple[str, int, float | None]:
        """The state, the consecutive failures and the seconds until a probe (None: calls go through now), for
        health views and metrics: the shared state read once."""
        state = self.current_state
        wait = self._left(self._state_storage.opened_at) if state == pybreaker.STATE_OPEN else None
        return state, self.fail_counter, wait

    def admit(self) -> bool:
        """Let a call through, or raise BreakerOpen; True when the call is the probe of a half-open breaker (it
        then holds this process's probe until its outcome is recorded or it is withdrawn)."""
        state = self.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN:
            wait = self._left(self._state_storage.opened_at)
            if wait is not None:
                raise BreakerOpen(wait)
        if not self._probe.acquire(blocking=False):
            raise BreakerOpen(None)
        try:
            if state == pybreaker.STATE_OPEN:
                self.half_open()
        except BaseException:
            self._probe.release()
            raise
        return True

    def record_success(self, probe: bool) -> None:
        """The admitted call succeeded (or was refused by the backend for a reason of the order's own)."""
        try:
            self._state_storage.reset_counter()
            if probe:
                self._state_storage.increment_success_counter()
                if self._state_storage.success_counter >= self.success_threshold:
                    self.close()
        finally:
            self.withdraw(probe)

    def record_failure(self, probe: bool) -> bool:
        """The admitted call failed in a way that says the backend is unwell; whether this opened the breaker."""
        try:
            self._inc_counter()
            if probe or self._state_storage.counter >= self.fail_max:
                self.open()
                return True
            return False
        finally:
            self.withdraw(probe)

    def withdraw(self, probe: bool) -> None:
        """The admitted call ends without an outcome to record (it was never sent); a probe frees its place."""
        if probe:
            self._probe.release()

    def call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `func` under the breaker's rules without holding a lock around it."""
        try:
            probe = self.admit()
        except BreakerOpen as refusal:
            raise pybreaker.CircuitBreakerError(str(refusal)) from None
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            if not self.is_system_error(error):
                self.record_success(probe)
            elif self.record_failure(probe) and self._throw_new_error_on_trip:
                raise pybreaker.CircuitBreakerError("Failures threshold reached, circuit breaker opened") from error
            raise
        self.record_success(probe)
        return result
