"""The Idempotency-Key store's contract and what its implementations share: the records, the
`IdempotencyStore` interface, and the validation and encoding both stores use so they agree on every detail."""

from __future__ import annotations

import abc
import json
import math
import time
from dataclasses import dataclass

NEW, REPLAY, IN_PROGRESS, MISMATCH, OUTCOME_UNKNOWN = "new", "replay", "in-progress", "mismatch", "outcome-unknown"
BEGUN_STATES = (NEW, REPLAY, IN_PROGRESS, MISMATCH, OUTCOME_UNKNOWN)
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
class Attempt:
    """A backend call noted on a key before it was sent: where it went, for which orders, under which request and
    journal exchange id, and whether sending it again would leave the orders as sending it once."""

    exchange_id: str
    connection: str
    operation: str
    order_ids: tuple[str, ...]
    idempotent: bool
    request_id: str = ""

    def __post_init__(self) -> None:
        for name in ("exchange_id", "connection", "operation", "request_id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"an attempt's {name} is a string, not {getattr(self, name)!r}")
        if not self.exchange_id:
            raise ValueError("an attempt names its exchange id")
        if isinstance(self.order_ids, str) or not all(isinstance(order, str) for order in self.order_ids):
            raise TypeError("an attempt's order_ids are strings")
        object.__setattr__(self, "order_ids", tuple(self.order_ids))
        if not isinstance(self.idempotent, bool):
            raise TypeError(f"an attempt's idempotent is a bool, not {self.idempotent!r}")


@dataclass(frozen=True)
class Begun:
    """What begin() found: NEW, REPLAY (with the stored response), IN_PROGRESS, MISMATCH or OUTCOME_UNKNOWN (with
    the calls that were noted, oldest first)."""

    state: str
    response: StoredResponse | None = None
    attempts: tuple[Attempt, ...] = ()


class IdempotencyStore(abc.ABC):
    """Keeps Idempotency-Key records; every method is atomic across threads, processes and (Redis) machines."""

    @abc.abstractmethod
    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """Claim the key for this request (NEW) or say why not: IN_PROGRESS, REPLAY, MISMATCH or OUTCOME_UNKNOWN."""

    @abc.abstractmethod
    def attempt(self, key: str, fingerprint: str, attempt: Attempt, *, ttl_seconds: float,
                now: float | None = None) -> bool:
        """Note a call about to be sent on the key's in-progress marker, if it holds this fingerprint and its lease
        runs; the record then lives at least `ttl_seconds`. Whether it was noted (if not, the call must not go)."""

    @abc.abstractmethod
    def complete(self, key: str, fingerprint: str, response: StoredResponse, *, ttl_seconds: float,
                 now: float | None = None) -> None:
        """Store the response for `ttl_seconds` if the key's live in-progress marker holds this fingerprint."""

    @abc.abstractmethod
    def abandon(self, key: str, fingerprint: str) -> None:
        """Delete the key's in-progress marker if it holds this fingerprint and noted no call, so the key can be
        used afresh."""

    @abc.abstractmethod
    def purge_expired(self, now: float | None = None, *, limit: int | None = None) -> int:
        """Delete the records whose lease or lifetime is over (at most `limit` of them, None: all); how many were
        deleted."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


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


def check_attempt(attempt: Attempt) -> None:
    """Refuse what is not an Attempt."""
    if not isinstance(attempt, Attempt):
        raise TypeError(f"attempt() notes an Attempt, not {type(attempt).__name__}")


def encode_attempt(attempt: Attempt) -> str:
    """An attempt as one line of JSON (ASCII only); a record keeps its attempts as such lines, one after another."""
    return json.dumps({"exchange_id": attempt.exchange_id, "connection": attempt.connection,
                       "operation": attempt.operation, "order_ids": list(attempt.order_ids),
                       "idempotent": attempt.idempotent, "request_id": attempt.request_id})


def decode_attempts(text: str | bytes | None) -> tuple[Attempt, ...]:
    """The attempts a record's lines hold, oldest first."""
    if not text:
        return ()
    if isinstance(text, bytes):
        text = text.decode("ascii")
    attempts = []
    for line in text.splitlines():
        fields = json.loads(line)
        attempts.append(Attempt(fields["exchange_id"], fields["connection"], fields["operation"],
                                tuple(fields["order_ids"]), fields["idempotent"], fields.get("request_id", "")))
    return tuple(attempts)


def encode_headers(headers: tuple[tuple[str, str], ...]) -> str:
    """The headers as JSON text; ASCII only, so any string (a lone surrogate too) comes back unchanged."""
    return json.dumps([list(header) for header in headers])


def decode_headers(text: str | bytes) -> tuple[tuple[str, str], ...]:
    """The headers encode_headers wrote."""
    return tuple((name, value) for name, value in json.loads(text))
