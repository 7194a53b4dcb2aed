"""What the gateway's processes share about backend calls: call locks (Ongoing's one call per goods owner at a
time) and circuit breaker state. Embedded by default — lock files and an SQLite file beside the event database
under var/ — and in Redis when `[events] redis_url` is set, so several gateway machines share them too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pybreaker
import redis

from gateway.config import GatewaySettings
from gateway.coordination.breakers import ConcurrentCircuitBreaker, SqliteBreakerStorage, redis_breaker_storage
from gateway.coordination.locks import CallLocks, FileCallLocks, LockTimeout, RedisCallLocks

__all__ = ["CallLocks", "ConcurrentCircuitBreaker", "Coordination", "LockTimeout"]


class Coordination:
    """The call locks and the breaker storage of one configuration."""

    def __init__(self, settings: GatewaySettings) -> None:
        url = settings.events.redis_url
        # A Redis lock outlives any holder's deadline (the request budget), so only a dead holder loses it.
        expiry = settings.request_timeout + 5
        if url:
            self.locks: CallLocks = RedisCallLocks(url, expiry=expiry)
            client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
            self._redis: redis.Redis | None = client
            self._storage: Callable[[str], pybreaker.CircuitBreakerStorage] = (
                lambda name: redis_breaker_storage(client, name))
        else:
            state_folder = Path(settings.events.database).parent
            self.locks = FileCallLocks(state_folder / "locks")
            self._redis = None
            path = state_folder / "breakers.sqlite3"
            self._storage = lambda name: SqliteBreakerStorage(path, name)

    def breaker_storage(self, name: str) -> pybreaker.CircuitBreakerStorage:
        """The shared state of the breaker called `name`."""
        return self._storage(name)

    def close(self) -> None:
        """Release connections."""
        self.locks.close()
        if self._redis is not None:
            self._redis.close()
