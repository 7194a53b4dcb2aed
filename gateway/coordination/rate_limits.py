"""Rate limit state shared by the gateway's processes: pyrate-limiter's StateStore interface (the state of its
TokenBucket/GCRA: a few integers per connection), kept in an SQLite file under var/ (every process of one machine)
or in Redis (every machine: pyrate-limiter's own RedisStateStore, one Lua script per check).

tests/test_rate_limit.py runs the guard over both. Unlike the breakers' state this is no bookkeeping: a store
that cannot be used raises (named by gateway/stores.py), and the guard refuses the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis
from pyrate_limiter import Decision, Rate, RedisStateStore, StateAlgorithm, StateStore, WallClock

from gateway.config import StoreSettings
from gateway.sqlite_file import SqliteFile

RATE_LIMITS_SCHEMA = "CREATE TABLE IF NOT EXISTS rate_limits (name TEXT PRIMARY KEY, state TEXT NOT NULL)"
#: under this prefix in Redis, one hash per connection
REDIS_PREFIX = "gateway:rate_limits:"


class RateLimitFile(SqliteFile):
    """The SQLite file of the rate limits' state, one row per connection: one small pool of connections per
    process (sqlite_file.py), shared by every connection's limit."""

    def __init__(self, path: str | Path, *, stores: StoreSettings | None = None) -> None:
        self._open_file(path, schema=RATE_LIMITS_SCHEMA, schema_version=1, synchronous="NORMAL", what="rate limits",
                        stores=stores)

    def step(self, name: str, algorithm: StateAlgorithm, rates: list[Rate], now: int, weight: int) -> Decision:
        """Apply `algorithm` to the state of `name` in one write transaction (taken up front, so no two processes
        decide on the same state); the new state is written only when the call is admitted."""
        with self._write() as db:
            row = db.execute("SELECT state FROM rate_limits WHERE name = ?", (name,)).fetchone()
            state = _decoded(algorithm, rates, row[0] if row is not None else None)
            new_state, decision = algorithm.step(rates, state, now, weight)
            if decision.allowed:
                db.execute("INSERT INTO rate_limits (name, state) VALUES (?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                           (name, ",".join(str(int(value)) for value in new_state)))
            return decision

    def state(self, name: str, algorithm: StateAlgorithm, rates: list[Rate]) -> Sequence[float]:
        """The state of `name` as stored (the algorithm's initial one when there is none)."""
        with self._read() as db:
            row = db.execute("SELECT state FROM rate_limits WHERE name = ?", (name,)).fetchone()
        return _decoded(algorithm, rates, row[0] if row is not None else None)

    def forget(self, name: str) -> None:
        """Forget the state of `name`, as though it had never been used."""
        with self._write() as db:
            db.execute("DELETE FROM rate_limits WHERE name = ?", (name,))

    def close(self) -> None:
        """Close the connections; the file cannot be used afterwards."""
        self._close_file()


def _decoded(algorithm: StateAlgorithm, rates: list[Rate], stored: str | None) -> tuple[float, ...]:
    """A stored state, or the initial one when there is none or it was kept for another number of rates."""
    values = stored.split(",") if stored else []
    return tuple(algorithm.decode(values)) if len(values) == len(rates) else tuple(algorithm.initial(rates))


class SqliteStateStore(StateStore):
    """pyrate-limiter's state store for one connection's limit, in a RateLimitFile."""

    is_async = False
    #: the state is compared across processes
    default_clock = WallClock()

    def __init__(self, file: RateLimitFile, name: str) -> None:
        self.file, self.name = file, name

    def check(self, algorithm: StateAlgorithm, rates: list[Rate], now: int, weight: int) -> Decision:
        """Apply the algorithm to the stored state, atomically."""
        return self.file.step(self.name, algorithm, rates, now, weight)

    def read(self, algorithm: StateAlgorithm, rates: list[Rate]) -> Sequence[float]:
        """The current state, for reporting."""
        return self.file.state(self.name, algorithm, rates)

    def reset(self) -> None:
        """Forget the state."""
        self.file.forget(self.name)


def redis_state_store(client: redis.Redis, name: str) -> RedisStateStore:
    """The Redis store of the rate limit of connection `name`."""
    return RedisStateStore(client, key=REDIS_PREFIX + name)

