"""Delivering stored events to subscribers: one order's events in order, retried with backoff, then dead.

`drain_stream` works through one (subscriber, order) stream: it sends the head delivery when it is due and
moves on only when that delivery is delivered or dead, so a subscriber sees one order's events in the order
they happened. It returns how long to wait before the stream needs attention again (None: nothing pending).
Every attempt is counted by subscriber and outcome (gateway.metrics), and a delivery's lag since the gateway
stored the event is observed when it is delivered.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping

import requests
from opentelemetry.trace import SpanKind
from requests.adapters import HTTPAdapter

from gateway import logs, metrics, tracing
from gateway.config import EventSettings, SubscriberSettings
from gateway.events.signing import sign_delivery
from gateway.events.store import EventStore, order_ids

log = logging.getLogger("gateway.events")

#: statuses that mean "try again later" although they are not 5xx
RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


class Dispatcher:
    """Sends events to subscribers over one pooled session, recording every attempt in the store."""

    def __init__(self, store: EventStore, subscribers: Mapping[str, SubscriberSettings], settings: EventSettings,
                 *, clock: Callable[[], float] = time.time, jitter: Callable[[float], float] | None = None) -> None:
        self.store = store
        self.subscribers = subscribers
        self.settings = settings
        self.clock = clock
        # Full jitter (a random wait up to the exponential bound) spreads retries of many deliveries apart.
        self.jitter = jitter or (lambda bound: random.uniform(bound / 2, bound))  # noqa: S311 - not for secrets
        self.session = requests.Session()
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the given number of failed attempts."""
        bound = min(self.settings.backoff_max_seconds, self.settings.backoff_base_seconds * 2 ** max(attempts - 1, 0))
        return self.jitter(bound)

    def send(self, subscriber: SubscriberSettings, event: dict,
             trace_context: Mapping[str, str] | None = None) -> tuple[str, int | None, str | None]:
        """POST one event, in a span of the trace the event was received in (`trace_context`, its W3C headers);
        returns (outcome "delivered" | "retry" | "reject", HTTP status, error text)."""
        with tracing.span(f"deliver {event.get('type')}", kind=SpanKind.PRODUCER,
                          parent=tracing.incoming_context(trace_context or {}),
                          attributes={"gateway.subscriber": subscriber.name, "gateway.event_id": event["id"]}):
            started = time.perf_counter()
            outcome, status, error = self._post(subscriber, event)
            took_ms = round((time.perf_counter() - started) * 1000, 3)
            tracing.annotate({"gateway.outcome": outcome, "http.response.status_code": status},
                             error=error if outcome != "delivered" else None)
            log.log(logging.INFO if outcome == "delivered" else logging.WARNING,
                    "event %s to %s: %s in %.1f ms%s", event["id"], subscriber.name, outcome, took_ms,
                    f" ({error})" if error else "",
                    extra={"outcome": outcome, "status": status, "duration_ms": took_ms,
                           "trace_id": tracing.current_trace_id()})
            return outcome, status, error

    def _post(self, subscriber: SubscriberSettings, event: dict) -> tuple[str, int | None, str | None]:
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        # Signed with the wall clock, whatever clock schedules retries: subscribers check the timestamp's age.
        headers = {"Content-Type": "application/json", **tracing.outbound_headers(),
                   **sign_delivery(subscriber.secret.reveal(), event["id"], int(time.time()), body)}
        timeout = self.settings.delivery_timeout
        try:
            response = self.session.post(subscriber.url, data=body, headers=headers, timeout=(timeout, timeout),
                                         allow_redirects=False)
            response.close()
        except requests.Timeout:
            return "retry", None, f"timed out after {timeout:g} s"
        except requests.RequestException as error:
            return "retry", None, f"{type(error).__name__}: could not reach the subscriber"
        if 200 <= response.status_code < 300:
            return "delivered", response.status_code, None
        if response.status_code >= 500 or response.status_code in RETRYABLE_CLIENT_STATUSES:
            return "retry", response.status_code, f"HTTP {response.status_code}"
        return "reject", response.status_code, f"HTTP {response.status_code}: the subscriber refused the event"

    def drain_stream(self, subscriber_name: str, order_key: str,
                     still_mine: Callable[[], bool] = lambda: True) -> float | None:
        """Deliver what is due in one (subscriber, order) stream; the seconds until it needs attention again.

        `still_mine` renews the caller's lease on the stream before each delivery; if it was lost, stop.
        """
        subscriber = self.subscribers.get(subscriber_name)
        while True:
            if not still_mine():
                return None
            head = self.store.next_delivery(subscriber_name, order_key)
            if head is None:
                return None
            now = self.clock()
            if subscriber is None:
                self.store.record_attempt(head["event_id"], subscriber_name, outcome="dead",
                                          error="the subscriber is no longer configured", now=now)
                metrics.event_deliveries.labels(subscriber_name, "dead").inc()
                continue
            if head["next_attempt_at"] is not None and head["next_attempt_at"] > now:
                return head["next_attempt_at"] - now
            with logs.bound(subscriber=subscriber_name, event_id=head["event_id"],
                            order_ids=order_ids(head["event"]) or None):
                outcome, status, error = self.send(subscriber, head["event"], head.get("trace_context"))
            attempts = head["attempts"] + 1
            now = self.clock()
            if outcome == "delivered":
                self.store.record_attempt(head["event_id"], subscriber_name, outcome="delivered",
                                          status_code=status, now=now)
                metrics.event_deliveries.labels(subscriber_name, "delivered").inc()
                # A clock that differs from the one that stored the event (another machine's) never makes it negative.
                metrics.event_delivery_lag.labels(subscriber_name).observe(max(now - head["received_at"], 0.0))
            elif outcome == "reject" or attempts >= self.settings.max_attempts:
                log.warning("event %s to %s is dead after %d attempts: %s", head["event_id"], subscriber_name,
                            attempts, error)
                self.store.record_attempt(head["event_id"], subscriber_name, outcome="dead", status_code=status,
                                          error=error, now=now)
                metrics.event_deliveries.labels(subscriber_name, "dead").inc()
            else:
                delay = self.backoff(attempts)
                self.store.record_attempt(head["event_id"], subscriber_name, outcome="failed", status_code=status,
                                          error=error, next_attempt_at=now + delay, now=now)
                metrics.event_deliveries.labels(subscriber_name, "failed").inc()
                return delay

    def close(self) -> None:
        """Release pooled connections."""
        self.session.close()
