"""The console's sessions, kept on the server: the browser's cookie holds only a random id (signed), and the
session itself lives here — its caller, which of the caller's keys opened it, its CSRF token, when it began and
when it ends, and the messages waiting for the next page. So logging out ends a session for every copy of its
cookie, and a session ends at its end however it is used: nothing extends it.

    ConsoleSessionStore              the contract
    ├── SqliteConsoleSessionStore    one SQLite file beside the events database, shared by a machine's processes
    └── RedisConsoleSessionStore     one Redis shared by several machines (when `[events] redis_url` is set)

A session is stored under a digest of its id, so the store holds nothing a browser could present, and its key is
named by a tag (a digest of the key's digest), never by the key. tests/test_console_sessions.py runs one contract
over both stores. Errors of the storage itself are passed on as they are, naming their store (gateway/stores.py).
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import StoreSettings
from gateway.sqlite_file import SqliteFile
from gateway.stores import redis_client

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

#: the SQLite file's name, beside the events database
SQLITE_FILE_NAME = "console-sessions.sqlite3"
STORE_NAME = "console session store"
#: (category, message) pairs flashed for the next page
Notes = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ConsoleSession:
    """One login: `id` as the cookie carries it; the caller and the tag of the key it logged in with; the CSRF token
    its forms carry; when it began and when it ends (UNIX seconds); messages for the next page."""

    id: str
    caller: str
    key_tag: str
    csrf_token: str
    started_at: float
    expires_at: float
    notes: Notes = ()


def id_digest(session_id: str) -> str:
    """What the store keeps a session under: the SHA-256 of its id."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def _lifetime(seconds: float) -> float:
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"lifetime_seconds must be a positive number of seconds, not {seconds!r}")
    return seconds


def _encode_notes(notes: Sequence[Sequence[str]]) -> str:
    pairs = [[str(category), str(message)] for category, message in notes]
    return json.dumps(pairs)


def _decode_notes(text: str | bytes | None) -> Notes:
    return tuple((category, message) for category, message in json.loads(text or "[]"))


