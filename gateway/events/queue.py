"""The delivery queue: huey (SQLite storage embedded, Redis when configured) driving the Dispatcher.

Each task drains one (subscriber, order) stream under a lock, so one order's events never race each other.
A stream that must wait (backoff) schedules its own next run. The store, not the queue, is the source of
truth: at worker start-up and every minute, every stream with pending deliveries is nudged again, so a task
lost to a crash (SIGKILL mid-task) costs a delay, never an event.

Streams are locked with expiring leases kept beside the events (SQLite table or Redis keys), so a killed
worker's lease frees itself.
"""

from __future__ import annotations

import logging
import sqlite3

from huey import RedisHuey, crontab
from huey.api import Huey
from huey.storage import SqliteStorage

from gateway.config import EventSettings
from gateway.events.delivery import Dispatcher
from gateway.events.leases import StreamLeases

log = logging.getLogger("gateway.events")

#: how soon a stream whose lease is held by another worker is looked at again
LOCKED_RETRY_SECONDS = 0.5
#: how soon a stream is tried again after an unexpected error (the store unreachable, say)
ERROR_RETRY_SECONDS = 5.0


class WakeUpQueueStorage(SqliteStorage):
    """huey's SQLite storage, committing without waiting for the disk (`synchronous = NORMAL`, WAL).

    The queue only wakes the worker: an event is durable once the event store has it (its commits wait for the
    disk), and the worker nudges every pending stream again at start-up and every minute. So a task a power loss
    takes back costs a delay, never an event — and a webhook's 202 waits for one fsync, not two. (huey's own
    `fsync` switch offers only FULL or OFF; OFF could corrupt the file on power loss, NORMAL cannot.)
    """

    def _create_connection(self) -> sqlite3.Connection:
        connection = super()._create_connection()
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection


def make_huey(settings: EventSettings) -> Huey:
    """Huey on Redis when a Redis URL is configured, else on the embedded SQLite file."""
    if settings.redis_url:
        return RedisHuey("order-gateway", url=settings.redis_url, results=False, utc=True)
    settings.queue_database.parent.mkdir(parents=True, exist_ok=True)
    return Huey("order-gateway", storage_class=WakeUpQueueStorage, filename=str(settings.queue_database),
                results=False, utc=True)


class DeliveryQueue:
    """Registers the delivery tasks on a huey instance and nudges streams from the web processes."""

    def __init__(self, huey: Huey, dispatcher: Dispatcher, leases: StreamLeases) -> None:
        self.huey = huey
        self.dispatcher = dispatcher
        self.leases = leases
        # Long enough for one delivery (connect and read timeouts): a drain renews it before each one, and a
        # killed worker's lease holds its stream back no longer than this.
        lease_seconds = dispatcher.settings.delivery_timeout * 2 + 5

        @huey.task(name="drain_stream")
        def drain_stream(subscriber: str, order_key: str) -> None:
            stream, owner = f"{subscriber}\x00{order_key}", leases.new_owner()
            if not leases.acquire(stream, owner, lease_seconds):
                delay: float | None = LOCKED_RETRY_SECONDS
            else:
                try:
                    delay = dispatcher.drain_stream(subscriber, order_key,
                                                    still_mine=lambda: leases.acquire(stream, owner, lease_seconds))
                except Exception:
                    # Never drop a stream on an error: its events are stored, so try again a little later.
                    log.exception("draining %s for %s failed; trying again in %g s", order_key, subscriber,
                                  ERROR_RETRY_SECONDS)
                    delay = ERROR_RETRY_SECONDS
                finally:
                    try:
                        leases.release(stream, owner)
                    except Exception:  # the lease expires on its own
                        log.exception("could not release the lease on %s for %s", order_key, subscriber)
            if delay is not None:
                drain_stream.schedule((subscriber, order_key), delay=delay)

        @huey.periodic_task(crontab(minute="*"), name="resume_pending_streams")
        def resume_pending_streams() -> None:
            self.resume_pending()

        self.drain_task = drain_stream

    def prepare_worker_start(self) -> None:
        """Before a worker consumes: resume every stream that has pending deliveries."""
        self.resume_pending()

    def nudge(self, subscriber: str, order_key: str) -> None:
        """Ask a worker to drain one stream now."""
        self.drain_task(subscriber, order_key)

    def resume_pending(self) -> int:
        """Nudge every stream the store says has pending deliveries; returns how many."""
        streams = self.dispatcher.store.pending_streams()
        for subscriber, order_key in streams:
            self.nudge(subscriber, order_key)
        if streams:
            log.info("resumed %d event streams with pending deliveries", len(streams))
        return len(streams)
