"""Idempotency-Key records (draft-ietf-httpapi-idempotency-key-header, as Stripe uses it), shared by every process.

`IdempotencyStore` is the contract; `SqliteIdempotencyStore` (sqlite_store.py, one embedded file) and
`RedisIdempotencyStore` (redis_store.py, one Redis shared by several machines) implement it with the same
behaviour, proven by tests/test_idempotency_store.py.

A key holds at most one live record:

    in progress   the fingerprint of the request being served, leased for `lease_seconds`; a lease that runs out
                  (its request crashed) counts as no record, and the next begin() takes the key over
    completed     that fingerprint with the response sent, kept for `ttl_seconds`

begin() answers NEW (the caller now holds the marker and must complete() or abandon() it), IN_PROGRESS (the same
request is being served: 409), REPLAY (send the stored response again) or MISMATCH (the key was used for another
request: 422). Exactly one of any number of concurrent callers of a fresh key gets NEW.

Errors of the storage itself (sqlite3.Error, redis.RedisError) are passed on as they are.
"""

from __future__ import annotations

import abc
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

NEW, REPLAY, IN_PROGRESS, MISMATCH = "new", "replay", "in-progress", "mismatch"
BEGUN_STATES = (NEW, REPLAY, IN_PROGRESS, MISMATCH)
#: the state of a record whose response is stored (an unfinished one is IN_PROGRESS)
COMPLETED = "completed"
#: the SQLite file's name, beside the events database
SQLITE_FILE_NAME = "idempotency.sqlite3"


@dataclass(frozen=True)
class StoredResponse:
    """A response as it is replayed: status, the headers that matter (in order, repeats kept) and the body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"a response status is an int from 100 to 599, not {self.status!r}")
        # Any sequence of pairs is accepted and kept as tuples, so a replayed response compares equal to the original.
        if isinstance(self.headers, str | bytes) or any(isinstance(header, str | bytes) for header in self.headers):
            raise TypeError("response headers are (name, value) pairs of strings")
        headers = tuple(tuple(header) for header in self.headers)
        if any(len(header) != 2 or not all(isinstance(part, str) for part in header) for header in headers):
            raise TypeError("response headers are (name, value) pairs of strings")
        object.__setattr__(self, "headers", headers)
        if not isinstance(self.body, bytes | bytearray | memoryview):
            raise TypeError(f"a response body is bytes, not {type(self.body).__name__}")
        object.__setattr__(self, "body", bytes(self.body))


@dataclass(frozen=True)
class Begun:
    """What begin() found: NEW, REPLAY (with the stored response), IN_PROGRESS or MISMATCH."""

    state: str
    response: StoredResponse | None = None


class IdempotencyStore(abc.ABC):
    """Keeps Idempotency-Key records; every method is atomic across threads, processes and (Redis) machines."""

    @abc.abstractmethod
    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """Claim the key for this request (NEW) or say why not: IN_PROGRESS, REPLAY or MISMATCH."""

    @abc.abstractmethod
    def complete(self, key: str, fingerprint: str, response: StoredResponse, *, ttl_seconds: float,
                 now: float | None = None) -> None:
        """Store the response for `ttl_seconds` if the key's live in-progress marker holds this fingerprint."""

    @abc.abstractmethod
    def abandon(self, key: str, fingerprint: str) -> None:
        """Delete the key's in-progress marker if it holds this fingerprint, so the key can be used afresh."""

    @abc.abstractmethod
    def purge_expired(self, now: float | None = None) -> int:
        """Delete the records whose lease or lifetime is over; how many were deleted."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


def open_idempotency_store(settings: GatewaySettings) -> IdempotencyStore:
    """The configured store: in Redis when the events use Redis, else in an SQLite file beside the events database."""
    # Imported here: both implementations import this module.
    if settings.events.redis_url:
        from gateway.idempotency.redis_store import RedisIdempotencyStore

        return RedisIdempotencyStore(settings.events.redis_url)
    from gateway.idempotency.sqlite_store import SqliteIdempotencyStore

    return SqliteIdempotencyStore(Path(settings.events.database).parent / SQLITE_FILE_NAME)


# Helpers both implementations share, so they agree on every detail of validation and encoding.

def timestamp(now: float | None) -> float:
    """The caller's time as a float (UNIX seconds), or the current time when none is given."""
    return time.time() if now is None else float(now)


def check_record(key: str, fingerprint: str) -> None:
    """Refuse a key or fingerprint that is not a non-empty string."""
    for name, value in (("key", key), ("fingerprint", fingerprint)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"an idempotency {name} is a non-empty string, not {value!r}")


def check_seconds(name: str, seconds: float) -> float:
    """A positive, finite duration as a float."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")
    return seconds


def encode_headers(headers: tuple[tuple[str, str], ...]) -> str:
    """The headers as JSON text; ASCII only, so any string (a lone surrogate too) comes back unchanged."""
    return json.dumps([list(header) for header in headers])


def decode_headers(text: str | bytes) -> tuple[tuple[str, str], ...]:
    """The headers encode_headers wrote."""
    return tuple((name, value) for name, value in json.loads(text))