class ConsoleSessionStore(abc.ABC):
    """The console's sessions; every method is atomic across threads and processes."""

    @abc.abstractmethod
    def start(self, caller: str, key_tag: str, *, lifetime_seconds: float, now: float | None = None) -> ConsoleSession:
        """A new session of `caller`, logged in with the key of `key_tag`, ending `lifetime_seconds` from now."""

    @abc.abstractmethod
    def get(self, session_id: str, *, now: float | None = None) -> ConsoleSession | None:
        """The session of this id, unless it ended or never was."""

    @abc.abstractmethod
    def set_notes(self, session_id: str, notes: Sequence[Sequence[str]], *, now: float | None = None) -> None:
        """Keep these messages for the session's next page (if it has not ended; its end stays where it is)."""

    @abc.abstractmethod
    def end(self, session_id: str) -> None:
        """End the session (nothing happens to one that ended already)."""

    @abc.abstractmethod
    def end_unless(self, allowed: Callable[[str, str], bool]) -> int:
        """End every session for whose caller and key tag `allowed(caller, key_tag)` is false; how many."""

    @abc.abstractmethod
    def purge_expired(self, now: float | None = None) -> int:
        """Forget the sessions that have ended; how many."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


def _new_session(caller: str, key_tag: str, lifetime_seconds: float, now: float | None) -> ConsoleSession:
    if not isinstance(caller, str) or not caller or not isinstance(key_tag, str) or not key_tag:
        raise ValueError("a session names its caller and its key's tag")
    started = time.time() if now is None else float(now)
    return ConsoleSession(id=secrets.token_urlsafe(32), caller=caller, key_tag=key_tag,
                          csrf_token=secrets.token_urlsafe(32), started_at=started,
                          expires_at=started + _lifetime(lifetime_seconds))


SCHEMA = """
CREATE TABLE IF NOT EXISTS console_sessions (
    id_digest  TEXT PRIMARY KEY,  -- SHA-256 of the cookie's id
    caller     TEXT NOT NULL,
    key_tag    TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    started_at REAL NOT NULL,
    expires_at REAL NOT NULL,     -- UNIX seconds: a row past it has ended
    notes      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS console_sessions_by_expiry ON console_sessions (expires_at);
"""


class SqliteConsoleSessionStore(SqliteFile, ConsoleSessionStore):
    """The sessions in one SQLite file, used by a machine's threads and processes."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        # FULL: a logout is on disk before its reply says so.
        self._open_file(path, schema=SCHEMA, schema_version=1, synchronous="FULL", what=STORE_NAME, stores=stores)

    def start(self, caller: str, key_tag: str, *, lifetime_seconds: float, now: float | None = None) -> ConsoleSession:
        """A new session of `caller`, ending `lifetime_seconds` from now."""
        session = _new_session(caller, key_tag, lifetime_seconds, now)
        with self._write() as db:
            db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (session.started_at,))
            db.execute("INSERT INTO console_sessions (id_digest, caller, key_tag, csrf_token, started_at, expires_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (id_digest(session.id), caller, key_tag, session.csrf_token,
                                                      session.started_at, session.expires_at))
        return session

    def get(self, session_id: str, *, now: float | None = None) -> ConsoleSession | None:
        """The session of this id, unless it ended or never was."""
        with self._borrowed() as db:
            row = db.execute("SELECT * FROM console_sessions WHERE id_digest = ? AND expires_at > ?",
                             (id_digest(session_id), time.time() if now is None else float(now))).fetchone()
        if row is None:
            return None
        return ConsoleSession(id=session_id, caller=row["caller"], key_tag=row["key_tag"],
                              csrf_token=row["csrf_token"], started_at=row["started_at"],
                              expires_at=row["expires_at"], notes=_decode_notes(row["notes"]))

    def set_notes(self, session_id: str, notes: Sequence[Sequence[str]], *, now: float | None = None) -> None:
        """Keep these messages for the session's next page, if it has not ended."""
        with self._write() as db:
            db.execute("UPDATE console_sessions SET notes = ? WHERE id_digest = ? AND expires_at > ?",
                       (_encode_notes(notes), id_digest(session_id), time.time() if now is None else float(now)))

    def end(self, session_id: str) -> None:
        """End the session."""
        with self._write() as db:
            db.execute("DELETE FROM console_sessions WHERE id_digest = ?", (id_digest(session_id),))

    def end_unless(self, allowed: Callable[[str, str], bool]) -> int:
        """End every session whose caller and key tag are no longer allowed; how many."""
        with self._write() as db:
            rows = db.execute("SELECT id_digest, caller, key_tag FROM console_sessions").fetchall()
            ended = [(row["id_digest"],) for row in rows if not allowed(row["caller"], row["key_tag"])]
            db.executemany("DELETE FROM console_sessions WHERE id_digest = ?", ended)
        return len(ended)

    def purge_expired(self, now: float | None = None) -> int:
        """Forget the sessions that have ended; how many."""
        with self._write() as db:
            return db.execute("DELETE FROM console_sessions WHERE expires_at <= ?",
                              (time.time() if now is None else float(now),)).rowcount

    def ping(self) -> None:
        """Raise if the file cannot be read (or the store is closed)."""
        with self._borrowed() as db:
            db.execute("SELECT 1 FROM console_sessions LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self._close_file()


# KEYS: the session's hash. ARGV: the notes (JSON). Sets them only on a session that has not ended (HSET on an
# expired key would make a session without an end).
SET_NOTES_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'notes', ARGV[1])
    return 1
