"""The exchange journal: every call the gateway makes to a backend, as sent and as answered, kept for a while.

`ExchangeJournal` is the contract; `SqliteExchangeJournal` (sqlite_store.py, one embedded file) and
`RedisExchangeJournal` (redis_store.py, one Redis shared by several machines) implement it with the same
behaviour, proven by tests/test_journal_store.py.

An `Exchange` is one backend call: when it started, who asked for it (request id, caller), where it went
(connection, backend, operation), which orders it was about, the request as sent and the reply as received (with
credentials already masked), how long it took and how it ended. It answers "what exactly did we send for order X
at 10:32, and what did it answer?".

timings() and last_at() answer "how has this connection been doing?" (calls, failures and latency per minute,
the last success and failure) from the times, durations and outcomes alone: they never read a body, so they stay
cheap however large the bodies are.

Retention is bounded twice: by age (`max_age_seconds`) and by number (`max_count`, the oldest go first). prune()
applies both; record() also prunes now and then by itself, so the journal stays bounded even if nobody calls
prune(). With `record_bodies=False` the bodies (which hold customers' addresses) are never stored, only the rest.

Errors of the storage itself (sqlite3.Error, redis.RedisError) are passed on as they are; an unusable argument is
a ValueError or TypeError, and recording an id that is already recorded is a ValueError.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.journal.base import (
    MAX_LAST_AT_OUTCOMES,
    MAX_LIST_LIMIT,
    SQLITE_FILE_NAME,
    TIMINGS_LIMIT,
    Exchange,
    ExchangeJournal,
)
from gateway.journal.redis_store import RedisExchangeJournal
from gateway.journal.sqlite_store import SqliteExchangeJournal

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

__all__ = ["MAX_LAST_AT_OUTCOMES", "MAX_LIST_LIMIT", "SQLITE_FILE_NAME", "TIMINGS_LIMIT", "Exchange",
           "ExchangeJournal", "RedisExchangeJournal", "SqliteExchangeJournal", "open_exchange_journal"]


def open_exchange_journal(settings: GatewaySettings, *, max_age_seconds: float, max_count: int,
                          record_bodies: bool) -> ExchangeJournal:
    """The configured journal: in Redis when the events use Redis, else in an SQLite file beside the events."""
    retention = {"max_age_seconds": max_age_seconds, "max_count": max_count, "record_bodies": record_bodies,
                 "stores": getattr(settings, "stores", None)}
    if settings.events.redis_url:
        return RedisExchangeJournal(settings.events.redis_url, **retention)
    return SqliteExchangeJournal(Path(settings.events.database).parent / SQLITE_FILE_NAME, **retention)
