"""Circuit breaker state shared by the gateway's processes: pybreaker's storage interface, kept in SQLite under
var/ (every process of one machine) or in Redis (every machine).

tests/test_coordination.py runs one contract over both. `ConcurrentCircuitBreaker` is pybreaker's breaker
without the lock pybreaker holds around every guarded call (which would serialize all calls to a connection in a
process); instead a half-open breaker lets one probe at a time through per process, and fails the others fast.

Each process keeps its own copy of the state (FallbackBreakerStorage), as Envoy's outlier detection keeps one per
worker, and shares what changes it:

- a call admitted or succeeding through a closed breaker reads and writes nothing shared: the copy answers;
- the copy is read again from the shared state when it is older than REFRESH_SECONDS (0.25 s: one read of the whole
  state, so a busy process reads it at most four times a second per connection), which bounds how late a process
  learns that another opened, half-opened or closed the breaker;
- a failure is counted in the shared state at once (one increment, which answers the count), so failures in
  different processes add up to breaker_failures and the process whose failure reaches it opens the breaker for all;
- a success writes the shared count back to zero only when the copy counts failures;
- every transition (open, half-open, close) is written to the shared state at once; health views and metrics read
  the shared state afresh.

The shared state is bookkeeping (gateway/bookkeeping.py): when it cannot be read or written the breaker goes on
with the copy, and no call fails for it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pybreaker
import redis

from gateway.bookkeeping import STORE_ERRORS, note_failure
from gateway.config import StoreSettings
from gateway.sqlite_file import SqliteFile

STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)
log = logging.getLogger("gateway.breakers")


class BreakerRecord(NamedTuple):
    """One breaker's whole state, as one read of its shared storage answers it."""

    state: str
    failures: int
    successes: int
    opened_at: datetime | None


def read_record(storage: pybreaker.CircuitBreakerStorage) -> BreakerRecord:
    """A storage's whole state: in one round trip from the gateway's storages (`read`), value by value from any
    other pybreaker storage."""
    if isinstance(storage, SqliteBreakerStorage | RedisBreakerStorage):
        return storage.read()
    return BreakerRecord(storage.state, storage.counter, storage.success_counter, storage.opened_at)


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

    def read(self) -> BreakerRecord:
        """The whole state in one statement."""
        state, failures, successes, opened_at = self._execute(
            "SELECT state, fail_counter, success_counter, opened_at FROM breakers WHERE name = ?", (self.breaker,))[0]
        return BreakerRecord(state, failures, successes,
                             None if opened_at is None else datetime.fromtimestamp(opened_at, UTC))

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        return self._value("state")

    @state.setter
    def state(self, state: str) -> None:
        self._execute("UPDATE breakers SET state = ? WHERE name = ?", (str(state), self.breaker))

    def increment_counter(self) -> int:
        """One more consecutive failure; how many there are now."""
        return self._execute("UPDATE breakers SET fail_counter = fail_counter + 1 WHERE name = ? "
                             "RETURNING fail_counter", (self.breaker,))[0][0]

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
        return _text(self._redis.get(self._prefix + name))

    def read(self) -> BreakerRecord:
        """The whole state in one MGET."""
        state, failures, successes, opened_at = map(_text, self._redis.mget(
            [self._prefix + name for name in ("state", "fail_counter", "success_counter", "opened_at")]))
        return BreakerRecord(state or pybreaker.STATE_CLOSED, int(failures or 0), int(successes or 0),
                             datetime.fromtimestamp(float(opened_at), UTC) if opened_at else None)

    @property
    def state(self) -> str:
        """closed, open or half-open (closed until anything was stored)."""
        return self._get("state") or pybreaker.STATE_CLOSED

    @state.setter
    def state(self, state: str) -> None:
        self._redis.set(self._prefix + "state", str(state))

    def increment_counter(self) -> int:
        """One more consecutive failure; how many there are now."""
        return int(self._redis.incr(self._prefix + "fail_counter"))

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


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def redis_breaker_storage(client: redis.Redis, name: str) -> RedisBreakerStorage:
    """The Redis storage of the breaker `name`."""
    return RedisBreakerStorage(client, namespace=f"gateway:breakers:{name}")