end
return 0
"""
_FIELDS = ("caller", "key_tag", "csrf_token", "started_at", "expires_at", "notes")


class RedisConsoleSessionStore(ConsoleSessionStore):
    """The sessions in one Redis: a hash per session that Redis expires at the session's end (PEXPIRE once, at the
    start; nothing extends it), and a set of the sessions' digests for end_unless(). The end runs on the Redis
    server's clock, so the `now` arguments, which exist for the SQLite store's tests, are ignored here."""

    def __init__(self, url: str, *, prefix: str = "gateway:console-sessions:",
                 stores: StoreSettings | None = None) -> None:
        self.prefix = prefix
        self._redis = redis_client(url, stores, store=STORE_NAME, decode_responses=True)
        self._set_notes_script = self._redis.register_script(SET_NOTES_SCRIPT)

    def _key(self, digest: str) -> str:
        return f"{self.prefix}session:{digest}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}index"

    def start(self, caller: str, key_tag: str, *, lifetime_seconds: float, now: float | None = None) -> ConsoleSession:
        """A new session of `caller`, ending `lifetime_seconds` from now."""
        session = _new_session(caller, key_tag, lifetime_seconds, None)
        digest = id_digest(session.id)
        self.purge_expired()
        with self._redis.pipeline() as pipe:
            pipe.hset(self._key(digest), mapping={
                "caller": caller, "key_tag": key_tag, "csrf_token": session.csrf_token,
                "started_at": repr(session.started_at), "expires_at": repr(session.expires_at), "notes": "[]"})
            pipe.pexpire(self._key(digest), max(1, math.ceil(float(lifetime_seconds) * 1000)))
            pipe.sadd(self._index, digest)
            pipe.execute()
        return session

    def get(self, session_id: str, *, now: float | None = None) -> ConsoleSession | None:
        """The session of this id, unless it ended or never was."""
        values = self._redis.hmget(self._key(id_digest(session_id)), _FIELDS)
        if any(value is None for value in values):
            return None
        caller, key_tag, csrf_token, started_at, expires_at, notes = values
        return ConsoleSession(id=session_id, caller=caller, key_tag=key_tag, csrf_token=csrf_token,
                              started_at=float(started_at), expires_at=float(expires_at), notes=_decode_notes(notes))

    def set_notes(self, session_id: str, notes: Sequence[Sequence[str]], *, now: float | None = None) -> None:
        """Keep these messages for the session's next page, if it has not ended."""
        self._set_notes_script(keys=[self._key(id_digest(session_id))], args=[_encode_notes(notes)])

    def end(self, session_id: str) -> None:
        """End the session."""
        digest = id_digest(session_id)
        with self._redis.pipeline() as pipe:
            pipe.delete(self._key(digest))
            pipe.srem(self._index, digest)
            pipe.execute()

    def end_unless(self, allowed: Callable[[str, str], bool]) -> int:
        """End every session whose caller and key tag are no longer allowed; how many."""
        ended = 0
        for digest in list(self._redis.sscan_iter(self._index)):
            caller, key_tag = self._redis.hmget(self._key(digest), ("caller", "key_tag"))
            if caller is None or key_tag is None:
                self._redis.srem(self._index, digest)
            elif not allowed(caller, key_tag):
                with self._redis.pipeline() as pipe:
                    pipe.delete(self._key(digest))
                    pipe.srem(self._index, digest)
                    pipe.execute()
                ended += 1
        return ended

    def purge_expired(self, now: float | None = None) -> int:
        """Drop the digests of ended sessions from the index (Redis removed the sessions themselves); how many."""
        digests = list(self._redis.sscan_iter(self._index))
        if not digests:
            return 0
        with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.exists(self._key(digest))
            alive = pipe.execute()
        gone = [digest for digest, exists in zip(digests, alive, strict=True) if not exists]
        if gone:
            self._redis.srem(self._index, *gone)
        return len(gone)

    def ping(self) -> None:
        """Raise if Redis does not answer."""
        self._redis.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()


def open_console_session_store(settings: GatewaySettings) -> ConsoleSessionStore:
    """The configured store: in Redis when the events use Redis, else in an SQLite file beside the events database."""
    if settings.events.redis_url:
        return RedisConsoleSessionStore(settings.events.redis_url, stores=settings.stores)
    return SqliteConsoleSessionStore(Path(settings.events.database).parent / SQLITE_FILE_NAME, stores=settings.stores)
