"""The event store: events and their deliveries, kept durably and shared by every gateway process.

`EventStore` is the contract; `SqliteEventStore` (one embedded file) and `RedisEventStore` (redis_store.py, one
Redis shared by several machines) implement it with the same behaviour, proven by tests/test_event_store.py.

An event is stored with one delivery per subscriber. A delivery is "pending" until it is "delivered" or "dead";
redelivering an event makes all of its deliveries pending again. The deliveries of one subscriber for one
order_key form a stream that goes out in event order: the event's `occurred_at` (compared as the string it was
given), then the store's own insertion sequence, which no caller chooses.

    EventStoreError      (ValueError)   the event cannot be stored as given
    DeliveryNotFound     (LookupError)  record_attempt named an event or subscriber the store does not know
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence

from gateway.config import StoreSettings
from gateway.sqlite_file import SqliteFile

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
                    limit: int = 100) -> list[dict]:
        """Up to `limit` events shaped like get_event's result, newest first, matching every filter given."""

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
    def close(self) -> None:
        """Release the store's connections."""


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


def matches_filters(item: dict, *, order_id: str | None, type: str | None, state: str | None) -> bool:
    """Whether a get_event-shaped item passes list_events' filters."""
    event = item["event"]
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
"""
#: version 2: who asked for a redelivery (delivery_history.requested_by)
MIGRATIONS = {2: "ALTER TABLE delivery_history ADD COLUMN requested_by TEXT",
              3: "ALTER TABLE events ADD COLUMN trace_context TEXT"}
SCHEMA_VERSION = 3


class SqliteEventStore(SqliteFile, EventStore):
    """The event store in one SQLite file (WAL), shared by threads through a small pool of connections and by
    processes."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        # FULL: an event is on disk before the webhook is answered, even if the machine loses power.
        self._open_file(path, schema=SCHEMA, schema_version=SCHEMA_VERSION, synchronous="FULL", what="event store",
                        migrations=MIGRATIONS, pragmas=("foreign_keys = ON",), stores=stores)

    def add_event(self, event: dict, *, dedupe_key: str, order_key: str, subscribers: Sequence[str],
                  now: float | None = None, trace_context: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """Store the event and one due delivery per subscriber at once; (existing id, False) if dedupe_key is known."""
        body = check_event(event)
        trace = encode_trace_context(trace_context)
        names = unique_subscribers(subscribers)
        now = timestamp(now)
        with self._write() as db:
            existing = db.execute("SELECT id FROM events WHERE dedupe_key = ?", (dedupe_key,)).fetchone()
            if existing is not None:
                return existing["id"], False
            try:
                seq = db.execute(
                    "INSERT INTO events (id, dedupe_key, order_key, type, occurred_at, backend_order_id,"
                    " order_number, body, received_at, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event["id"], dedupe_key, order_key, event["type"], event["occurred_at"],
                     *order_id_columns(event), body, now, trace),
                ).lastrowid
            except sqlite3.IntegrityError:
                raise EventStoreError(f"an event with id {event['id']!r} is already stored") from None
            db.executemany(
                "INSERT INTO deliveries (event_seq, subscriber, order_key, occurred_at, state, attempts,"
                " next_attempt_at) VALUES (?, ?, ?, ?, 'pending', 0, ?)",
                [(seq, name, order_key, event["occurred_at"], now) for name in names],
            )
        return event["id"], True

    def get_event(self, event_id: str) -> dict | None:
        """The event with its received_at and its deliveries (sorted by subscriber), or None if unknown."""
        with self._read() as db:
            row = db.execute("SELECT seq, body, received_at FROM events WHERE id = ?", (event_id,)).fetchone()
            if row is None:
                return None
            return self._items(db, [row])[0]

    def list_events(self, *, order_id: str | None = None, type: str | None = None, state: str | None = None,
                    limit: int = 100) -> list[dict]:
        """Up to `limit` events shaped like get_event's result, newest first, matching every filter given."""
        check_state(state)
        if limit <= 0:
            return []
        conditions, parameters = [], []
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
        return [(subscriber, event["order_key"]) for subscriber in subscribers]

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self._close_file()

