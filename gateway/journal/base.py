"""The exchange journal's contract and what its implementations share: the `Exchange` record, the
`ExchangeJournal` interface, and the validation and encoding both stores use so they agree on every detail."""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

#: the SQLite file's name, beside the events database
SQLITE_FILE_NAME = "journal.sqlite3"
#: the most exchanges one list() returns
MAX_LIST_LIMIT = 1000
#: the most (and by default the number of) timings one timings() returns: a bound on its work, so a busy hour is
#: sampled by its most recent calls
TIMINGS_LIMIT = 20_000
#: the most outcomes one last_at() looks for
MAX_LAST_AT_OUTCOMES = 100
#: record() prunes after this many records of one process (fewer when max_count is small) ...
PRUNE_EVERY_RECORDS = 100
#: ... and at least this often, so old exchanges go even when few are recorded
PRUNE_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Exchange:
    """One backend call: the request as sent, the reply as received (None if none came) and how it ended."""

    id: str
    at: float
    request_id: str
    caller: str
    connection: str
    backend: str
    operation: str
    order_ids: tuple[str, ...]
    request: dict
    reply: dict | None
    duration_ms: float
    outcome: str
    error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"an exchange id is a non-empty string, not {self.id!r}")
        object.__setattr__(self, "at", finite_number("at", self.at))
        for name in ("request_id", "caller", "connection", "backend", "operation", "outcome"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"an exchange's {name} is a string, not {type(getattr(self, name)).__name__}")
        # Any iterable of strings is accepted and kept as a tuple, so a stored exchange compares equal to this one.
        if isinstance(self.order_ids, str | bytes) or not isinstance(self.order_ids, Iterable):
            raise TypeError("an exchange's order_ids are a sequence of strings")
        order_ids = tuple(self.order_ids)
        if not all(isinstance(order_id, str) for order_id in order_ids):
            raise TypeError("an exchange's order_ids are a sequence of strings")
        object.__setattr__(self, "order_ids", order_ids)
        if not isinstance(self.request, dict):
            raise TypeError(f"an exchange's request is a dict, not {type(self.request).__name__}")
        if self.reply is not None and not isinstance(self.reply, dict):
            raise TypeError(f"an exchange's reply is a dict or None, not {type(self.reply).__name__}")
        duration_ms = finite_number("duration_ms", self.duration_ms)
        if duration_ms < 0:
            raise ValueError(f"duration_ms cannot be negative, not {duration_ms!r}")
        object.__setattr__(self, "duration_ms", duration_ms)
        if self.error is not None and not isinstance(self.error, str):
            raise TypeError(f"an exchange's error is a string or None, not {type(self.error).__name__}")


class ExchangeJournal(abc.ABC):
    """Keeps exchanges for a bounded time and number; every method is safe across threads and processes."""

    def record(self, exchange: Exchange) -> None:
        """Store the exchange (without bodies unless they are recorded), pruning now and then."""
        self.record_many([exchange])

    @abc.abstractmethod
    def record_many(self, exchanges: Sequence[Exchange]) -> None:
        """Store the exchanges as `record` does, all of them or (raising) none: in one transaction, so a writer
        that has several waiting pays for one commit."""

    @abc.abstractmethod
    def get(self, exchange_id: str) -> Exchange | None:
        """The exchange with this id, or None if it is unknown (or pruned)."""

    @abc.abstractmethod
    def list(self, *, order_id: str | None = None, connection: str | None = None, outcome: str | None = None,
             request_id: str | None = None, since: float | None = None, limit: int = 100,
             connections: Collection[str] | None = None) -> list[Exchange]:
        """Up to `limit` exchanges matching every filter given, newest first (ties in descending id order).

        `connections`: only exchanges with one of these connections (None: any; empty: none), on top of
        `connection`."""

    @abc.abstractmethod
    def timings(self, connection: str, *, since: float, limit: int = TIMINGS_LIMIT) -> list[tuple[float, float, str]]:
        """(at, duration_ms, outcome) of the connection's exchanges that started at `since` or later, newest first
        (ties in descending id order), at most `limit` (a bound on the work: a busy hour is sampled by its most
        recent calls); no body is read."""

    @abc.abstractmethod
    def last_at(self, connection: str, outcomes: Collection[str]) -> float | None:
        """When the connection's most recent exchange with one of these outcomes started (None: none kept)."""

    @abc.abstractmethod
    def prune(self, *, now: float | None = None) -> int:
        """Delete the exchanges older than max_age_seconds, then the oldest beyond max_count; how many were deleted."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the journal's connections."""


# Helpers both implementations share, so they agree on every detail of validation and encoding.

def timestamp(now: float | None) -> float:
    """The caller's time as a float (UNIX seconds), or the current time when none is given."""
    return time.time() if now is None else finite_number("now", now)


