"""The bulkhead guard: at most max_concurrent_calls in flight per connection and process."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from gateway.errors import ConnectionBusy
from gateway.guards.base import CallGuard, GuardedCall

if TYPE_CHECKING:
    from gateway.guards.base import GuardedConnection


class BulkheadGuard(CallGuard):
    """At most max_concurrent_calls in flight per process; a call waits at most queue_timeout for a place."""

    name = "bulkhead"
    settings = ("max_concurrent_calls", "queue_timeout")
    refusal = ConnectionBusy
    code = "bulkhead-full"

    def __init__(self, connection: GuardedConnection) -> None:
        super().__init__(connection)
        self.places = threading.BoundedSemaphore(connection.settings.max_concurrent_calls)

    def admit(self, call: GuardedCall) -> None:
        """Take a place, or refuse with 503 bulkhead-full."""
        settings = self.connection.settings
        if not self.places.acquire(timeout=call.wait_allowed(settings.queue_timeout)):
            raise self.refuse(
                f"Connection {self.connection.name!r} has {settings.max_concurrent_calls} calls in flight "
                f"(max_concurrent_calls) and none ended within queue_timeout ({settings.queue_timeout:g} s); "
                "nothing was sent.")

    def release(self, call: GuardedCall, admission: None) -> None:
        """Free the place."""
        self.places.release()
