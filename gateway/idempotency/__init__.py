"""Idempotency-Key records (draft-ietf-httpapi-idempotency-key-header, as Stripe uses it), shared by every process.

`IdempotencyStore` is the contract; `SqliteIdempotencyStore` (sqlite_store.py, one embedded file) and
`RedisIdempotencyStore` (redis_store.py, one Redis shared by several machines) implement it with the same
behaviour, proven by tests/test_idempotency_store.py.

A key holds at most one live record:

    in progress   the fingerprint of the request being served, leased for `lease_seconds`; a lease that runs out
                  (its request crashed) counts as no record, and the next begin() takes the key over
    attempted     in progress, and a backend call was about to go out: attempt() noted it (exchange id, operation,
                  whether repeating it is harmless) before it was sent, and the record now lives for `ttl_seconds`
                  whatever becomes of its lease
    completed     that fingerprint with the response sent, kept for `ttl_seconds`

begin() answers NEW (the caller now holds the marker and must complete() or abandon() it), IN_PROGRESS (the same
request is being served: 409), REPLAY (send the stored response again), MISMATCH (the key was used for another
request: 422) or OUTCOME_UNKNOWN: an attempted record whose lease ran out before its response was stored (its
request crashed, or complete() failed) — what the backend did is unknown. Such a record is taken over (NEW) only
when every call it noted is idempotent, so sending it again is harmless; otherwise begin() answers OUTCOME_UNKNOWN,
with the calls noted, until the record's life ends. Exactly one of any number of concurrent callers of a fresh key
gets NEW. abandon() never deletes an attempted record, and complete() stores an attempted record's response even
after its lease ran out (a late outcome is better than an unknown one).

purge_expired() deletes the records whose life is over; the event worker calls it on its retention schedule
(gateway/events/retention.py), a bounded batch at a time. Redis expires its records by itself.

Errors of the storage itself (sqlite3.Error, redis.RedisError) are passed on as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.idempotency.base import (
    BEGUN_STATES,
    COMPLETED,
    IN_PROGRESS,
    MISMATCH,
    NEW,
    OUTCOME_UNKNOWN,
    REPLAY,
    SQLITE_FILE_NAME,
    Attempt,
    Begun,
    IdempotencyStore,
    StoredResponse,
)
from gateway.idempotency.redis_store import RedisIdempotencyStore
from gateway.idempotency.sqlite_store import SqliteIdempotencyStore

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

__all__ = [
    "BEGUN_STATES",
    "COMPLETED",
    "IN_PROGRESS",
    "MISMATCH",
    "NEW",
    "OUTCOME_UNKNOWN",
    "REPLAY",
    "SQLITE_FILE_NAME",
    "Attempt",
    "Begun",
    "IdempotencyStore",
    "RedisIdempotencyStore",
    "SqliteIdempotencyStore",
    "StoredResponse",
    "open_idempotency_store",
]


def open_idempotency_store(settings: GatewaySettings) -> IdempotencyStore:
    """The configured store: in Redis when the events use Redis, else in an SQLite file beside the events database."""
    if settings.events.redis_url:
        return RedisIdempotencyStore(settings.events.redis_url, stores=getattr(settings, "stores", None))
    return SqliteIdempotencyStore(Path(settings.events.database).parent / SQLITE_FILE_NAME,
                                  stores=getattr(settings, "stores", None))
