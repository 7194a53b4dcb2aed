"""Stream leases: at most one worker drains a (subscriber, order) stream at a time, across threads, processes
and machines. A lease expires on its own, so a worker killed mid-delivery cannot block a stream for good.

SQLite (a table beside the events) and Redis (SET NX PX, released only by its owner) behave alike.
"""

from __future__ import annotations

import abc
import os
import time
import uuid

from gateway.config import StoreSettings
from gateway.sqlite_file import SqliteFile
from gateway.stores import redis_client

LEASES_SCHEMA = ("CREATE TABLE IF NOT EXISTS stream_leases "
                 "(stream TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL)")

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


class SqliteStreamLeases(SqliteFile, StreamLeases):
    """Leases in a table of an SQLite file (the events database, whose schema version is the event store's)."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        # NORMAL: a lease lives seconds; one a power cut takes back only lets a stream be drained again.
        self._open_file(path, schema=LEASES_SCHEMA, schema_version=None, synchronous="NORMAL", what="stream leases",
                        stores=stores)

    def acquire(self, stream: str, owner: str, seconds: float) -> bool:
        """Insert the lease, or take over an expired one, in one immediate transaction."""
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT owner, expires_at FROM stream_leases WHERE stream = ?", (stream,)).fetchone()
            if row is not None and row[1] > now and row[0] != owner:
                return False
            db.execute("INSERT OR REPLACE INTO stream_leases (stream, owner, expires_at) VALUES (?, ?, ?)",
                       (stream, owner, now + seconds))
            return True

    def release(self, stream: str, owner: str) -> None:
        """Delete the lease if this owner holds it."""
        with self._borrowed() as db:
            db.execute("DELETE FROM stream_leases WHERE stream = ? AND owner = ?", (stream, owner))

    def close(self) -> None:
        """Close the connections."""
        self._close_file()


class RedisStreamLeases(StreamLeases):
    """Leases as Redis keys with an expiry."""

    def __init__(self, url: str, *, prefix: str = "gateway:leases:", stores: StoreSettings | None = None) -> None:
        self.client = redis_client(url, stores, store="stream leases")
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
