"""The event worker's heartbeat: the worker writes the time every few seconds, /readyz reads how old it is.

In a file beside the event database (one machine), or in Redis when the events are there (every machine sees it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import redis

from gateway.config import GatewaySettings
from gateway.stores import redis_client

BEAT_SECONDS = 5.0
REDIS_KEY = "gateway:worker:heartbeat"


class Heartbeat:
    """Writes and reads the time of the worker's last beat."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.url = settings.events.redis_url
        self.path = Path(settings.events.database).parent / "worker.heartbeat"
        self._redis = redis_client(self.url, settings.stores, store="worker heartbeat") if self.url else None

    def beat(self, now: float | None = None) -> None:
        """Say the worker is alive now."""
        stamp = repr(time.time() if now is None else now)
        if self._redis is not None:
            self._redis.set(REDIS_KEY, stamp, ex=3600)
        else:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(stamp)
            temporary.replace(self.path)

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last beat; None if the worker never beat."""
        if self._redis is not None:
            value = self._redis.get(REDIS_KEY)
        else:
            try:
                value = self.path.read_text()
            except (FileNotFoundError, OSError):
                value = None
        if not value:
            return None
        return max((time.time() if now is None else now) - float(value), 0.0)

    def keep_beating(self, stop: threading.Event) -> threading.Thread:
        """A daemon thread that beats every BEAT_SECONDS until `stop` is set."""
        def run() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError, redis.RedisError):  # the next beat tries again; /readyz shows gaps
                    self.beat()
                stop.wait(BEAT_SECONDS)

        thread = threading.Thread(target=run, name="worker-heartbeat", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Close the Redis connection."""
        if self._redis is not None:
            self._redis.close()
