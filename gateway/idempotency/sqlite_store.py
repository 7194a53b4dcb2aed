"""Idempotency-Key records in one SQLite file (WAL), shared by the threads and processes of one machine.

One row per key; `expires_at` is the end of the lease of an in-progress row and the end of the life of an
attempted or completed one, and a row past it counts as absent; `lease_until` is an in-progress row's lease, and
`attempts` the calls noted on it (lines of JSON). begin() is one BEGIN IMMEDIATE transaction: it claims a key
that has no live row with one statement, and otherwise reads the row to answer (or to take over a key whose
holder is gone and whose calls may be repeated), so only one caller claims a key and a fresh key costs one write.

Commits are WAL with `synchronous = NORMAL`: each one is in the WAL file, so every other process sees it and a
crash of the process that made it loses nothing; a power loss or an operating system crash may take back the
commits since the last sync. Except the note of a call about to be sent (attempt()): it is synced to disk before
the call goes out, so not even a power cut can make a retry send again a call that may have been applied
(docs/operations.md, "Durability").
"""

from __future__ import annotations

import os
import sqlite3

from gateway.config import StoreSettings
from gateway.idempotency.base import (
    COMPLETED,
    IN_PROGRESS,
    MISMATCH,
    NEW,
    OUTCOME_UNKNOWN,
    REPLAY,
    Attempt,
    Begun,
    IdempotencyStore,
    StoredResponse,
    check_attempt,
    check_record,
    check_seconds,
    decode_attempts,
    decode_headers,
    encode_attempt,
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
#: what a file of an older version lacks: an in-progress row's lease once expires_at is its life, and the calls
#: noted on it (lines of JSON, one per call)
#: claims a key for a request: a new row, or the key's row made afresh (with a WHERE: only a row that is over)
CLAIM = ("INSERT INTO idempotency_keys (key, fingerprint, state, expires_at, lease_until) VALUES (?, ?, ?, ?, ?)"
         " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, state = excluded.state,"
         " expires_at = excluded.expires_at, lease_until = excluded.lease_until, attempts = NULL,"
         " status = NULL, headers = NULL, body = NULL")
MIGRATIONS = {
    2: "ALTER TABLE idempotency_keys ADD COLUMN lease_until REAL",
    3: "ALTER TABLE idempotency_keys ADD COLUMN attempts TEXT",
}
SCHEMA_VERSION = 3


class SqliteIdempotencyStore(SqliteFile, IdempotencyStore):
    """The records in one SQLite file, used by threads through a small pool of connections and by processes."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        # NORMAL: a commit survives the crash of any gateway process without an fsync of its own (see above).
        self._open_file(path, schema=SCHEMA, schema_version=SCHEMA_VERSION, synchronous="NORMAL",
                        what="idempotency store", migrations=MIGRATIONS, stores=stores)

    @staticmethod
    def _answer(db: sqlite3.Connection, key: str, fingerprint: str, now: float) -> Begun | None:
        """What the key's live row answers to begin(), or None when there is no live row (the key is free)."""
        row = db.execute("SELECT fingerprint, state, lease_until, attempts FROM idempotency_keys"
                         " WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != fingerprint:
            return Begun(MISMATCH)
        if row["state"] == IN_PROGRESS:
            if row["attempts"] is None or row["lease_until"] is None or row["lease_until"] > now:
                return Begun(IN_PROGRESS)
            attempts = decode_attempts(row["attempts"])
            if all(attempt.idempotent for attempt in attempts):
                return None  # its holder is gone, and sending its calls again is harmless: the key is free
            return Begun(OUTCOME_UNKNOWN, attempts=attempts)
        # The body is read only for a replay; it may be megabytes.
        response = db.execute("SELECT status, headers, body FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        return Begun(REPLAY, StoredResponse(response["status"], decode_headers(response["headers"]),
                                            bytes(response["body"])))

    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """Claim the key for this request (NEW) or say why not: IN_PROGRESS, REPLAY, MISMATCH or OUTCOME_UNKNOWN."""
        check_record(key, fingerprint)
        lease_seconds = check_seconds("lease_seconds", lease_seconds)
        now = timestamp(now)
        claim = (key, fingerprint, IN_PROGRESS, now + lease_seconds, now + lease_seconds)
        with self._write() as db:
            # A key without a row, or whose row's lease or life is over, is this request's in one statement.
            if db.execute(CLAIM + " WHERE idempotency_keys.expires_at <= ?", (*claim, now)).rowcount == 1:
                return Begun(NEW)
            answer = self._answer(db, key, fingerprint, now)
            if answer is not None:
                return answer
            # An idempotent one whose holder is gone: this request takes the key.
            db.execute(CLAIM, claim)
        return Begun(NEW)

    def attempt(self, key: str, fingerprint: str, attempt: Attempt, *, ttl_seconds: float,
                now: float | None = None) -> bool:
        """Note a call about to be sent on the key's in-progress marker, if it holds this fingerprint and its lease
        runs; the record then lives at least `ttl_seconds`. Whether it was noted (if not, the call must not go)."""
        check_record(key, fingerprint)
        check_attempt(attempt)
        ttl_seconds = check_seconds("ttl_seconds", ttl_seconds)
        now = timestamp(now)
        with self._write(durable=True) as db:
            # The right-hand sides read the row as it was: a first attempt keeps the lease that expires_at held.
            return db.execute(
                "UPDATE idempotency_keys SET attempts = COALESCE(attempts || char(10), '') || ?,"
                " expires_at = MAX(expires_at, ?), lease_until = COALESCE(lease_until, expires_at)"
                " WHERE key = ? AND fingerprint = ? AND state = ? AND expires_at > ?"
                " AND COALESCE(lease_until, expires_at) > ?",
                (encode_attempt(attempt), now + ttl_seconds, key, fingerprint, IN_PROGRESS, now, now),
            ).rowcount == 1

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
                "UPDATE idempotency_keys SET state = ?, expires_at = ?, status = ?, headers = ?, body = ?,"
                " lease_until = NULL, attempts = NULL"
                " WHERE key = ? AND fingerprint = ? AND state = ? AND expires_at > ?",
                (COMPLETED, now + ttl_seconds, response.status, encode_headers(response.headers), response.body,
                 key, fingerprint, IN_PROGRESS, now),
            )

    def abandon(self, key: str, fingerprint: str) -> None:
        """Delete the key's in-progress marker if it holds this fingerprint and noted no call, so the key can be
        used afresh."""
        check_record(key, fingerprint)
        with self._write() as db:
            db.execute("DELETE FROM idempotency_keys WHERE key = ? AND fingerprint = ? AND state = ?"
                       " AND attempts IS NULL", (key, fingerprint, IN_PROGRESS))

    def purge_expired(self, now: float | None = None, *, limit: int | None = None) -> int:
        """Delete the rows whose lease or lifetime is over (at most `limit`, the longest expired first, in one
        transaction; None: all); how many were deleted."""
        now = timestamp(now)
        with self._write() as db:
            if limit is None:
                return db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,)).rowcount
            return db.execute("DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys"
                              " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)", (now, max(limit, 0))).rowcount

    def ping(self) -> None:
        """Raise if the file cannot be read (or the store is closed)."""
        with self._borrowed() as db:
            db.execute("SELECT 1 FROM idempotency_keys LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self._close_file()