class FallbackBreakerStorage(pybreaker.CircuitBreakerStorage):
    """This process's copy of a breaker's state, which answers every read, over the shared state, which it reads
    again when the copy is older than REFRESH_SECONDS and writes on every transition and counted failure (the
    module's docstring says what is shared when).

    When the shared state fails (STORE_ERRORS), the copy goes on alone, and the shared state is left alone for
    RETRY_SECONDS, so a store that hangs costs one wait, not one per call; each failure is counted, and logged at
    most once per LOG_INTERVAL_SECONDS.
    """

    REFRESH_SECONDS = 0.25
    RETRY_SECONDS = 5.0
    LOG_INTERVAL_SECONDS = 60.0

    def __init__(self, shared: pybreaker.CircuitBreakerStorage, breaker: str) -> None:
        super().__init__(shared.name)
        self.shared, self.breaker = shared, breaker
        self._state: str = pybreaker.STATE_CLOSED
        self._failures = self._successes = 0
        self._opened_at: datetime | None = None
        self._read_at: float | None = None  # when the copy was last read from the shared state (monotonic)
        self._changes = 0  # the copy's own changes: a read that began before one must not undo it
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

    def refresh(self, *, force: bool = False) -> None:
        """Read the shared state into the copy, when the copy is older than REFRESH_SECONDS or `force`; the other
        threads go on with the copy while one reads."""
        now = time.monotonic()
        if not force and self._read_at is not None and now - self._read_at < self.REFRESH_SECONDS:
            return
        self._read_at, changes = now, self._changes
        ok, record = self._shared(lambda: read_record(self.shared))
        if ok and changes == self._changes:
            self._state, self._failures, self._successes, self._opened_at = record

    def _write(self, action: Callable[[], Any]) -> tuple[bool, Any]:
        """Write the shared state (after changing the copy); a read overlapping the write is not kept."""
        self._changes += 1
        try:
            return self._shared(action)
        finally:
            self._changes += 1

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        self.refresh()
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = str(state)
        self._write(lambda: setattr(self.shared, "state", state))

    def increment_counter(self) -> int:
        """One more consecutive failure, counted in the shared state at once; how many there are now (in this
        process alone while the shared state cannot be used)."""
        def count() -> int:
            failures = self.shared.increment_counter()
            return self.shared.counter if failures is None else failures  # (pybreaker's storages answer nothing)

        self._failures += 1
        ok, failures = self._write(count)
        if ok:
            self._failures = failures
        return self._failures

    def reset_counter(self) -> None:
        """No consecutive failures (the breaker closes)."""
        self._failures = 0
        self._write(self.shared.reset_counter)

    def clear_failures(self) -> None:
        """A call succeeded: no consecutive failures. The shared count is written only when the copy counts some,
        so a success through a healthy backend costs no round trip."""
        if self._failures:
            self.reset_counter()

    def increment_success_counter(self) -> None:
        """One more consecutive success while half-open."""
        self._successes += 1
        self._write(self.shared.increment_success_counter)

    def reset_success_counter(self) -> None:
        """No consecutive successes (the breaker changes state)."""
        self._successes = 0
        self._write(self.shared.reset_success_counter)

    @property
    def counter(self) -> int:
        """Consecutive failures."""
        self.refresh()
        return self._failures

    @property
    def success_counter(self) -> int:
        """Consecutive successes while half-open."""
        self.refresh()
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened."""
        self.refresh()
        return self._opened_at

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._opened_at = when
        self._write(lambda: setattr(self.shared, "opened_at", when))


class BreakerOpen(Exception):
    """The breaker refuses a call: open (`retry_after`: seconds until a probe may go), or half-open with its probe
    in flight (`retry_after` None)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("the circuit breaker is open" if retry_after is not None
                         else "a probe call is already deciding")
        self.retry_after = retry_after


class ConcurrentCircuitBreaker(pybreaker.CircuitBreaker):
    """pybreaker's state machine over this process's copy of its state (FallbackBreakerStorage, in front of the
    shared state, or of pybreaker's memory storage when there is none), with calls running concurrently and one
    probe at a time (per process) when half-open.

    A call is admitted (`admit`, which reads the copy) and its outcome recorded afterwards (`record_success`,
    `record_failure`, or `withdraw` when it was never sent), so the connection runs the call between the two without
    the breaker around it; `call` does all three around a function.
    """

    _state_storage: FallbackBreakerStorage

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        shared = kwargs.get("state_storage") or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
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
        health views and metrics: the shared state read afresh, once."""
        self._state_storage.refresh(force=True)
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
            self._state_storage.clear_failures()
            if probe:
                self._state_storage.increment_success_counter()
                if self._state_storage.success_counter >= self.success_threshold:
                    self.close()
        finally:
            self.withdraw(probe)

    def record_failure(self, probe: bool) -> bool:
        """The admitted call failed in a way that says the backend is unwell; whether this opened the breaker."""
        try:
            failures = self._state_storage.increment_counter()
            if probe or failures >= self.fail_max:
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
