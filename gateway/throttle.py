"""Throttling failed authentication, on the API and the console's login alike.

After `[gateway] auth_failures_allowed` failures within `auth_failure_window_seconds`, from one client address or
with one key prefix, every attempt from that address or with that prefix is refused (429 with Retry-After) until
the window ends — the right key's too, so guessing on gains nothing.

    AuthThrottle                 the policy: what an attempt counts against, check() and note_failure()
    AuthFailureStore             the contract: failures per subject, counted in windows
    ├── SqliteAuthFailureStore   one SQLite file beside the events database, shared by a machine's processes
    └── RedisAuthFailureStore    one Redis shared by several machines (when `[events] redis_url` is set)

An attempt counts against two subjects: the client's address (request.remote_addr: behind a proxy that is the
proxy's, unless gunicorn's forwarded_allow_ips lets it take the client's from X-Forwarded-For) and the first
KEY_PREFIX_CHARS characters of the key it presented, kept only as a digest (never the key, never the prefix). A
window opens at a subject's first failure and lasts the setting's seconds; the failures in it add up, and from the
allowed count on the subject is refused until the window closes. Refused attempts are not counted (nothing was
checked), and a success resets nothing: a caller holding one valid key gains nothing by mixing in guesses.

Failures are rare and every request with a key is checked, so a check costs no store round trip while nothing
changed: the SQLite store keeps the open windows it last read per connection and reads them again only when
`PRAGMA data_version` says another connection (of any process) committed since, which is exact; the Redis store
reads a subject with failures every time, and takes a subject it found without any to have none for
FRESH_SECONDS, so the first failures counted against it by another process or machine are seen here within that
long (its own at once): a caller that never fails costs a round trip a second per process.

Errors of the storage itself are passed on as they are, naming their store, so a throttle that cannot be read
answers 503 `store-unavailable` (gateway/stores.py): no attempt is let through unchecked (in Redis: none after
FRESH_SECONDS). tests/test_login_throttle.py runs one contract over both stores.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import StoreSettings
from gateway.errors import TooManyFailedAttempts
from gateway.sqlite_file import SqliteFile
from gateway.stores import redis_client

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

log = logging.getLogger("gateway.throttle")
#: how much of a presented key names its subject: enough to tell keys apart, too little to be a key
KEY_PREFIX_CHARS = 8
#: the SQLite file's name, beside the events database
SQLITE_FILE_NAME = "auth-failures.sqlite3"
STORE_NAME = "authentication throttle"
#: how long the Redis store answers for a subject from what it last learned of it (a block made elsewhere is seen
#: within this long)
FRESH_SECONDS = 1.0
#: open windows the SQLite store keeps in memory at most; with more (an attack from many addresses), each check
#: reads its own subjects
CACHED_WINDOWS = 1000
#: subjects the Redis store remembers at most (past that it starts afresh)
REMEMBERED_SUBJECTS = 10_000


def address_subject(address: str | None) -> str:
    """The subject of a client address."""
    return f"address:{address or 'unknown'}"


def key_prefix_subject(key: str) -> str:
    """The subject of a presented key: a digest of its first KEY_PREFIX_CHARS characters."""
    prefix = key[:KEY_PREFIX_CHARS].encode("utf-8", "surrogateescape")
    return "key:" + hashlib.sha256(b"order-gateway key prefix\0" + prefix).hexdigest()[:32]


class AuthFailureStore(abc.ABC):
    """Failed authentications per subject, in windows; every method is atomic across threads and processes."""

    @abc.abstractmethod
    def blocked_for(self, subjects: Sequence[str], *, allowed: int, now: float | None = None) -> float:
        """Seconds until the last of `subjects` that had `allowed` failures in its open window may try again; 0 when
        none is blocked."""

    @abc.abstractmethod
    def add_failure(self, subjects: Sequence[str], *, allowed: int, window_seconds: float,
                    now: float | None = None) -> float:
        """Count one failure against each subject (a window opens where none is open); then what blocked_for()
        says."""

    @abc.abstractmethod
    def purge_expired(self, now: float | None = None) -> int:
        """Forget the windows that have closed; how many."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


def _check(subjects: Sequence[str], allowed: int) -> list[str]:
    if isinstance(subjects, str) or not subjects or not all(isinstance(s, str) and s for s in subjects):
        raise ValueError(f"subjects are non-empty strings, not {subjects!r}")
    if isinstance(allowed, bool) or not isinstance(allowed, int) or allowed < 1:
        raise ValueError(f"allowed is a positive number of failures, not {allowed!r}")
    return list(dict.fromkeys(subjects))


def _window(seconds: float) -> float:
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"window_seconds must be a positive number of seconds, not {seconds!r}")
    return seconds


SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_failures (
    subject    TEXT PRIMARY KEY,  -- address:<ip> or key:<digest of a key prefix>
    failures   INTEGER NOT NULL,
    window_end REAL NOT NULL      -- UNIX seconds: a row past it is a closed window
);
CREATE INDEX IF NOT EXISTS auth_failures_by_window_end ON auth_failures (window_end);
"""


class SqliteAuthFailureStore(SqliteFile, AuthFailureStore):
    """The windows in one SQLite file, used by a machine's threads and processes."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        # NORMAL: a power cut may forget the last failures counted, which costs nothing but a few guesses.
        self._open_file(path, schema=SCHEMA, schema_version=1, synchronous="NORMAL", what=STORE_NAME,
                        stores=stores)
        #: per connection: its data_version when it read the windows, and {subject: (failures, window_end)}
        self._windows: dict[sqlite3.Connection, tuple[int, dict[str, tuple[int, float]]]] = {}

    def _open_windows(self, db: sqlite3.Connection) -> dict[str, tuple[int, float]] | None:
        """Every window in the file as this connection last read it, read again when another connection
        committed since; None when there are too many to keep."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        known = self._windows.get(db)
        if known is not None and known[0] == version:
            return known[1]
        rows = db.execute("SELECT subject, failures, window_end FROM auth_failures LIMIT ?",
                          (CACHED_WINDOWS + 1,)).fetchall()
        if len(rows) > CACHED_WINDOWS:
            self._windows.pop(db, None)
            return None
        windows = {subject: (failures, window_end) for subject, failures, window_end in rows}
        self._windows[db] = (version, windows)
        return windows

    @staticmethod
    def _blocked_for(db, subjects: list[str], allowed: int, now: float) -> float:
        marks = ", ".join("?" * len(subjects))
        end = db.execute(f"SELECT MAX(window_end) FROM auth_failures WHERE subject IN ({marks})"  # noqa: S608
                         " AND failures >= ? AND window_end > ?", (*subjects, allowed, now)).fetchone()[0]
        return 0.0 if end is None else end - now

    def blocked_for(self, subjects: Sequence[str], *, allowed: int, now: float | None = None) -> float:
        """Seconds until the last blocked subject may try again; 0 when none is blocked."""
        subjects = _check(subjects, allowed)
        now = time.time() if now is None else float(now)
        with self._borrowed() as db:
            windows = self._open_windows(db)
            if windows is None:
                return self._blocked_for(db, subjects, allowed, now)
        ends = [window[1] for window in map(windows.get, subjects)
                if window is not None and window[0] >= allowed and window[1] > now]
        return max(ends) - now if ends else 0.0

    def add_failure(self, subjects: Sequence[str], *, allowed: int, window_seconds: float,
                    now: float | None = None) -> float:
        """Count one failure against each subject; then what blocked_for() says."""
        subjects = _check(subjects, allowed)
        window_seconds = _window(window_seconds)
        now = time.time() if now is None else float(now)
        with self._write() as db:
            # A connection's own commits leave its data_version as it was: what it knew is forgotten here.
            self._windows.pop(db, None)
            # Closed windows go first, so a row still there is an open window to add to.
            db.execute("DELETE FROM auth_failures WHERE window_end <= ?", (now,))
            db.executemany("INSERT INTO auth_failures (subject, failures, window_end) VALUES (?, 1, ?)"
                           " ON CONFLICT (subject) DO UPDATE SET failures = failures + 1",
                           [(subject, now + window_seconds) for subject in subjects])
            return self._blocked_for(db, subjects, allowed, now)

    def purge_expired(self, now: float | None = None) -> int:
        """Forget the windows that have closed; how many."""
        with self._write() as db:
            self._windows.pop(db, None)
            return db.execute("DELETE FROM auth_failures WHERE window_end <= ?",
                              (time.time() if now is None else float(now),)).rowcount

    def ping(self) -> None:
        """Raise if the file cannot be read (or the store is closed)."""
        with self._borrowed() as db:
            db.execute("SELECT 1 FROM auth_failures LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self._windows.clear()
        self._close_file()


# KEYS: the subjects' counters. Returns each one's failures and the milliseconds left of its window (0: none).
COUNTS_SCRIPT = """
local counts = {}
for _, key in ipairs(KEYS) do
    local failures = tonumber(redis.call('GET', key) or '0')
    local left = 0
    if failures > 0 then left = math.max(redis.call('PTTL', key), 0) end
    table.insert(counts, failures)
    table.insert(counts, left)
end
return counts
"""

# KEYS: the subjects' counters. ARGV: the window in milliseconds. Counts one failure on each (a counter without a
# window gets one) and returns what COUNTS_SCRIPT would.
ADD_SCRIPT = """
local counts = {}
for _, key in ipairs(KEYS) do
    local failures = redis.call('INCR', key)
    if failures == 1 or redis.call('PTTL', key) < 0 then
        redis.call('PEXPIRE', key, ARGV[1])
    end
    table.insert(counts, failures)
    table.insert(counts, math.max(redis.call('PTTL', key), 0))
