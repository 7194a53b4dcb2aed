"""Order events: receiving, storing and delivering them to subscribers."""

from __future__ import annotations

from gateway.config import GatewaySettings
from gateway.events.delivery import Dispatcher
from gateway.events.leases import RedisStreamLeases, SqliteStreamLeases, StreamLeases
from gateway.events.queue import DeliveryQueue, make_huey
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import EventStore, SqliteEventStore


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

    def subscribers_for(self, event_type: str) -> list[str]:
        """The names of the subscribers that want events of this type."""
        return [name for name, subscriber in self.settings.subscribers.items() if event_type in subscriber.types]

    def close(self) -> None:
        """Release the store and the dispatcher's connections."""
        self.dispatcher.close()
        self.leases.close()
        self.store.close()
