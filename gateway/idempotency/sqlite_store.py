"""Idempotency-Key records in one SQLite file (WAL), shared by the threads and processes of one machine.

One row per key; `expires_at` is the end of the lease of an in-progress row and the end of the life of a
completed one, and a row past it counts as absent. begin() answers from a read when the key's live row decides
it, and otherwise re-reads and claims the key in one BEGIN IMMEDIATE transaction, so only one caller creates it.
"""

from __future__ import annotations

import os
import sqlite3

from gateway.idempotency import (
    COMPLETED,
    IN_PROGRESS,
    MISMATCH,
    NEW,
    REPLAY,
    Begun,
    IdempotencyStore,
    StoredResponse,
    check_record,
    check_seconds,
    decode_headers,
    encode_headers,
    timestamp,
)
from gateway.sqlite_file import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('in-progress', 'completed')),
    expires_at  REAL NOT NULL,  -- in progress: the lease's end, completed: the record's end
    status      INTEGER,        -- the response, once completed
    headers     TEXT,           -- JSON [[name, value], ...]
    body        BLOB
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_at);
"""
SCHEMA_VERSION = 1


class SqliteIdempotencyStore(SqliteFile, IdempotencyStore):
    """The records in one SQLite file, used by threads through one connection each and by processes."""

    def __init__(self, path: str | os.PathLike) -> None:
        # FULL: a claimed key is on disk before its request goes on, so a power cut cannot run it twice.
        self._open_file(path, schema=SCHEMA, schema_version=SCHEMA_VERSION, synchronous="FULL",
                        what="idempotency store")

    @staticmethod
    def _answer(db: sqlite3.Connection, key: str, fingerprint: str, now: float) -> Begun | None:
        """What the key's live row answers to begin(), or None when there is no live row (the key is free)."""
        row = db.execute("SELECT fingerprint, state FROM idempotency_keys WHERE key = ? AND expires_at > ?",
                         (key, now)).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != fingerprint:
            return Begun(MISMATCH)
        if row["state"] == IN_PROGRESS:
            return Begun(IN_PROGRESS)
        # The body is read only for a replay; it may be megabytes.
        response = db.execute("SELECT status, headers, body FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        return Begun(REPLAY, StoredResponse(response["status"], decode_headers(response["headers"]),
                                            bytes(response["body"])))

    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """Claim the key for this request (NEW) or say why not: IN_PROGRESS, REPLAY or MISMATCH."""
        check_record(key, fingerprint)
        lease_seconds = check_seconds("lease_seconds", lease_seconds)
        now = timestamp(now)
        # Most repeats find a live row: answer them without queueing for the write lock.
        with self._read() as db:
            answer = self._answer(db, key, fingerprint, now)
        if answer is not None:
            return answer
        with self._write() as db:
            answer = self._answer(db, key, fingerprint, now)
            if answer is not None:
                return answer
            # No row, or one whose lease or life is over: this request takes the key.
            db.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, state, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, state = excluded.state,"
                " expires_at = excluded.expires_at, status = NULL, headers = NULL, body = NULL",
                (key, fingerprint, IN_PROGRESS, now + lease_seconds),
            )
        return Begun(NEW)

    def complete(self, key: str, fingerprint: str, response: StoredResponse, *, ttl_seconds: float,
                 now: float | None = None) -> None:
        """Store the response for `ttl_seconds` if the key's live in-progress marker holds this fingerprint."""
        check_record(key, fingerprint)
        ttl_seconds = check_seconds("ttl_seconds", ttl_seconds)
        if not isinstance(response, StoredResponse):
            raise TypeError(f"complete() stores a StoredResponse, not {type(response).__name__}")
        now = timestamp(now)
        with self._write() as db:
            db.execute(
                "UPDATE idempotency_keys SET state = ?, expires_at = ?, status = ?, headers = ?, body = ?"
                " WHERE key = ? AND fingerprint = ? AND state = ? AND expires_at > ?",
                (COMPLETED, now + ttl_seconds, response.status, encode_headers(response.headers), response.body,
                 key, fingerprint, IN_PROGRESS, now),
            )

    def abandon(self, key: str, fingerprint: str) -> None:
        """Delete the key's in-progress marker if it holds this fingerprint, so the key can be used afresh."""
        check_record(key, fingerprint)
        with self._write() as db:
            db.execute("DELETE FROM idempotency_keys WHERE key = ? AND fingerprint = ? AND state = ?",
                       (key, fingerprint, IN_PROGRESS))

    def purge_expired(self, now: float | None = None) -> int:
        """Delete the rows whose lease or lifetime is over; how many were deleted."""
        with self._write() as db:
            return db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (timestamp(now),)).rowcount

    def ping(self) -> None:
        """Raise if the file cannot be read (or the store is closed)."""
        self._connection().execute("SELECT 1 FROM idempotency_keys LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        self._close_file()
