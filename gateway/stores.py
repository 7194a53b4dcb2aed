"""The gateway's store clients and the one place their failures are turned into a reply.

    redis_client(url, stores, store=...)   every Redis client of the gateway: connect and socket timeouts from
                                           `[stores]`, no retries, its errors naming its store, and failing at
                                           once for a moment after Redis could not be reached
    redis_pool(url, stores)                a connection pool with those timeouts (huey's queue takes one)
    mark_store(error, store)               name the store an error came from (the Redis clients and SqliteFile do)
    store_unavailable(error)               a store's error as StoreUnavailable (503 `store-unavailable` with
                                           Retry-After), or None when the error is no store's

A store's error keeps its own type on its way up — redis.RedisError, sqlite3.Error, OSError — so code that
expects it still sees it (the breakers' shared state goes on with the process's own copy on those,
gateway/bookkeeping.py); the REST layer asks store_unavailable() about every error nothing else handled
(gateway/rest/problems.py). The store's name travels on the error (`error.store`); its text, which may name a host
or a file, is for the log only.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.client
import redis.exceptions

from gateway.config import StoreSettings
from gateway.errors import StoreUnavailable

#: after Redis could not be reached (refused, timed out), how long its client fails at once instead of waiting
#: out another timeout: a request that needs Redis several times waits for it once
UNREACHABLE_HOLD_SECONDS = 1.0
#: Redis errors that are the caller's bug rather than the store's state (and the lock's own bookkeeping)
_NOT_STORE_FAILURES = (redis.exceptions.DataError, redis.exceptions.LockError)
#: SQLite errors that are the caller's bug rather than the store's state
_SQLITE_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
_Error = TypeVar("_Error", bound=BaseException)
_Result = TypeVar("_Result")


def mark_store(error: _Error, store: str) -> _Error:
    """Name the store `error` came from (the first name given stays); returns the error, for `raise`."""
    if getattr(error, "store", None) is None:
        # (an exception type without attributes of its own stays unnamed)
        with contextlib.suppress(AttributeError):
            error.store = store  # type: ignore[attr-defined]
    return error


def is_store_failure(error: BaseException) -> bool:
    """Whether `error` says a store cannot be used now (down, frozen, busy, full, refusing), not a bug: a Redis or
    SQLite error of that kind, or any error that names its store (an OSError of a lock file, say)."""
    if isinstance(error, StoreUnavailable) or getattr(error, "store", None) is not None:
        return True
    if isinstance(error, redis.RedisError):
        return not isinstance(error, _NOT_STORE_FAILURES)
    if isinstance(error, sqlite3.Error):
        return not isinstance(error, _SQLITE_BUGS)
    return False


def store_unavailable(error: BaseException) -> StoreUnavailable | None:
    """The 503 a store's failure answers, naming the store; None for an error that is no store's. An error raised
    `from` a store's failure (a lock that could not be taken, say) is that store's failure too; the name is the
    one nearest the store's client."""
    if isinstance(error, StoreUnavailable):
        return error
    failures = [cause for cause in _causes(error) if is_store_failure(cause)]
    if not failures:
        return None
    named = [getattr(failure, "store", None) for failure in failures]
    store = next((name for name in reversed(named) if name), None) or (
        "Redis store" if isinstance(failures[-1], redis.RedisError) else "database")
    return StoreUnavailable(f"The {store} cannot be used right now ({type(failures[-1]).__name__}); try again in "
                            "a moment.", store=store)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it was raised `from`, outermost first."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__
    return chain


class StoreRedis(redis.Redis):
    """A Redis client whose errors name its store, and which, for UNREACHABLE_HOLD_SECONDS after Redis could not be
    reached, fails at once: a frozen Redis costs a request one socket timeout, not one per command."""

    def __init__(self, *, connection_pool: redis.ConnectionPool, store: str) -> None:
        super().__init__(connection_pool=connection_pool)
        self.auto_close_connection_pool = True  # the pool is this client's own: close() closes it
        self.store = store
        self._unreachable_until = 0.0

    def guarded(self, run: Callable[[], _Result]) -> _Result:
        """Run one exchange with Redis, or fail at once if Redis was unreachable moments ago."""
        if time.monotonic() < self._unreachable_until:
            raise mark_store(redis.ConnectionError(f"the {self.store} was unreachable moments ago"), self.store)
        try:
            return run()
        except redis.RedisError as error:
            if isinstance(error, redis.ConnectionError | redis.TimeoutError):
                self._unreachable_until = time.monotonic() + UNREACHABLE_HOLD_SECONDS
            mark_store(error, self.store)
            raise
        except OSError as error:  # a socket error redis-py did not translate
            self._unreachable_until = time.monotonic() + UNREACHABLE_HOLD_SECONDS
            mark_store(error, self.store)
            raise

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Every command, scripts and locks included."""
        return self.guarded(lambda: super(StoreRedis, self).execute_command(*args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> StorePipeline:
        """A pipeline (and so a transaction) under the same guard."""
        return StorePipeline(self, transaction, shard_hint)


class StorePipeline(redis.client.Pipeline):
    """redis-py's pipeline, each exchange with Redis under its client's guard."""

    def __init__(self, client: StoreRedis, transaction: bool, shard_hint: Any) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """A command: sent at once while WATCHing, else queued."""
        return self._client.guarded(lambda: super(StorePipeline, self).execute_command(*args, **options))

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands."""
        return self._client.guarded(lambda: super(StorePipeline, self).execute(raise_on_error))


def redis_pool(url: str, stores: StoreSettings | None = None, *, blocking_seconds: float = 0.0,
               decode_responses: bool = False) -> redis.ConnectionPool:
    """A connection pool of the Redis at `url` with the `[stores]` timeouts; `blocking_seconds` longer for a client
    whose commands wait on the server by design (huey's BRPOP)."""
    stores = stores or StoreSettings()
    return redis.ConnectionPool.from_url(url, decode_responses=decode_responses,
                                         socket_connect_timeout=stores.redis_connect_timeout,
                                         socket_timeout=stores.redis_socket_timeout + blocking_seconds)


def redis_client(url: str, stores: StoreSettings | None = None, *, store: str,
                 decode_responses: bool = False) -> StoreRedis:
    """A client of the Redis at `url` for the store called `store` (as replies name it: "event store")."""
    return StoreRedis(connection_pool=redis_pool(url, stores, decode_responses=decode_responses), store=store)
