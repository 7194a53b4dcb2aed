"""A subscriber that costs the event worker nothing but the round trip: every POST is answered 204 at once.

It keeps, in memory, when each delivery arrived (`time.time()`, by its `webhook-id` header: the event's id), so
the event pipeline benchmark can match deliveries to the webhooks it sent on the same machine's clock. Served by
gunicorn in one process (the arrivals live in it), threaded so that waiting clients do not hold deliveries up:

- `POST <any path>`: the body is read and ignored, the arrival recorded; 204.
- `GET /count`: `{"received": n, "duplicates": n, "first": t, "last": t}` (times of the first and the latest
  arrival, null before any).
- `GET /arrivals`: `{"arrivals": [[id, t], ...]}`, first arrivals in the order they came.
- `GET /wait?id=<event id>&timeout=<seconds>`: blocks until that event has arrived (at most `timeout`, capped at
  `MAX_WAIT_SECONDS`); `{"id": ..., "at": t}`, or 404 when it did not come in time.
- `POST /_reset`: forget every arrival.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import parse_qs

#: the longest a GET /wait may block, whatever the client asks for
MAX_WAIT_SECONDS = 30.0


class Arrivals:
    """First arrival time per event id, and how many deliveries came again for an id already seen."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.duplicates = 0
        self.latest: float | None = None
        self.changed = threading.Condition()

    def record(self, event_id: str, at: float) -> None:
        """Note one delivery of `event_id` at `at`."""
        with self.changed:
            if event_id in self.times:
                self.duplicates += 1
            else:
                self.times[event_id] = at
            self.latest = at
            self.changed.notify_all()

    def wait_for(self, event_id: str, seconds: float) -> float | None:
        """When `event_id` arrived, waiting up to `seconds` for it; None if it did not."""
        deadline = time.monotonic() + seconds
        with self.changed:
            while event_id not in self.times:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
            return self.times[event_id]

    def summary(self) -> dict[str, Any]:
        """Counts and the first and latest arrival."""
        with self.changed:
            first = next(iter(self.times.values()), None)
            return {"received": len(self.times), "duplicates": self.duplicates, "first": first,
                    "last": self.latest}

    def listing(self) -> list[list[Any]]:
        """Every first arrival as [id, time], in arrival order."""
        with self.changed:
            return [[event_id, at] for event_id, at in self.times.items()]

    def reset(self) -> None:
        """Forget everything."""
        with self.changed:
            self.times.clear()
            self.duplicates = 0
            self.latest = None


class FastSubscriber:
    """The WSGI app: records deliveries and answers the benchmark's questions about them."""

    def __init__(self) -> None:
        self.arrivals = Arrivals()

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        """Route by method and path (see the module's docstring)."""
        at = time.time()
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "POST":
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if path == "/_reset":
                self.arrivals.reset()
            else:
                self.arrivals.record(environ.get("HTTP_WEBHOOK_ID", ""), at)
            start_response("204 No Content", [])
            return []
        if path == "/count":
            return self._json(start_response, self.arrivals.summary())
        if path == "/arrivals":
            return self._json(start_response, {"arrivals": self.arrivals.listing()})
        if path == "/wait":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            event_id = (query.get("id") or [""])[0]
            seconds = min(float((query.get("timeout") or ["5"])[0]), MAX_WAIT_SECONDS)
            arrived = self.arrivals.wait_for(event_id, seconds)
            if arrived is None:
                return self._json(start_response, {"id": event_id, "at": None}, "404 Not Found")
            return self._json(start_response, {"id": event_id, "at": arrived})
        return self._json(start_response, {"subscriber": "fast"})

    @staticmethod
    def _json(start_response: Any, document: dict, status: str = "200 OK") -> list[bytes]:
        body = json.dumps(document).encode("utf-8")
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


app = FastSubscriber()
