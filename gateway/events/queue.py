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
from collections.abc import Callable, Iterable

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


def scheduled_key(*stream: str, prefix: str = SCHEDULED_KEY_PREFIX) -> str:
    """The huey key marking that a drain of this stream waits in huey's schedule."""
    return prefix + "\x00".join(stream)


class StreamQueue:
    """A huey task that drains one stream (a tuple of strings) at a time under an expiring lease, schedules its own
    next run when the stream must wait, keeps at most one scheduled run per stream, and resumes every stream the
    store says is pending. The event deliveries (DeliveryQueue) and the update jobs' lanes (gateway/jobs) are two.

    `drain(*stream, still_mine=...)` works through the stream and returns the seconds until it needs attention
    again (None: nothing pending); `pending()` lists the streams with work in the store.
    """

    def __init__(self, huey: Huey, leases: StreamLeases, *, task_name: str, marker_prefix: str, lease_prefix: str,
                 lease_seconds: float, resume_interval: float, what: str,
                 drain: Callable[..., float | None], pending: Callable[[], Iterable[tuple[str, ...]]]) -> None:
        self.huey = huey
        self.leases = leases
        self.resume_interval = resume_interval
        self.marker_prefix = marker_prefix
        self.what = what
        self.pending = pending

        @huey.task(name=task_name, context=True)
        def drain_stream(*stream: str, task: Task | None = None) -> None:
            if task is not None and task.eta is not None:
                self._forget_scheduled(stream, task.id)
            name, owner = lease_prefix + "\x00".join(stream), leases.new_owner()
            if not leases.acquire(name, owner, lease_seconds):
                delay: float | None = LOCKED_RETRY_SECONDS
            else:
                try:
                    delay = drain(*stream, still_mine=lambda: leases.acquire(name, owner, lease_seconds))
                except Exception:
                    # Never drop a stream on an error: its work is stored, so try again a little later.
                    log.exception("draining the %s %s failed; trying again in %g s", what, stream,
                                  ERROR_RETRY_SECONDS)
                    delay = ERROR_RETRY_SECONDS
                finally:
                    try:
                        leases.release(name, owner)
                    except Exception:  # the lease expires on its own
                        log.exception("could not release the lease on the %s %s", what, stream)
            if delay is not None:
                self.schedule_drain(*stream, delay=delay)

        self.drain_task = drain_stream

    def nudge(self, *stream: str) -> None:
        """Ask a worker to drain one stream now."""
        self.drain_task(*stream)

    def schedule_drain(self, *stream: str, delay: float) -> bool:
        """Drain the stream in `delay` seconds, unless a drain of it is scheduled already; whether one was added.

        The one already scheduled stays the stream's next: it drains whatever is due when it runs, and schedules
        the next if the stream must wait again.
        """
        key, task_id = scheduled_key(*stream, prefix=self.marker_prefix), uuid.uuid4().hex
        if not self.huey.put_if_empty(key, (task_id, time.time() + delay)):
            return False
        try:
            self.drain_task.schedule(stream, delay=delay, id=task_id)
        except BaseException:
            with contextlib.suppress(Exception):  # else the resume drops it once it is overdue
                self.huey.delete(key)
            raise
        return True

    def _forget_scheduled(self, stream: tuple[str, ...], task_id: str) -> None:
        """A scheduled drain starts: it no longer waits in the schedule (another marker is left alone)."""
        key = scheduled_key(*stream, prefix=self.marker_prefix)
        marker = self.huey.get(key, peek=True)
        if marker is not None and marker[0] == task_id:
            self.huey.delete(key)

    def resume_pending(self) -> int:
        """Nudge every stream the store says is pending, but those with a drain in the schedule; returns how many
        were nudged."""
        now = time.time()
        nudged = 0
        for stream in self.pending():
            key = scheduled_key(*stream, prefix=self.marker_prefix)
            marker = self.huey.get(key, peek=True)
            if marker is not None:
                if marker[1] + self.resume_interval + CONSUMER_SLACK_SECONDS > now:
                    continue
                log.warning("the drain of the %s %s scheduled %.0f s ago never started; resuming it", self.what,
                            stream, now - marker[1])
                self.huey.delete(key)
            self.nudge(*stream)
            nudged += 1
        if nudged:
            log.info("resumed %d %ss with pending work", nudged, self.what)
        return nudged

    def prepare_worker_start(self) -> None:
        """Before a worker consumes: resume every pending stream."""
        self.resume_pending()


class DeliveryQueue(StreamQueue):
    """Registers the delivery task on a huey instance: its streams are (subscriber, order_key)."""

    def __init__(self, huey: Huey, dispatcher: Dispatcher, leases: StreamLeases) -> None:
        self.dispatcher = dispatcher
        # Longer than one delivery (delivery_timeout bounds an attempt whole): a drain renews it before each one,
        # and a killed worker's lease holds its stream back no longer than this.
        super().__init__(huey, leases, task_name="drain_stream", marker_prefix=SCHEDULED_KEY_PREFIX, lease_prefix="",
                         lease_seconds=dispatcher.settings.delivery_timeout * 2 + 5,
                         resume_interval=dispatcher.settings.resume_interval_seconds, what="event stream",
                         drain=dispatcher.drain_stream, pending=dispatcher.store.pending_streams)

    def keep_resuming(self, stop: threading.Event, *also: Callable[[], object]) -> threading.Thread:
        """A daemon thread that resumes the pending streams (and runs each of `also`) every resume interval until
        `stop` is set."""
        def run() -> None:
            while not stop.wait(self.resume_interval):
                for work in (self.resume_pending, *also):
                    try:
                        work()
                    except Exception:  # the store or the queue unreachable: the next round tries again
                        log.exception("could not resume pending work (%s); trying again in %g s",
                                      getattr(work, "__qualname__", work), self.resume_interval)

        thread = threading.Thread(target=run, name="resume-pending-streams", daemon=True)
        thread.start()
        return thread
