"""The event store: events and their deliveries, kept durably and shared by every gateway process.

`EventStore` is the contract; `SqliteEventStore` (one embedded file) and `RedisEventStore` (redis_store.py, one
Redis shared by several machines) implement it with the same behaviour, proven by tests/test_event_store.py.

An event is stored with one delivery per subscriber. A delivery is "pending" until it is "delivered" or "dead";
redelivering an event makes all of its deliveries pending again. The deliveries of one subscriber for one
order_key form a stream that goes out in event order: the event's `occurred_at` (compared as the string it was
given), then the store's own insertion sequence, which no caller chooses.

An event is "settled" once none of its deliveries is pending (at once when it has no subscribers); the store keeps
when it settled, and purge_settled() removes events that settled long enough ago, with their deliveries, a bounded
batch at a time. Redelivering an event unsettles it. A dedupe key names the connection the event came from
(`<connection>:...`); stores of earlier versions, whose keys named the backend (`<backend>:...`), are rewritten
when opened (connection_dedupe_key).

    EventStoreError      (ValueError)   the event cannot be stored as given
    DeliveryNotFound     (LookupError)  record_attempt named an event or subscriber the store does not know
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

from gateway.config import StoreSettings
from gateway.sqlite_file import GROUP_COMMIT_SLACK_SECONDS, GroupCommit, SqliteFile

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
DELIVERY_STATES = (PENDING, DELIVERED, DEAD)
#: the outcomes record_attempt accepts; "redeliver" appears in histories only, written by redeliver()
ATTEMPT_OUTCOMES = ("delivered", "failed", "dead")
REDELIVER = "redeliver"
#: pending_counts counts no further: enough to see a backlog grow, bounded in what a scrape costs
PENDING_COUNT_LIMIT = 100_000


class EventStoreError(ValueError):
    """The event cannot be stored as given (missing fields, not JSON-able, or its id is taken)."""


class DeliveryNotFound(LookupError):
    """No delivery of that event to that subscriber is stored."""


class EventStore(abc.ABC):
    """Stores events with their deliveries and answers what to deliver next; safe across threads and processes."""

    @abc.abstractmethod
    def add_event(self, event: dict, *, dedupe_key: str, order_key: str, subscribers: Sequence[str],
                  now: float | None = None, trace_context: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """Store the event and one due delivery per subscriber at once; (existing id, False) if dedupe_key is known.

        `trace_context` (W3C traceparent and tracestate headers) is the trace the event's deliveries continue."""

    @abc.abstractmethod
    def get_event(self, event_id: str) -> dict | None:
        """The event with its received_at and its deliveries (sorted by subscriber), or None if unknown."""

    @abc.abstractmethod
    def list_events(self, *, order_id: str | None = None, type: str | None = None, state: str | None = None,
                    limit: int = 100, connections: Collection[str] | None = None,
                    before: str | None = None) -> list[dict]:
        """Up to `limit` events shaped like get_event's result, newest first, matching every filter given.

        `connections`: only events whose source connection is one of these (None: any event; empty: none).
        `before`: only events stored before the event of this id, which must itself pass `connections` (else
        nothing is listed, as for an unknown id: the cursor tells nothing of events the caller may not see)."""

    @abc.abstractmethod
    def next_delivery(self, subscriber: str, order_key: str) -> dict | None:
        """The pending delivery that heads this stream in event order, due or not, with its event's received_at and
        trace_context (a dict, empty when none was stored); None if nothing is pending."""

    @abc.abstractmethod
    def record_attempt(self, event_id: str, subscriber: str, *, outcome: str, status_code: int | None = None,
                       error: str | None = None, next_attempt_at: float | None = None,
                       now: float | None = None) -> None:
        """Add one attempt ("delivered", "failed" or "dead") to the delivery's history and update its state."""

    @abc.abstractmethod
    def pending_streams(self) -> list[tuple[str, str]]:
        """Every (subscriber, order_key) with at least one pending delivery, sorted."""

    @abc.abstractmethod
    def pending_counts(self, subscribers: Sequence[str], *, limit: int = PENDING_COUNT_LIMIT) -> dict[str, int]:
        """How many deliveries to each of these subscribers are pending, each counted up to `limit` (so a backlog
        of millions costs no more than `limit` to count)."""

    @abc.abstractmethod
    def redeliver(self, event_id: str, *, now: float | None = None,
                  requested_by: str | None = None) -> list[tuple[str, str]] | None:
        """Make every delivery of the event pending and due now with 0 attempts, noting who asked in its history;
        the streams to nudge, or None."""

    @abc.abstractmethod
    def purge_settled(self, *, settled_by: float, limit: int) -> int:
        """Delete up to `limit` events (oldest settled first) that settled at or before `settled_by`, with their
        deliveries and dedupe keys, in one transaction; how many were deleted. Pending events are never deleted."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


def connection_dedupe_key(dedupe_key: str, event: dict) -> str:
    """The dedupe key of a stored event as this version keeps it: earlier versions' `<backend>:<rest>` becomes
    `<connection>:<rest>` (the event's source names both); any other key stays as it is."""
    source = event.get("source")
    if not isinstance(source, dict):
        return dedupe_key
    backend, connection = source.get("backend"), source.get("connection")
    if not isinstance(backend, str) or not isinstance(connection, str) or not dedupe_key.startswith(backend + ":"):
        return dedupe_key
    return connection + dedupe_key[len(backend):]


# Helpers both implementations share, so they agree on every detail of validation and filtering.

def timestamp(now: float | None) -> float:
    """The caller's time as a float (UNIX seconds), or the current time when none is given."""
    return time.time() if now is None else float(now)


def check_event(event: dict) -> str:
    """The event serialised as JSON text, after checking the fields the store relies on."""
    if not isinstance(event, dict):
        raise EventStoreError("an event must be a dict")
    for name in ("id", "type", "occurred_at"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise EventStoreError(f"an event needs a non-empty string {name!r}")
    # The Redis store separates the parts of its stream ordering keys with NUL.
    if "\x00" in event["occurred_at"]:
        raise EventStoreError("an event's 'occurred_at' must not contain NUL")
    try:
        return json.dumps(event, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EventStoreError(f"an event must be JSON-able: {error}") from None


#: the trace context headers an event keeps, and the most of each it keeps (W3C: traceparent is 55 characters,
#: tracestate at most 512)
TRACE_HEADERS = {"traceparent": 55, "tracestate": 512}


def encode_trace_context(trace_context: Mapping[str, str] | None) -> str:
    """The trace context headers as the stores keep them: JSON text, "" for none."""
    kept = {name: value for name, value in (trace_context or {}).items()
            if name in TRACE_HEADERS and isinstance(value, str) and 0 < len(value) <= TRACE_HEADERS[name]}
    return json.dumps(kept, separators=(",", ":")) if "traceparent" in kept else ""


def decode_trace_context(text: str | None) -> dict[str, str]:
    """The trace context headers a store kept (empty for an event stored without, or before they were kept)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {name: item for name, item in value.items() if name in TRACE_HEADERS and isinstance(item, str)} \
        if isinstance(value, dict) else {}


def check_outcome(outcome: str) -> None:
    """Refuse an outcome record_attempt does not know."""
    if outcome not in ATTEMPT_OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; one of: {', '.join(ATTEMPT_OUTCOMES)}")


def check_state(state: str | None) -> None:
    """Refuse a state filter that can never match."""
    if state is not None and state not in DELIVERY_STATES:
        raise ValueError(f"unknown delivery state {state!r}; one of: {', '.join(DELIVERY_STATES)}")


def unique_subscribers(subscribers: Sequence[str]) -> list[str]:
    """The subscribers in their given order, each once (an event has one delivery per subscriber)."""
    if isinstance(subscribers, str):
        raise TypeError("subscribers must be a sequence of names, not one string")
    return list(dict.fromkeys(subscribers))


def order_id_columns(event: dict) -> tuple[str | None, str | None]:
    """The order's backend_order_id and order_number as the strings an order_id filter compares (None if absent)."""
    order = event.get("order")
    if not isinstance(order, dict):
        return None, None
    backend_order_id, order_number = order.get("backend_order_id"), order.get("order_number")
    return (None if backend_order_id is None else str(backend_order_id),
            None if order_number is None else str(order_number))


def order_ids(event: dict) -> list[str]:
    """The distinct ids an order_id filter matches for this event."""
    return [value for value in dict.fromkeys(order_id_columns(event)) if value is not None]


def event_connection(event: dict) -> str | None:
    """The connection an event came from (its source's), or None when it names none."""
    source = event.get("source")
    connection = source.get("connection") if isinstance(source, dict) else None
    return connection if isinstance(connection, str) else None


def check_connections(connections: Collection[str] | None) -> frozenset[str] | None:
    """A connections filter as a set of names (None: no filter; empty: nothing passes); one string is refused."""
    if connections is None:
        return None
    if isinstance(connections, str | bytes) or not isinstance(connections, Collection):
        raise TypeError("connections are a collection of names, not one string")
    names = frozenset(connections)
    if not all(isinstance(name, str) for name in names):
        raise TypeError("connections are a collection of names")
    return names


def matches_filters(item: dict, *, order_id: str | None, type: str | None, state: str | None,
                    connections: frozenset[str] | None = None) -> bool:
    """Whether a get_event-shaped item passes list_events' filters."""
    event = item["event"]
    if connections is not None and event_connection(event) not in connections:
        return False
    if type is not None and event.get("type") != type:
        return False
    if order_id is not None and str(order_id) not in order_ids(event):
        return False
    return state is None or any(delivery["state"] == state for delivery in item["deliveries"])


def history_entry(attempt: int, at: float, outcome: str, status_code: int | None, error: str | None) -> dict:
    """One line of a delivery's history."""
    return {"attempt": attempt, "at": at, "outcome": outcome, "status_code": status_code, "error": error}


def new_delivery(subscriber: str, now: float) -> dict:
    """A delivery as add_event creates it: pending, due now, never tried."""
    return {"subscriber": subscriber, "state": PENDING, "attempts": 0, "next_attempt_at": now, "last_error": None,
            "delivered_at": None, "history": []}


def apply_attempt(delivery: dict, *, outcome: str, status_code: int | None, error: str | None,
                  next_attempt_at: float | None, now: float) -> dict:
    """The delivery after one attempt with this outcome (every attempt counts, a successful one too)."""
    attempts = delivery["attempts"] + 1
    updated = {**delivery, "attempts": attempts,
               "history": [*delivery["history"], history_entry(attempts, now, outcome, status_code, error)]}
    if outcome == "delivered":
        updated.update(state=DELIVERED, delivered_at=now, next_attempt_at=None)
    elif outcome == "failed":
        # A failed delivery without a retry time is due again at once rather than never.
        updated.update(state=PENDING, next_attempt_at=now if next_attempt_at is None else float(next_attempt_at),
                       last_error=error)
    else:
        updated.update(state=DEAD, next_attempt_at=None, last_error=error)
    return updated


def apply_redeliver(delivery: dict, now: float, requested_by: str | None = None) -> dict:
    """The delivery made pending again: due now, 0 attempts, errors cleared, its history kept and extended with
    who asked for it."""
    return {**delivery, "state": PENDING, "attempts": 0, "next_attempt_at": now, "last_error": None,
            "delivered_at": None,
            "history": [*delivery["history"],
                        {**history_entry(0, now, REDELIVER, None, None), "requested_by": requested_by}]}


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, decided here and never reused
    id               TEXT NOT NULL UNIQUE,
    dedupe_key       TEXT NOT NULL UNIQUE,
    order_key        TEXT NOT NULL,
    type             TEXT NOT NULL,
    occurred_at      TEXT NOT NULL,
    backend_order_id TEXT,
    order_number     TEXT,
    body             TEXT NOT NULL,                      -- the event as JSON
    received_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, seq);
CREATE INDEX IF NOT EXISTS events_by_backend_order_id ON events (backend_order_id, seq);
CREATE INDEX IF NOT EXISTS events_by_order_number ON events (order_number, seq);

CREATE TABLE IF NOT EXISTS deliveries (
    event_seq       INTEGER NOT NULL REFERENCES events (seq),
    subscriber      TEXT NOT NULL,
    order_key       TEXT NOT NULL,  -- copied from the event so one index serves next_delivery
    occurred_at     TEXT NOT NULL,  -- likewise
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL,
    next_attempt_at REAL,
    last_error      TEXT,
    delivered_at    REAL,
    PRIMARY KEY (event_seq, subscriber)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_deliveries_in_stream_order
    ON deliveries (subscriber, order_key, occurred_at, event_seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state, event_seq);

CREATE TABLE IF NOT EXISTS delivery_history (
    line        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq   INTEGER NOT NULL,
    subscriber  TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          REAL NOT NULL,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    FOREIGN KEY (event_seq, subscriber) REFERENCES deliveries (event_seq, subscriber)
);
CREATE INDEX IF NOT EXISTS delivery_history_by_delivery ON delivery_history (event_seq, subscriber, line);

CREATE TABLE IF NOT EXISTS settled_events (
    event_seq  INTEGER PRIMARY KEY REFERENCES events (seq),
    settled_at REAL NOT NULL  -- when its last pending delivery was delivered or went dead (or it was stored without)
);
CREATE INDEX IF NOT EXISTS settled_events_by_time ON settled_events (settled_at);
"""
#: version 5: dedupe keys name the connection rather than the backend (the SQL form of connection_dedupe_key;
#: OR IGNORE keeps the old key of the rare event whose new key another event has already)
CONNECTION_DEDUPE_KEYS = (
    "UPDATE OR IGNORE events SET dedupe_key = json_extract(body, '$.source.connection')"
    " || substr(dedupe_key, length(json_extract(body, '$.source.backend')) + 1)"
    " WHERE json_type(body, '$.source.connection') = 'text' AND json_type(body, '$.source.backend') = 'text'"
    " AND substr(dedupe_key, 1, length(json_extract(body, '$.source.backend')) + 1)"
    " = json_extract(body, '$.source.backend') || ':'")
#: version 6: the events settled before settled_events existed, settled when their last attempt was made
SETTLED_BEFORE_VERSION_6 = (
    "INSERT OR IGNORE INTO settled_events (event_seq, settled_at)"
    " SELECT seq, max(received_at, COALESCE((SELECT MAX(at) FROM delivery_history"
    " WHERE delivery_history.event_seq = events.seq), received_at)) FROM events"
    " WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.event_seq = events.seq"
    " AND deliveries.state = 'pending')")
#: the connection an event came from, as list_events' connections filter reads it (and its index holds it)
CONNECTION_OF_BODY = "json_extract(body, '$.source.connection')"
#: version 2: who asked for a redelivery (delivery_history.requested_by); version 4: the connections filter as an
#: index lookup
MIGRATIONS = {2: "ALTER TABLE delivery_history ADD COLUMN requested_by TEXT",
              3: "ALTER TABLE events ADD COLUMN trace_context TEXT",
              4: f"CREATE INDEX IF NOT EXISTS events_by_connection ON events ({CONNECTION_OF_BODY}, seq)",
              5: CONNECTION_DEDUPE_KEYS,
              6: SETTLED_BEFORE_VERSION_6}
SCHEMA_VERSION = 6




class NewEventRow(NamedTuple):
    """An event checked and serialised for add_event, ready to insert."""

    event_id: str
    dedupe_key: str
    order_key: str
    type: str
    occurred_at: str
    order_columns: tuple[str | None, str | None]
    body: str
    subscribers: list[str]
    now: float
    trace: str


class SqliteEventStore(SqliteFile, EventStore):
    """The event store in one SQLite file (WAL), shared by threads through a small pool of connections and by
    processes."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        # FULL: an event is on disk before the webhook is answered, even if the machine loses power.
        self._open_file(path, schema=SCHEMA, schema_version=SCHEMA_VERSION, synchronous="FULL", what="event store",
                        migrations=MIGRATIONS, pragmas=("foreign_keys = ON",), stores=stores)
        # A batch waits for at most the pool and the write lock, then its commit; a retry one by one as long again.
        self._group_commit = GroupCommit(self._add_events, what=self._what,
                                         wait_seconds=4 * self._busy_timeout + GROUP_COMMIT_SLACK_SECONDS)

    def add_event(self, event: dict, *, dedupe_key: str, order_key: str, subscribers: Sequence[str],
                  now: float | None = None, trace_context: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """Store the event and one due delivery per subscriber at once; (existing id, False) if dedupe_key is known.

        Returns once the event is committed to disk, in one transaction with whatever other threads of this
        process added meanwhile (GroupCommit)."""
        body = check_event(event)
        trace = encode_trace_context(trace_context)
        names = unique_subscribers(subscribers)
        row = NewEventRow(event["id"], dedupe_key, order_key, event["type"], event["occurred_at"],
                          order_id_columns(event), body, names, timestamp(now), trace)
        return self._group_commit.submit(row)

    def _add_events(self, rows: Sequence[NewEventRow]) -> list[tuple[str, bool] | BaseException]:
        """Store these events in one transaction, the outcome of each in order; should the transaction fail, each
        is tried again in one of its own, so a bad event fails alone."""
        try:
            with self._write() as db:
                outcomes: list[tuple[str, bool] | BaseException] = []
                for row in rows:
                    try:
                        outcomes.append(self._insert_event(db, row))
                    except EventStoreError as error:  # its INSERT failed whole: the others stand
                        outcomes.append(error)
            return outcomes
        except Exception as error:
            if len(rows) == 1:
                return [error]
        return [self._add_events([row])[0] for row in rows]

    @staticmethod
    def _insert_event(db: sqlite3.Connection, row: NewEventRow) -> tuple[str, bool]:
        """Insert one event with its deliveries in the open transaction; (existing id, False) if its key is known."""
        existing = db.execute("SELECT id FROM events WHERE dedupe_key = ?", (row.dedupe_key,)).fetchone()
        if existing is not None:
            return existing["id"], False
        try:
            seq = db.execute(
                "INSERT INTO events (id, dedupe_key, order_key, type, occurred_at, backend_order_id,"
                " order_number, body, received_at, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.event_id, row.dedupe_key, row.order_key, row.type, row.occurred_at, *row.order_columns,
                 row.body, row.now, row.trace),
            ).lastrowid
        except sqlite3.IntegrityError:
            raise EventStoreError(f"an event with id {row.event_id!r} is already stored") from None
        db.executemany(
            "INSERT INTO deliveries (event_seq, subscriber, order_key, occurred_at, state, attempts,"
            " next_attempt_at) VALUES (?, ?, ?, ?, 'pending', 0, ?)",
            [(seq, name, row.order_key, row.occurred_at, row.now) for name in row.subscribers],
        )
        if not row.subscribers:
            db.execute("INSERT INTO settled_events (event_seq, settled_at) VALUES (?, ?)", (seq, row.now))
        return row.event_id, True

    def get_event(self, event_id: str) -> dict | None:
        """The event with its received_at and its deliveries (sorted by subscriber), or None if unknown."""
        with self._read() as db:
            row = db.execute("SELECT seq, body, received_at FROM events WHERE id = ?", (event_id,)).fetchone()
            if row is None:
                return None
            return self._items(db, [row])[0]

    def list_events(self, *, order_id: str | None = None, type: str | None = None, state: str | None = None,
                    limit: int = 100, connections: Collection[str] | None = None,
                    before: str | None = None) -> list[dict]:
        """Up to `limit` events shaped like get_event's result, newest first, matching every filter given."""
        check_state(state)
        connections = check_connections(connections)
        if limit <= 0 or connections == frozenset():
            return []
        conditions, parameters = [], []
        names = sorted(connections or ())
        in_connections = f"{CONNECTION_OF_BODY} IN ({', '.join('?' * len(names))})"
        if connections is not None:
            conditions.append(in_connections)
            parameters += names
        if before is not None:
            # The cursor passes the connections filter too; an unknown or hidden one is NULL, and no row passes.
            cursor = "SELECT seq FROM events WHERE id = ?" + (  # noqa: S608 - only fixed SQL fragments are joined
                f" AND {in_connections}" if connections is not None else "")
            conditions.append(f"seq < ({cursor})")
            parameters += [before, *names]
        if order_id is not None:
            conditions.append("(backend_order_id = ? OR order_number = ?)")
            parameters += [str(order_id), str(order_id)]
        if type is not None:
            conditions.append("type = ?")
            parameters.append(type)
        if state is not None:
            conditions.append("EXISTS (SELECT 1 FROM deliveries WHERE deliveries.event_seq = events.seq"
                              " AND deliveries.state = ?)")
            parameters.append(state)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._read() as db:
            rows = db.execute(f"SELECT seq, body, received_at FROM events {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608 - only fixed SQL fragments are joined
                              (*parameters, limit)).fetchall()
            return self._items(db, rows)

    @staticmethod
    def _items(db: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[dict]:
        """get_event-shaped items for these event rows, their deliveries and histories read in two queries."""
        if not rows:
            return []
        seqs = [row["seq"] for row in rows]
        marks = ", ".join("?" * len(seqs))
        deliveries: dict[int, dict[str, dict]] = {seq: {} for seq in seqs}
        for row in db.execute(
                "SELECT event_seq, subscriber, state, attempts, next_attempt_at, last_error, delivered_at"  # noqa: S608 - placeholders only
                f" FROM deliveries WHERE event_seq IN ({marks}) ORDER BY event_seq, subscriber", seqs):
            deliveries[row["event_seq"]][row["subscriber"]] = {
                "subscriber": row["subscriber"], "state": row["state"], "attempts": row["attempts"],
                "next_attempt_at": row["next_attempt_at"], "last_error": row["last_error"],
                "delivered_at": row["delivered_at"], "history": [],
            }
        for row in db.execute(
                "SELECT event_seq, subscriber, attempt, at, outcome, status_code, error, requested_by"  # noqa: S608 - placeholders only
                f" FROM delivery_history WHERE event_seq IN ({marks}) ORDER BY line", seqs):
            entry = history_entry(row["attempt"], row["at"], row["outcome"], row["status_code"], row["error"])
            if row["outcome"] == REDELIVER:
                entry["requested_by"] = row["requested_by"]
            deliveries[row["event_seq"]][row["subscriber"]]["history"].append(entry)
        return [{"event": json.loads(row["body"]), "received_at": row["received_at"],
                 "deliveries": list(deliveries[row["seq"]].values())} for row in rows]

    def next_delivery(self, subscriber: str, order_key: str) -> dict | None:
        """The pending delivery that heads this stream in event order, due or not, with its event's received_at;
        None if nothing is pending."""
        with self._borrowed() as db:
            row = db.execute(
                "SELECT e.id, e.body, e.received_at, e.trace_context, d.attempts, d.next_attempt_at"
                " FROM deliveries AS d JOIN events AS e"
                " ON e.seq = d.event_seq WHERE d.subscriber = ? AND d.order_key = ? AND d.state = 'pending'"
                " ORDER BY d.occurred_at, d.event_seq LIMIT 1",
                (subscriber, order_key),
            ).fetchone()
        if row is None:
            return None
        return {"event_id": row["id"], "event": json.loads(row["body"]), "received_at": row["received_at"],
                "trace_context": decode_trace_context(row["trace_context"]),
                "attempts": row["attempts"], "next_attempt_at": row["next_attempt_at"]}

    def record_attempt(self, event_id: str, subscriber: str, *, outcome: str, status_code: int | None = None,
                       error: str | None = None, next_attempt_at: float | None = None,
                       now: float | None = None) -> None:
        """Add one attempt ("delivered", "failed" or "dead") to the delivery's history and update its state."""
        check_outcome(outcome)
        now = timestamp(now)
        with self._write() as db:
            row = db.execute(
                "SELECT d.event_seq, d.state, d.attempts, d.next_attempt_at, d.last_error, d.delivered_at"
                " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq WHERE e.id = ? AND d.subscriber = ?",
                (event_id, subscriber),
            ).fetchone()
            if row is None:
                raise DeliveryNotFound(f"no delivery of event {event_id!r} to {subscriber!r}")
            # Only the new history line is wanted back: _save_delivery appends, it never rewrites history.
            before = {"subscriber": subscriber, "state": row["state"], "attempts": row["attempts"],
                      "next_attempt_at": row["next_attempt_at"], "last_error": row["last_error"],
                      "delivered_at": row["delivered_at"], "history": []}
            after = apply_attempt(before, outcome=outcome, status_code=status_code, error=error,
                                  next_attempt_at=next_attempt_at, now=now)
            self._save_delivery(db, row["event_seq"], after)
            self._note_settled(db, row["event_seq"], now)

    @staticmethod
    def _note_settled(db: sqlite3.Connection, seq: int, now: float) -> None:
        """After a delivery changed: the event settled now if none of its deliveries is pending, else not."""
        if db.execute("SELECT 1 FROM deliveries WHERE event_seq = ? AND state = 'pending' LIMIT 1",
                      (seq,)).fetchone() is not None:
            db.execute("DELETE FROM settled_events WHERE event_seq = ?", (seq,))
        else:
            db.execute("INSERT INTO settled_events (event_seq, settled_at) VALUES (?, ?)"
                       " ON CONFLICT (event_seq) DO UPDATE SET settled_at = excluded.settled_at", (seq, now))

    @staticmethod
    def _save_delivery(db: sqlite3.Connection, seq: int, delivery: dict) -> None:
        """Write a delivery's state and append its new history lines (the ones `delivery["history"]` holds)."""
        db.execute(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, delivered_at = ?"
            " WHERE event_seq = ? AND subscriber = ?",
            (delivery["state"], delivery["attempts"], delivery["next_attempt_at"], delivery["last_error"],
             delivery["delivered_at"], seq, delivery["subscriber"]),
        )
        db.executemany(
            "INSERT INTO delivery_history (event_seq, subscriber, attempt, at, outcome, status_code, error,"
            " requested_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(seq, delivery["subscriber"], line["attempt"], line["at"], line["outcome"], line["status_code"],
              line["error"], line.get("requested_by")) for line in delivery["history"]],
        )

    def pending_streams(self) -> list[tuple[str, str]]:
        """Every (subscriber, order_key) with at least one pending delivery, sorted."""
        with self._borrowed() as db:
            rows = db.execute(
                "SELECT DISTINCT subscriber, order_key FROM deliveries WHERE state = 'pending'"
                " ORDER BY subscriber, order_key").fetchall()
        return [(row["subscriber"], row["order_key"]) for row in rows]

    def pending_counts(self, subscribers: Sequence[str], *, limit: int = PENDING_COUNT_LIMIT) -> dict[str, int]:
        """How many deliveries to each of these subscribers are pending, each counted up to `limit`."""
        # INDEXED BY: each count walks this subscriber's part of the partial index of pending deliveries, never
        # the other subscribers', and no further than `limit` entries.
        with self._borrowed() as db:
            return {subscriber: db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries INDEXED BY pending_deliveries_in_stream_order"
                " WHERE subscriber = ? AND state = 'pending' LIMIT ?)",
                (subscriber, max(limit, 0))).fetchone()[0] for subscriber in unique_subscribers(subscribers)}

    def redeliver(self, event_id: str, *, now: float | None = None,
                  requested_by: str | None = None) -> list[tuple[str, str]] | None:
        """Make every delivery of the event pending and due now with 0 attempts; the streams to nudge, or None."""
        now = timestamp(now)
        with self._write() as db:
            event = db.execute("SELECT seq, order_key FROM events WHERE id = ?", (event_id,)).fetchone()
            if event is None:
                return None
            subscribers = [row["subscriber"] for row in db.execute(
                "SELECT subscriber FROM deliveries WHERE event_seq = ? ORDER BY subscriber", (event["seq"],))]
            for subscriber in subscribers:
                # Only the new history line is passed on: _save_delivery appends, it never rewrites history.
                self._save_delivery(db, event["seq"], apply_redeliver(
                    {"subscriber": subscriber, "history": []}, now, requested_by))
            if subscribers:
                db.execute("DELETE FROM settled_events WHERE event_seq = ?", (event["seq"],))
        return [(subscriber, event["order_key"]) for subscriber in subscribers]

    def purge_settled(self, *, settled_by: float, limit: int) -> int:
        """Delete up to `limit` events that settled at or before `settled_by`, oldest settled first, with their
        deliveries and histories, in one transaction; how many were deleted."""
        if limit <= 0:
            return 0
        with self._write() as db:
            # The pending check guards against a settled row left by a process of an earlier version, whose
            # redeliver did not remove it.
            seqs = [row["event_seq"] for row in db.execute(
                "SELECT event_seq FROM settled_events AS s WHERE settled_at <= ? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries WHERE deliveries.event_seq = s.event_seq AND state = 'pending')"
                " ORDER BY settled_at LIMIT ?", (float(settled_by), limit))]
            if not seqs:
                return 0
            marks = ", ".join("?" * len(seqs))
            for statement in ("DELETE FROM delivery_history WHERE event_seq IN ({})",
                              "DELETE FROM deliveries WHERE event_seq IN ({})",
                              "DELETE FROM settled_events WHERE event_seq IN ({})",
                              "DELETE FROM events WHERE seq IN ({})"):
                db.execute(statement.format(marks), seqs)
        return len(seqs)

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self._close_file()

