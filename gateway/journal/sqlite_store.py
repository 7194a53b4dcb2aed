"""The exchange journal in one SQLite file (WAL), shared by the threads and processes of one machine.

One row per exchange in `exchanges` (the request and reply as JSON), and one row per (order id, exchange) in
`exchange_orders`, so that the order filter is an index lookup; both are written and pruned in the same
BEGIN IMMEDIATE transaction. Every filter of list() has an index that leads with it and goes on with the time.

timings() and last_at() read covering indexes only: a row of `exchanges` holds the bodies (often several pages of
overflow), so even reading its duration and outcome would cost a page read or more per exchange.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Sequence

from gateway.config import StoreSettings
from gateway.journal.base import (
    TIMINGS_LIMIT,
    Exchange,
    ExchangeJournal,
    PruneSchedule,
    check_exchange,
    check_last_at,
    check_list,
    check_retention,
    check_timings,
    connections_filter,
    encode_json,
    timestamp,
)
from gateway.sqlite_file import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    at          REAL NOT NULL,  -- UNIX seconds, when the call started
    request_id  TEXT NOT NULL,
    caller      TEXT NOT NULL,
    connection  TEXT NOT NULL,
    backend     TEXT NOT NULL,
    operation   TEXT NOT NULL,
    order_ids   TEXT NOT NULL,  -- JSON ["1001", ...], as given (exchange_orders indexes them)
    request     TEXT NOT NULL,  -- JSON {"method", "url", "headers", "body"}
    reply       TEXT,           -- JSON {"status", "headers", "body"}, NULL when no reply came
    duration_ms REAL NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS exchanges_by_time ON exchanges (at, id);
CREATE INDEX IF NOT EXISTS exchanges_by_connection ON exchanges (connection, at);
CREATE INDEX IF NOT EXISTS exchanges_by_outcome ON exchanges (outcome, at);
CREATE INDEX IF NOT EXISTS exchanges_by_request ON exchanges (request_id, at);
CREATE TABLE IF NOT EXISTS exchange_orders (
    order_id     TEXT NOT NULL,
    exchange_seq INTEGER NOT NULL REFERENCES exchanges (seq),
    PRIMARY KEY (order_id, exchange_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS exchange_orders_by_exchange ON exchange_orders (exchange_seq);
"""
#: version 2: timings() from an index alone (in list()'s order, so ties and the limit pick the same exchanges);
#: version 3: last_at() as one index lookup per outcome
MIGRATIONS = {
    2: "CREATE INDEX IF NOT EXISTS exchanges_timings_by_connection"
       " ON exchanges (connection, at, id, duration_ms, outcome)",
    3: "CREATE INDEX IF NOT EXISTS exchanges_by_connection_and_outcome ON exchanges (connection, outcome, at)",
}
SCHEMA_VERSION = 3
SELECT_EXCHANGES = ("SELECT id, at, request_id, caller, connection, backend, operation, order_ids, request, reply,"
                    " duration_ms, outcome, error FROM exchanges")
