"""Delivering stored events to subscribers: one order's events in order, retried with backoff, then dead.

`drain_stream` works through one (subscriber, order) stream: it sends the head delivery when it is due and
moves on only when that delivery is delivered or dead, so a subscriber sees one order's events in the order
they happened. It returns how long to wait before the stream needs attention again (None: nothing pending).
Every attempt is counted by subscriber and outcome (gateway.metrics), and a delivery's lag since the gateway
stored the event is observed when it is delivered.

Deliveries go out through the same transport as backend calls (gateway/transport.py), one HttpTransport per
subscriber: a pooled session, the whole attempt under `delivery_timeout` as a deadline (however a subscriber drips
its reply), the reply read up to `[events] max_reply_bytes` and no further, the subscriber's egress settings (proxy,
CA bundle, client certificate), and the transport's one error map.
A subscriber answers with its status line: 2xx is delivered; 5xx, 408, 425, 429, a timeout or a failed exchange
is retried with backoff; any other status is refused (dead). A reply whose body is larger than the cap is judged
on its status all the same.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping

import requests
from opentelemetry.trace import SpanKind

from gateway import logs, metrics, tracing
from gateway.config import EventSettings, Secret, SubscriberSettings
from gateway.deadlines import Deadline
from gateway.errors import BackendError, BackendTimeout
from gateway.events.signing import sign_delivery
from gateway.events.store import EventStore, order_ids
from gateway.transport import HttpTransport, OutboundRequest

log = logging.getLogger("gateway.events")

#: statuses that mean "try again later" although they are not 5xx
RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


class _ReplyStatus(threading.local):
    """The status line of the reply the current thread's delivery received, once its headers are in."""

    code: int | None = None


class StandardWebhooksAuth(requests.auth.AuthBase):
    """Signs each delivery with a subscriber's secret as Standard Webhooks asks (gateway/events/signing.py), and
    notes the reply's status as soon as its headers arrive, before the transport reads the body.

    The request names its event in its `webhook-id` header; the signature covers that id, the wall clock's time
    (subscribers check the timestamp's age) and the body.
    """

    def __init__(self, secret: Secret) -> None:
        self.secret = secret
        self.reply_status = _ReplyStatus()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add webhook-timestamp and webhook-signature, and watch for the reply's status."""
        request.headers.update(sign_delivery(self.secret.reveal(), request.headers["webhook-id"], int(time.time()),
                                             request.body or b""))
        request.register_hook("response", self._note_status)
        return request

    def _note_status(self, response: requests.Response, **kwargs: object) -> None:
        self.reply_status.code = response.status_code


def judge_status(status: int) -> tuple[str, str | None]:
    """What a subscriber's status means: ("delivered" | "retry" | "reject", error text)."""
    if 200 <= status < 300:
        return "delivered", None
    if status >= 500 or status in RETRYABLE_CLIENT_STATUSES:
        return "retry", f"HTTP {status}"
    return "reject", f"HTTP {status}: the subscriber refused the event"


def describe_failed_exchange(error: BackendError) -> str:
    """The error text of an attempt that got no complete reply, from the transport's mapped error.

    It names the requests or urllib3 exception the transport translated (its context), as deliveries always have;
    a TLS or proxy failure adds the transport's account of it (certificate verification, handshake, the proxy).
    """
    cause = error.__context__ if error.from_transport and error.__context__ is not None else error
    if isinstance(cause, requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return f"{type(cause).__name__}: {error.detail}"
    what = "could not reach the subscriber" if error.never_sent else "the subscriber's reply did not come complete"
    return f"{type(cause).__name__}: {what}"


class Dispatcher:
    """Sends events to subscribers, each over its own HttpTransport, recording every attempt in the store."""

    def __init__(self, store: EventStore, subscribers: Mapping[str, SubscriberSettings], settings: EventSettings,
                 *, clock: Callable[[], float] = time.time, jitter: Callable[[float], float] | None = None) -> None:
        self.store = store
        self.subscribers = subscribers
        self.settings = settings
        self.clock = clock
        # Full jitter (a random wait up to the exponential bound) spreads retries of many deliveries apart.
        self.jitter = jitter or (lambda bound: random.uniform(bound / 2, bound))  # noqa: S311 - not for secrets
        self.auths = {name: StandardWebhooksAuth(subscriber.secret) for name, subscriber in subscribers.items()}
        # Sessions open no connection before their first call, so the web processes, which never deliver, hold none.
        self.transports = {
            name: HttpTransport(connection=f"subscriber:{name}", connect_timeout=settings.delivery_timeout,
                                read_timeout=settings.delivery_timeout, max_reply_bytes=settings.max_reply_bytes,
                                pool_size=settings.worker_threads, egress=subscriber, auth=self.auths[name],
                                peer=f"Subscriber {name!r}")
            for name, subscriber in subscribers.items()
        }

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
        headers = {"Content-Type": "application/json", **tracing.outbound_headers(), "webhook-id": event["id"]}
        timeout = self.settings.delivery_timeout
        reply_status = self.auths[subscriber.name].reply_status
        reply_status.code = None
        deadline = Deadline.after(timeout, f"delivery_timeout {timeout:g} s")
        try:
            reply = self.transports[subscriber.name].send(OutboundRequest("POST", subscriber.url, headers, body),
                                                          deadline)
        except BackendTimeout:
            return "retry", None, f"timed out after {timeout:g} s"
        except BackendError as error:
            if not error.from_transport and reply_status.code is not None:
                # The transport's own size check (not a failed exchange, so not from_transport): it read no more
                # than max_reply_bytes of the body. The subscriber's verdict is its status line, which had come.
                outcome, error_text = judge_status(reply_status.code)
                return outcome, reply_status.code, error_text
            return "retry", None, describe_failed_exchange(error)
        if deadline.expired():
            # The watchdog shuts the socket down at the deadline, and a reply it cut can come back looking whole:
            # headers that were still dripping end there, and so does a body delimited by the connection's close.
            return "retry", None, f"timed out after {timeout:g} s"
        outcome, error_text = judge_status(reply.status)
        return outcome, reply.status, error_text

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
        for transport in self.transports.values():
            transport.close()
