"""The delivery queue: huey (SQLite storage embedded, Redis when configured) driving the Dispatcher.

Each task drains one (subscriber, order) stream under a lock, so one order's events never race each other.
A stream that must wait (backoff) schedules its own next run. The store, not the queue, is the source of
truth: at worker start-up and every `[events] resume_interval_seconds`, every stream with pending deliveries is
nudged again, so a task lost to a crash (SIGKILL mid-task) costs a delay, never an event.

A stream has at most one drain in huey's schedule, however long its subscriber stays down: scheduling one writes
a marker beside the queue (huey's key-value store, in the queue's SQLite file or Redis), naming the task and when
it is due, and the task clears it as it starts. While the marker is there, nothing else is scheduled for the
stream (that task drains whatever is pending when it runs) and the resume leaves the stream alone. A marker more
than a resume interval (and the consumer's slack) overdue names a lost task: the resume drops it and nudges.

Streams are locked with expiring leases kept beside the events (SQLite table or Redis keys), so a killed
worker's lease frees itself.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid

from huey import RedisHuey
from huey.api import Huey, Task
from huey.storage import SqliteStorage

from gateway.config import EventSettings, StoreSettings
from gateway.events.delivery import Dispatcher
from gateway.events.leases import StreamLeases
from gateway.stores import redis_pool

log = logging.getLogger("gateway.events")

#: how soon a stream whose lease is held by another worker is looked at again
LOCKED_RETRY_SECONDS = 0.5
#: how long the consumer's blocking pop waits on Redis for a task (huey's read_timeout)
QUEUE_READ_SECONDS = 1.0
#: how soon a stream is tried again after an unexpected error (the store unreachable, say)
ERROR_RETRY_SECONDS = 5.0
#: how late a scheduled drain may start without being lost: the consumer moves due tasks to the queue once a
#: second and idle workers look at the queue every half second (gateway/events/worker.py)
CONSUMER_SLACK_SECONDS = 2.0
#: the prefix of the huey key that marks a stream's scheduled drain
SCHEDULED_KEY_PREFIX = "scheduled-drain:"


class WakeUpQueueStorage(SqliteStorage):
    """huey's SQLite storage, committing without waiting for the disk (`synchronous = NORMAL`, WAL).

    The queue only wakes the worker: an event is durable once the event store has it (its commits wait for the
    disk), and the worker nudges every pending stream again at start-up and every resume interval. So a task a
    power loss takes back costs a delay, never an event — and a webhook's 202 waits for one fsync, not two.
    (huey's own `fsync` switch offers only FULL or OFF; OFF could corrupt the file on power loss, NORMAL cannot.)
    """

    def _create_connection(self) -> sqlite3.Connection:
        connection = super()._create_connection()
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection


def make_huey(settings: EventSettings, stores: StoreSettings | None = None) -> Huey:
    """Huey on Redis when a Redis URL is configured, else on the embedded SQLite file; either with the `[stores]`
    timeouts (the consumer's blocking pop waits QUEUE_READ_SECONDS longer than a command)."""
    stores = stores or StoreSettings()
    if settings.redis_url:
        return RedisHuey("order-gateway", results=False, utc=True, read_timeout=QUEUE_READ_SECONDS,
                         connection_pool=redis_pool(settings.redis_url, stores, blocking_seconds=QUEUE_READ_SECONDS))
    settings.queue_database.parent.mkdir(parents=True, exist_ok=True)
    return Huey("order-gateway", storage_class=WakeUpQueueStorage, filename=str(settings.queue_database),
                results=False, utc=True, timeout=stores.sqlite_busy_timeout)


def scheduled_key(subscriber: str, order_key: str) -> str:
    """The huey key marking that a drain of this stream waits in huey's schedule."""
    return f"{SCHEDULED_KEY_PREFIX}{subscriber}\x00{order_key}"


class DeliveryQueue:
    """Registers the delivery task on a huey instance, nudges streams and resumes the pending ones."""

    def __init__(self, huey: Huey, dispatcher: Dispatcher, leases: StreamLeases) -> None:
        self.huey = huey
        self.dispatcher = dispatcher
        self.leases = leases
        self.resume_interval = dispatcher.settings.resume_interval_seconds
        # Longer than one delivery (delivery_timeout bounds an attempt whole): a drain renews it before each one,
        # and a killed worker's lease holds its stream back no longer than this.
        lease_seconds = dispatcher.settings.delivery_timeout * 2 + 5

        @huey.task(name="drain_stream", context=True)
        def drain_stream(subscriber: str, order_key: str, task: Task | None = None) -> None:
            if task is not None and task.eta is not None:
                self._forget_scheduled(subscriber, order_key, task.id)
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
                self.schedule_drain(subscriber, order_key, delay)

        self.drain_task = drain_stream

    def prepare_worker_start(self) -> None:
        """Before a worker consumes: resume every stream that has pending deliveries."""
        self.resume_pending()

    def nudge(self, subscriber: str, order_key: str) -> None:
        """Ask a worker to drain one stream now."""
        self.drain_task(subscriber, order_key)

    def schedule_drain(self, subscriber: str, order_key: str, delay: float) -> bool:
        """Drain the stream in `delay` seconds, unless a drain of it is scheduled already; whether one was added.

        The one already scheduled stays the stream's next: it drains whatever is due when it runs, and schedules
        the next if the stream must wait again.
        """
        key, task_id = scheduled_key(subscriber, order_key), uuid.uuid4().hex
        if not self.huey.put_if_empty(key, (task_id, time.time() + delay)):
            return False
        try:
            self.drain_task.schedule((subscriber, order_key), delay=delay, id=task_id)
        except BaseException:
            with contextlib.suppress(Exception):  # else the resume drops it once it is overdue
                self.huey.delete(key)
            raise
        return True

    def _forget_scheduled(self, subscriber: str, order_key: str, task_id: str) -> None:
        """A scheduled drain starts: it no longer waits in the schedule (another marker is left alone)."""
        key = scheduled_key(subscriber, order_key)
        marker = self.huey.get(key, peek=True)
        if marker is not None and marker[0] == task_id:
            self.huey.delete(key)

    def resume_pending(self) -> int:
        """Nudge every stream the store says has pending deliveries, but those with a drain in the schedule;
        returns how many were nudged."""
        now = time.time()
        nudged = 0
        for subscriber, order_key in self.dispatcher.store.pending_streams():
            key = scheduled_key(subscriber, order_key)
            marker = self.huey.get(key, peek=True)
            if marker is not None:
                if marker[1] + self.resume_interval + CONSUMER_SLACK_SECONDS > now:
                    continue
                log.warning("the drain of %s for %s scheduled %.0f s ago never started; resuming the stream",
                            order_key, subscriber, now - marker[1])
                self.huey.delete(key)
            self.nudge(subscriber, order_key)
            nudged += 1
        if nudged:
            log.info("resumed %d event streams with pending deliveries", nudged)
        return nudged

    def keep_resuming(self, stop: threading.Event) -> threading.Thread:
        """A daemon thread that resumes the pending streams every resume interval until `stop` is set."""
        def run() -> None:
            while not stop.wait(self.resume_interval):
                try:
                    self.resume_pending()
                except Exception:  # the store or the queue unreachable: the next round tries again
                    log.exception("could not resume the pending event streams; trying again in %g s",
                                  self.resume_interval)

        thread = threading.Thread(target=run, name="resume-pending-streams", daemon=True)
        thread.start()
        return thread
