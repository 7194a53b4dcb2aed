"""Stream leases: at most one worker drains a (subscriber, order) stream at a time, across threads, processes
and machines. A lease expires on its own, so a worker killed mid-delivery cannot block a stream for good.

SQLite (a table beside the events) and Redis (SET NX PX, released only by its owner) behave alike.
"""

from __future__ import annotations

import abc
import os
import sqlite3
import threading
import time
import uuid

import redis

_ACQUIRE_OR_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StreamLeases(abc.ABC):
    """Grants short, expiring, exclusive leases on streams."""

    @abc.abstractmethod
    def acquire(self, stream: str, owner: str, seconds: float) -> bool:
        """Take the lease on `stream` for `owner` for `seconds`; False if someone else holds a live lease."""

    @abc.abstractmethod
    def release(self, stream: str, owner: str) -> None:
        """Give the lease back, if `owner` still holds it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources."""

    @staticmethod
    def new_owner() -> str:
        """A unique owner id for one drain."""
        return uuid.uuid4().hex


class SqliteStreamLeases(StreamLeases):
    """Leases in a table of an SQLite file (the events database)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._local = threading.local()
        with self._connection() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS stream_leases "
                               "(stream TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            connection.execute("PRAGMA busy_timeout = 30000")
            self._local.connection = connection
        return connection

    def acquire(self, stream: str, owner: str, seconds: float) -> bool:
        """Insert the lease, or take over an expired one, in one immediate transaction."""
        connection = self._connection()
        now = time.time()
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute("SELECT owner, expires_at FROM stream_leases WHERE stream = ?",
                                     (stream,)).fetchone()
            if row is not None and row[1] > now and row[0] != owner:
                connection.execute("COMMIT")
                return False
            connection.execute("INSERT OR REPLACE INTO stream_leases (stream, owner, expires_at) VALUES (?, ?, ?)",
                               (stream, owner, now + seconds))
            connection.execute("COMMIT")
            return True
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def release(self, stream: str, owner: str) -> None:
        """Delete the lease if this owner holds it."""
        self._connection().execute("DELETE FROM stream_leases WHERE stream = ? AND owner = ?", (stream, owner))

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class RedisStreamLeases(StreamLeases):
    """Leases as Redis keys with an expiry."""

    def __init__(self, url: str, *, prefix: str = "gateway:leases:") -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self._acquire = self.client.register_script(_ACQUIRE_OR_RENEW)
        self._release = self.client.register_script(_RELEASE_IF_OWNER)

    def acquire(self, stream: str, owner: str, seconds: float) -> bool:
        """Renew our own lease, or SET NX PX a new one: atomic, and gone by itself when the time is up."""
        return bool(self._acquire(keys=[self.prefix + stream], args=[owner, max(int(seconds * 1000), 1)]))

    def release(self, stream: str, owner: str) -> None:
        """Delete the key only if it still holds this owner (never another worker's newer lease)."""
        self._release(keys=[self.prefix + stream], args=[owner])

    def close(self) -> None:
        """Close the client."""
        self.client.close()
