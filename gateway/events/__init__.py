"""Order events: receiving, storing and delivering them to subscribers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from huey.storage import RedisStorage

from gateway.bookkeeping import log_failure
from gateway.config import GatewaySettings
from gateway.events.delivery import Dispatcher
from gateway.events.leases import RedisStreamLeases, SqliteStreamLeases, StreamLeases
from gateway.events.queue import DeliveryQueue, StreamQueue, make_huey
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import EventStore, SqliteEventStore
from gateway.jobs import JobStore, open_job_store
from gateway.jobs.sender import JobSender, completion_event

log = logging.getLogger("gateway.events")


def open_event_store(settings: GatewaySettings) -> tuple[EventStore, StreamLeases]:
    """The configured event store and stream leases: in Redis when a Redis URL is given, else in SQLite."""
    url, stores = settings.events.redis_url, settings.stores
    if url:
        return RedisEventStore(url, stores=stores), RedisStreamLeases(url, stores=stores)
    store = SqliteEventStore(settings.events.database, stores=stores)
    return store, SqliteStreamLeases(settings.events.database, stores=stores)


class EventService:
    """Everything the web processes and the worker share: the event store, the dispatcher and the delivery queue,
    and the update jobs' store and queue (the worker attaches the JobSender that sends them)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.store, self.leases = open_event_store(settings)
        self.dispatcher = Dispatcher(self.store, settings.subscribers, settings.events)
        self.queue = DeliveryQueue(make_huey(settings.events, settings.stores), self.dispatcher, self.leases)
        self.jobs: JobStore = open_job_store(settings)
        #: sends the update jobs: attached by the worker (web processes only queue them)
        self.job_sender: JobSender | None = None
        # One drain per lane at a time: a lane's jobs go out one after another, in the order accepted.
        self.job_queue = StreamQueue(
            self.queue.huey, self.leases, task_name="send_lane", marker_prefix="scheduled-send:",
            lease_prefix="job-lane:", lease_seconds=settings.jobs.send_timeout + settings.jobs.lease_margin_seconds,
            resume_interval=settings.events.resume_interval_seconds, what="update job lane",
            drain=self._send_lane, pending=lambda: [(lane,) for lane in self.jobs.active_lanes()])
        # The queue in the store's own Redis: a new event's wake-ups go in the store's round trip (huey's
        # immediate mode runs tasks in the caller, so it is nudged as usual).
        huey = self.queue.huey
        self._queue_with_store = isinstance(self.store, RedisEventStore) and \
            isinstance(huey.storage, RedisStorage) and not huey.immediate

    def add_event(self, event: dict, *, dedupe_key: str, order_key: str, subscribers: Sequence[str],
                  trace_context: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """Store the event (store.add_event's outcome) and, when it is new, wake a worker for each of its streams.

        A wake-up that fails after the event is stored is logged, not raised: the worker resumes pending streams
        on its own."""
        if self._queue_with_store:
            huey = self.queue.huey
            messages = [huey.serialize_task(self.queue.drain_task.s(subscriber, order_key))
                        for subscriber in subscribers]
            return self.store.add_event(event, dedupe_key=dedupe_key, order_key=order_key, subscribers=subscribers,
                                        trace_context=trace_context, queue=(huey.storage.queue_key, messages))
        event_id, created = self.store.add_event(event, dedupe_key=dedupe_key, order_key=order_key,
                                                 subscribers=subscribers, trace_context=trace_context)
        if created:
            for subscriber in subscribers:
                try:
                    self.queue.nudge(subscriber, order_key)
                except Exception as error:  # stored is safe: the worker resumes pending streams on its own
                    log_failure(error, "could not queue event %s for %s; the worker will resume it", event_id,
                                subscriber, logger=log)
        return event_id, created

    def _send_lane(self, lane: str, still_mine: Callable[[], bool]) -> float | None:
        if self.job_sender is None:  # a web process runs no task: only a worker has a sender
            log.warning("update job lane %s reached a process that sends no jobs; a worker resumes it", lane)
            return None
        return self.job_sender.drain_lane(lane, still_mine)

    def announce_job(self, job: dict, event_type: str) -> None:
        """Store the completion event of the job's latest finish, once (deduplicated by job and finish), and wake
        the workers for the subscribers that want it; raises when it could not be stored."""
        self.add_event(completion_event(job, event_type),
                       dedupe_key=f"{job['connection']}:job:{job['id']}:{job['finishes']}",
                       order_key=f"updates:{job['lane']}", subscribers=self.subscribers_for(event_type),
                       trace_context=job.get("trace_context"))

    def subscribers_for(self, event_type: str) -> list[str]:
        """The names of the subscribers that want events of this type."""
        return [name for name, subscriber in self.settings.subscribers.items() if event_type in subscriber.types]

    def close(self) -> None:
        """Release the store and the dispatcher's connections."""
        self.dispatcher.close()
        self.jobs.close()
        self.leases.close()
        self.store.close()