end
return counts
"""


class RedisAuthFailureStore(AuthFailureStore):
    """The windows in one Redis: a counter per subject that Redis expires when its window ends (on the Redis
    server's clock, so the `now` arguments, which exist for the SQLite store's tests, are ignored here). A subject
    a round trip found without failures is taken to have none for FRESH_SECONDS; one with failures is read each
    time."""

    def __init__(self, url: str, *, prefix: str = "gateway:auth-failures:",
                 stores: StoreSettings | None = None) -> None:
        self.prefix = prefix
        self._redis = redis_client(url, stores, store=STORE_NAME)
        self._counts_script = self._redis.register_script(COUNTS_SCRIPT)
        self._add_script = self._redis.register_script(ADD_SCRIPT)
        #: subjects a round trip found without failures -> until when that answers for them (monotonic clock)
        self._clean: dict[str, float] = {}

    def _left(self, subjects: list[str], counts: list, allowed: int) -> float:
        """The longest window left of a subject blocked by `counts` (failures and milliseconds left, per subject);
        a subject without failures is remembered as such for FRESH_SECONDS, one with failures forgotten."""
        if len(self._clean) > REMEMBERED_SUBJECTS:
            self._clean.clear()
        fresh_until, longest = time.monotonic() + FRESH_SECONDS, 0
        for subject, failures, left in zip(subjects, counts[::2], counts[1::2], strict=True):
            if int(failures) == 0:
                self._clean[subject] = fresh_until
            else:
                self._clean.pop(subject, None)
                if int(failures) >= allowed:
                    longest = max(longest, int(left))
        return longest / 1000

    def blocked_for(self, subjects: Sequence[str], *, allowed: int, now: float | None = None) -> float:
        """Seconds until the last blocked subject may try again; 0 when none is blocked."""
        subjects = _check(subjects, allowed)
        clock = time.monotonic()
        if all(self._clean.get(subject, 0.0) > clock for subject in subjects):
            return 0.0
        return self._left(subjects, self._counts_script(keys=[self.prefix + s for s in subjects]), allowed)

    def add_failure(self, subjects: Sequence[str], *, allowed: int, window_seconds: float,
                    now: float | None = None) -> float:
        """Count one failure against each subject; then what blocked_for() says."""
        subjects = _check(subjects, allowed)
        window = max(1, math.ceil(_window(window_seconds) * 1000))
        for subject in subjects:  # before the count, so no check here goes on trusting it once it is made
            self._clean.pop(subject, None)
        return self._left(subjects, self._add_script(keys=[self.prefix + s for s in subjects], args=[window]),
                          allowed)

    def purge_expired(self, now: float | None = None) -> int:
        """Nothing to do: Redis expires each window by itself."""
        return 0

    def ping(self) -> None:
        """Raise if Redis does not answer."""
        self._redis.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self._clean.clear()
        self._redis.close()


def open_auth_failure_store(settings: GatewaySettings) -> AuthFailureStore:
    """The configured store: in Redis when the events use Redis, else in an SQLite file beside the events database."""
    if settings.events.redis_url:
        return RedisAuthFailureStore(settings.events.redis_url, stores=settings.stores)
    return SqliteAuthFailureStore(Path(settings.events.database).parent / SQLITE_FILE_NAME, stores=settings.stores)


class AuthThrottle:
    """The throttle of one gateway: its settings and its store."""

    def __init__(self, store: AuthFailureStore, *, allowed: int, window_seconds: float) -> None:
        self.store, self.allowed, self.window_seconds = store, allowed, window_seconds

    @classmethod
    def for_settings(cls, settings: GatewaySettings) -> AuthThrottle:
        """The throttle `[gateway] auth_failures_allowed` and `auth_failure_window_seconds` describe."""
        return cls(open_auth_failure_store(settings), allowed=settings.auth_failures_allowed,
                   window_seconds=settings.auth_failure_window_seconds)

    @staticmethod
    def subjects(address: str | None, key: str | None) -> list[str]:
        """What an attempt from `address` presenting `key` (None: no key to speak of) counts against."""
        return [address_subject(address)] + ([key_prefix_subject(key)] if key else [])

    def check(self, address: str | None, key: str | None) -> None:
        """TooManyFailedAttempts (429) while the address or the key's prefix is blocked."""
        left = self.store.blocked_for(self.subjects(address, key), allowed=self.allowed)
        if left > 0:
            raise _refusal(left)

    def note_failure(self, address: str | None, key: str | None) -> None:
        """Count a failed attempt; the one that reaches the allowed count is logged (with the address, never the
        key)."""
        left = self.store.add_failure(self.subjects(address, key), allowed=self.allowed,
                                      window_seconds=self.window_seconds)
        if left > 0:
            log.warning("authentication failed too often from %s or with its key's prefix: refused for %d s",
                        address or "an unknown address", math.ceil(left))

    def close(self) -> None:
        """Close the store."""
        self.store.close()


def _refusal(seconds_left: float) -> TooManyFailedAttempts:
    retry_after = max(1, math.ceil(seconds_left))
    return TooManyFailedAttempts(f"Authentication failed too often from this address or with this key; try again in "
                                 f"{retry_after} s.", retry_after=retry_after)