def finite_number(name: str, value: Any) -> float:
    """A finite real number (not a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def check_retention(max_age_seconds: float, max_count: int, record_bodies: bool) -> tuple[float, int, bool]:
    """The retention settings, checked: a positive age in seconds, a positive count and a bool."""
    max_age_seconds = finite_number("max_age_seconds", max_age_seconds)
    if max_age_seconds <= 0:
        raise ValueError(f"max_age_seconds must be positive, not {max_age_seconds!r}")
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise ValueError(f"max_count must be a positive int, not {max_count!r}")
    if not isinstance(record_bodies, bool):
        raise TypeError(f"record_bodies is a bool, not {type(record_bodies).__name__}")
    return max_age_seconds, max_count, record_bodies


def check_exchange(exchange: Exchange, *, record_bodies: bool) -> Exchange:
    """The exchange as it is to be stored: without the request's and reply's bodies unless bodies are recorded."""
    if not isinstance(exchange, Exchange):
        raise TypeError(f"the journal records an Exchange, not {type(exchange).__name__}")
    if record_bodies:
        return exchange
    reply = None if exchange.reply is None else {**exchange.reply, "body": None}
    return dataclasses.replace(exchange, request={**exchange.request, "body": None}, reply=reply)


def check_list(*, order_id: str | None, connection: str | None, outcome: str | None, request_id: str | None,
               since: float | None, limit: int) -> float | None:
    """Refuse filters that are not strings or None and a limit outside 1..MAX_LIST_LIMIT; `since` as a float."""
    for name, value in (("order_id", order_id), ("connection", connection), ("outcome", outcome),
                        ("request_id", request_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"the {name} filter is a string or None, not {type(value).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {MAX_LIST_LIMIT}, not {limit!r}")
    return None if since is None else finite_number("since", since)


def connections_filter(connections: Collection[str] | None, connection: str | None) -> frozenset[str] | None:
    """The connections an exchange may have to pass list()'s `connections` and `connection` filters (None: any);
    a lone string is refused, as it would be read as a collection of letters."""
    if connections is None:
        return None if connection is None else frozenset({connection})
    if isinstance(connections, str | bytes) or not isinstance(connections, Collection):
        raise TypeError(f"connections are a collection of strings, not {type(connections).__name__}")
    names = frozenset(connections)
    if not all(isinstance(name, str) for name in names):
        raise TypeError("connections are a collection of strings")
    return names if connection is None else names & {connection}


def check_connection(connection: str) -> str:
    """A connection's name: a non-empty string."""
    if not isinstance(connection, str):
        raise TypeError(f"a connection is named by a string, not {type(connection).__name__}")
    if not connection:
        raise ValueError("a connection's name cannot be empty")
    return connection


def check_timings(connection: str, *, since: float, limit: int) -> float:
    """Refuse an unusable connection, a `since` that is not a finite number and a limit outside 1..TIMINGS_LIMIT;
    `since` as a float."""
    check_connection(connection)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= TIMINGS_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {TIMINGS_LIMIT}, not {limit!r}")
    return finite_number("since", since)


def check_last_at(connection: str, outcomes: Collection[str]) -> tuple[str, ...]:
    """Refuse an unusable connection and outcomes that are not a collection of at most MAX_LAST_AT_OUTCOMES
    strings; the outcomes, each once."""
    check_connection(connection)
    # A string is a collection of strings too, but "failed" means one outcome, not six letters.
    if isinstance(outcomes, str | bytes) or not isinstance(outcomes, Collection):
        raise TypeError(f"outcomes are a collection of strings, not {type(outcomes).__name__}")
    if len(outcomes) > MAX_LAST_AT_OUTCOMES:
        raise ValueError(f"at most {MAX_LAST_AT_OUTCOMES} outcomes, not {len(outcomes)}")
    if not all(isinstance(outcome, str) for outcome in outcomes):
        raise TypeError("outcomes are a collection of strings")
    return tuple(dict.fromkeys(outcomes))


def encode_json(value: Any) -> str:
    """JSON text for a stored value: UTF-8 where it can be, ASCII escapes when a string holds a lone surrogate."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A body decoded with surrogateescape cannot be stored as UTF-8; escaped, it comes back unchanged.
        text = json.dumps(value, allow_nan=False)
    return text


def encode_exchange(exchange: Exchange) -> str:
    """The whole exchange as JSON text."""
    return encode_json(dataclasses.asdict(exchange))


def decode_exchange(text: str) -> Exchange:
    """The exchange encode_exchange wrote."""
    return Exchange(**json.loads(text))


class PruneSchedule:
    """When record() prunes by itself: after every few records of this process, and at least once a minute."""

    def __init__(self, max_count: int) -> None:
        # A tenth of max_count at most, so the journal never holds more than about 110 % of it per process.
        self.every = max(1, min(PRUNE_EVERY_RECORDS, max_count // 10))
        self._reset()

    def _reset(self) -> None:
        """Start counting afresh (in a forked child too, whose copy of the lock may have been held)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._records = 0
        self._next_at = 0.0  # time.monotonic(): the first record prunes, whatever was left from before

    def due(self, records: int = 1) -> bool:
        """Count `records` more records; whether they should be followed by a prune."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._records += records
            if self._records < self.every and time.monotonic() < self._next_at:
                return False
            self._records = 0
            self._next_at = time.monotonic() + PRUNE_EVERY_SECONDS
            return True