INSERT_EXCHANGE = ("INSERT INTO exchanges (id, at, request_id, caller, connection, backend, operation, order_ids,"
                   " request, reply, duration_ms, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# The oldest first, the reverse of list()'s order; the same selection twice in one transaction picks the same rows.
DELETE_ORDERS_OF_OLDEST = ("DELETE FROM exchange_orders WHERE exchange_seq IN"
                           " (SELECT seq FROM exchanges ORDER BY at, id LIMIT ?)")
DELETE_OLDEST = "DELETE FROM exchanges WHERE seq IN (SELECT seq FROM exchanges ORDER BY at, id LIMIT ?)"
SELECT_TIMINGS = ("SELECT at, duration_ms, outcome FROM exchanges WHERE connection = ? AND at >= ?"
                  " ORDER BY at DESC, id DESC LIMIT ?")
SELECT_LAST_AT = "SELECT MAX(at) FROM exchanges WHERE connection = ? AND outcome = ?"


def exchange_row(exchange: Exchange) -> tuple:
    """The exchange as the values INSERT_EXCHANGE takes."""
    return (exchange.id, exchange.at, exchange.request_id, exchange.caller, exchange.connection, exchange.backend,
            exchange.operation, encode_json(list(exchange.order_ids)), encode_json(exchange.request),
            None if exchange.reply is None else encode_json(exchange.reply), exchange.duration_ms,
            exchange.outcome, exchange.error)


def exchange_of_row(row: sqlite3.Row) -> Exchange:
    """The exchange a row of SELECT_EXCHANGES holds."""
    return Exchange(
        id=row["id"], at=row["at"], request_id=row["request_id"], caller=row["caller"],
        connection=row["connection"], backend=row["backend"], operation=row["operation"],
        order_ids=tuple(json.loads(row["order_ids"])), request=json.loads(row["request"]),
        reply=None if row["reply"] is None else json.loads(row["reply"]), duration_ms=row["duration_ms"],
        outcome=row["outcome"], error=row["error"],
    )


class SqliteExchangeJournal(SqliteFile, ExchangeJournal):
    """The exchanges in one SQLite file, used by threads through a small pool of connections and by processes."""

    def __init__(self, path: str | os.PathLike, *, max_age_seconds: float, max_count: int,
                 record_bodies: bool, stores: StoreSettings | None = None) -> None:
        self.max_age_seconds, self.max_count, self.record_bodies = check_retention(
            max_age_seconds, max_count, record_bodies)
        self._schedule = PruneSchedule(self.max_count)
        # NORMAL: in WAL mode the file stays consistent; a power cut may lose the last few exchanges, which a
        # journal can afford better than an fsync on every backend call.
        self._open_file(path, schema=SCHEMA, schema_version=SCHEMA_VERSION, synchronous="NORMAL",
                        what="exchange journal", migrations=MIGRATIONS, stores=stores)

    def record_many(self, exchanges: Sequence[Exchange]) -> None:
        """Store the exchanges in one transaction (none of them if one cannot be), pruning now and then."""
        rows = [(exchange, exchange_row(exchange))
                for exchange in (check_exchange(item, record_bodies=self.record_bodies) for item in exchanges)]
        if len({exchange.id for exchange, _ in rows}) < len(rows):
            raise ValueError("the exchanges to record name one id twice")
        with self._write() as db:
            for exchange, row in rows:
                if db.execute("SELECT 1 FROM exchanges WHERE id = ?", (exchange.id,)).fetchone() is not None:
                    raise ValueError(f"an exchange with id {exchange.id!r} is already recorded")
                seq = db.execute(INSERT_EXCHANGE, row).lastrowid
                # An order named twice in one exchange is indexed once.
                db.executemany("INSERT INTO exchange_orders (order_id, exchange_seq) VALUES (?, ?)",
                               [(order_id, seq) for order_id in dict.fromkeys(exchange.order_ids)])
        if self._schedule.due(len(rows)):
            self.prune()

    def get(self, exchange_id: str) -> Exchange | None:
        """The exchange with this id, or None if it is unknown (or pruned)."""
        with self._borrowed() as db:
            row = db.execute(SELECT_EXCHANGES + " WHERE id = ?", (exchange_id,)).fetchone()
        return None if row is None else exchange_of_row(row)

    def list(self, *, order_id: str | None = None, connection: str | None = None, outcome: str | None = None,
             request_id: str | None = None, since: float | None = None, limit: int = 100,
             connections: Collection[str] | None = None) -> list[Exchange]:
        """Up to `limit` exchanges matching every filter given, newest first (ties in descending id order)."""
        since = check_list(order_id=order_id, connection=connection, outcome=outcome, request_id=request_id,
                           since=since, limit=limit)
        allowed = connections_filter(connections, connection)
        if allowed == frozenset():
            return []
        conditions, parameters = [], []
        if allowed is not None:
            conditions.append(f"connection IN ({', '.join('?' * len(allowed))})")
            parameters += sorted(allowed)
        for condition, value in (
            ("seq IN (SELECT exchange_seq FROM exchange_orders WHERE order_id = ?)", order_id),
            ("outcome = ?", outcome),
            ("request_id = ?", request_id),
            ("at >= ?", since),
        ):
            if value is not None:
                conditions.append(condition)
                parameters.append(value)
        # Only the fixed fragments above are joined into the SQL; every value is a parameter.
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        with self._borrowed() as db:
            rows = db.execute(SELECT_EXCHANGES + where + " ORDER BY at DESC, id DESC LIMIT ?",
                              (*parameters, limit)).fetchall()
        return [exchange_of_row(row) for row in rows]

    def timings(self, connection: str, *, since: float, limit: int = TIMINGS_LIMIT) -> list[tuple[float, float, str]]:
        """(at, duration_ms, outcome) of the connection's exchanges that started at `since` or later, newest first
        (ties in descending id order), at most `limit`; read from exchanges_timings_by_connection alone."""
        since = check_timings(connection, since=since, limit=limit)
        with self._borrowed() as db:
            rows = db.execute(SELECT_TIMINGS, (connection, since, limit)).fetchall()
        return [(row["at"], row["duration_ms"], row["outcome"]) for row in rows]

    def last_at(self, connection: str, outcomes: Collection[str]) -> float | None:
        """When the connection's most recent exchange with one of these outcomes started (None: none kept)."""
        outcomes = check_last_at(connection, outcomes)
        with self._read() as db:
            found = [db.execute(SELECT_LAST_AT, (connection, outcome)).fetchone()[0] for outcome in outcomes]
        return max((at for at in found if at is not None), default=None)

    def prune(self, *, now: float | None = None) -> int:
        """Delete the exchanges older than max_age_seconds, then the oldest beyond max_count; how many were deleted."""
        cutoff = timestamp(now) - self.max_age_seconds
        with self._write() as db:
            db.execute("DELETE FROM exchange_orders WHERE exchange_seq IN (SELECT seq FROM exchanges WHERE at < ?)",
                       (cutoff,))
            deleted = db.execute("DELETE FROM exchanges WHERE at < ?", (cutoff,)).rowcount
            excess = db.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0] - self.max_count
            if excess > 0:
                db.execute(DELETE_ORDERS_OF_OLDEST, (excess,))
                deleted += db.execute(DELETE_OLDEST, (excess,)).rowcount
        return deleted

    def ping(self) -> None:
        """Raise if the file cannot be read (or the journal is closed)."""
        with self._borrowed() as db:
            db.execute("SELECT 1 FROM exchanges LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every connection; the journal cannot be used afterwards."""
        self._close_file()
