"""Update jobs: updates accepted with `Prefer: respond-async`, kept durably and sent by the event worker when the
backend can take them (gateway/jobs/sender.py), in the order they were accepted per connection and goods owner.

`JobStore` is the contract (base.py); `SqliteJobStore` (sqlite_store.py, one embedded file beside the events) and
`RedisJobStore` (redis_store.py, one Redis shared by several machines) implement it with the same behaviour, proven
by tests/test_job_store.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.jobs.base import (
    ACTIVE_STATES,
    DEAD,
    DONE,
    FAILED,
    FINAL_STATES,
    JOB_STATES,
    QUEUED,
    SENDING,
    SQLITE_FILE_NAME,
    JobStore,
    JobStoreError,
    NewJob,
)
from gateway.jobs.sqlite_store import SqliteJobStore

if TYPE_CHECKING:
    from gateway.config import GatewaySettings

__all__ = [
    "ACTIVE_STATES",
    "DEAD",
    "DONE",
    "FAILED",
    "FINAL_STATES",
    "JOB_STATES",
    "QUEUED",
    "SENDING",
    "SQLITE_FILE_NAME",
    "JobStore",
    "JobStoreError",
    "NewJob",
    "SqliteJobStore",
    "open_job_store",
]


def open_job_store(settings: GatewaySettings) -> JobStore:
    """The configured store: in Redis when the events use Redis, else in an SQLite file beside the events database."""
    if settings.events.redis_url:
        from gateway.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.events.redis_url, stores=settings.stores)
    return SqliteJobStore(Path(settings.events.database).parent / SQLITE_FILE_NAME, stores=settings.stores)
