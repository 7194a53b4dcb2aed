"""Order events: receiving, storing and delivering them to subscribers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from huey.storage import RedisStorage

from gateway.bookkeeping import log_failure
from gateway.config import GatewaySettings
from gateway.events.delivery import Dispatcher
from gateway.events.leases import RedisStreamLeases, SqliteStreamLeases, StreamLeases
from gateway.events.queue import DeliveryQueue, make_huey
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import EventStore, SqliteEventStore

log = logging.getLogger("gateway.events")


def open_event_store(settings: GatewaySettings) -> tuple[EventStore, StreamLeases]:
    """The configured event store and stream leases: in Redis when a Redis URL is given, else in SQLite."""
    url, stores = settings.events.redis_url, settings.stores
    if url:
        return RedisEventStore(url, stores=stores), RedisStreamLeases(url, stores=stores)
    store = SqliteEventStore(settings.events.database, stores=stores)
    return store, SqliteStreamLeases(settings.events.database, stores=stores)


class EventService:
    """Everything the web processes and the worker share: the store, the dispatcher and the queue."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.store, self.leases = open_event_store(settings)
        self.dispatcher = Dispatcher(self.store, settings.subscribers, settings.events)
        self.queue = DeliveryQueue(make_huey(settings.events, settings.stores), self.dispatcher, self.leases)
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

    def subscribers_for(self, event_type: str) -> list[str]:
        """The names of the subscribers that want events of this type."""
        return [name for name, subscriber in self.settings.subscribers.items() if event_type in subscriber.types]

    def close(self) -> None:
        """Release the store and the dispatcher's connections."""
        self.dispatcher.close()
        self.leases.close()
        self.store.close()
