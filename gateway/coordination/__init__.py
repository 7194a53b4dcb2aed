"""What the gateway's processes share about backend calls: call locks (Ongoing's one call per goods owner at a
time), circuit breaker state and outbound rate limits. Embedded by default — lock files and SQLite files beside the
event database under var/ — and in Redis when `[events] redis_url` is set, so several gateway machines share them
too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pybreaker
from pyrate_limiter import StateStore

from gateway.config import GatewaySettings
from gateway.coordination.breakers import (
    BreakerFile,
    ConcurrentCircuitBreaker,
    SqliteBreakerStorage,
    redis_breaker_storage,
)
from gateway.coordination.locks import CallLocks, FileCallLocks, LockTimeout, RedisCallLocks
from gateway.coordination.rate_limits import RateLimitFile, SqliteStateStore, redis_state_store

__all__ = ["CallLocks", "ConcurrentCircuitBreaker", "Coordination", "LockTimeout"]


class Coordination:
    """The call locks, the breaker storage and the rate limits' stores of one configuration."""

    def __init__(self, settings: GatewaySettings) -> None:
        url, stores = settings.events.redis_url, settings.stores
        self._stores = stores
        self._rate_limit_file: RateLimitFile | None = None
        # A Redis lock outlives any holder's deadline (the request budget), so only a dead holder loses it.
        expiry = settings.request_timeout + 5
        self._breaker_file: BreakerFile | None = None
        if url:
            locks = RedisCallLocks(url, expiry=expiry, stores=stores)
            # The breakers share the locks' client: when a breaker's read finds Redis unreachable, the lock that
            # follows fails at once (gateway/stores.py) instead of waiting out a timeout of its own.
            self.locks: CallLocks = locks
            self._storage: Callable[[str], pybreaker.CircuitBreakerStorage] = (
                lambda name: redis_breaker_storage(locks.client, name))
            self._rate_limit_store: Callable[[str], StateStore] = lambda name: redis_state_store(locks.client, name)
        else:
            state_folder = self._state_folder = Path(settings.events.database).parent
            self.locks = FileCallLocks(state_folder / "locks")
            breaker_file = self._breaker_file = BreakerFile(state_folder / "breakers.sqlite3", stores=stores)
            self._storage = lambda name: SqliteBreakerStorage(breaker_file, name)
            self._rate_limit_store = lambda name: SqliteStateStore(self._rate_limit_sqlite(), name)

    def breaker_storage(self, name: str) -> pybreaker.CircuitBreakerStorage:
        """The shared state of the breaker called `name`."""
        return self._storage(name)

    def rate_limit_store(self, name: str) -> StateStore:
        """The shared state of the rate limit of connection `name` (pyrate-limiter's StateStore)."""
        return self._rate_limit_store(name)

    def _rate_limit_sqlite(self) -> RateLimitFile:
        """The rate limits' SQLite file, opened when a connection first needs it (most have no limit)."""
        if self._rate_limit_file is None:
            self._rate_limit_file = RateLimitFile(self._state_folder / "rate_limits.sqlite3", stores=self._stores)
        return self._rate_limit_file

    def close(self) -> None:
        """Release connections."""
        self.locks.close()
        if self._breaker_file is not None:
            self._breaker_file.close()
        if self._rate_limit_file is not None:
            self._rate_limit_file.close()
