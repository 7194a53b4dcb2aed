"""Delivering Ongoing's order webhooks: one background thread, Ongoing's retry policy scaled down, and a record.

First attempts go out in the order the webhooks were fired. A failed attempt (network error, timeout or an answer
other than 2xx) is retried with the same payload after each configured delay in turn, then given up; a retry waits
its delay without holding up later webhooks, as Ongoing's retries do, so a retried webhook can arrive after newer
ones.
"""

import heapq
import itertools
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests
from requests.auth import AuthBase, HTTPBasicAuth

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

SENDER_THREAD_NAME = "ongoing-webhook-sender"
SENDER_STOPPED = "The webhook sender is stopped."
WEBHOOK_CONTENT_TYPE = "application/json; charset=utf-8"
MAX_ERROR_LENGTH = 300


class StaticTokenAuth(AuthBase):
    """Ongoing's token authentication: a fixed secret in a header the webhook's configuration names."""

    def __init__(self, header: str, token: str):
        self.header = header
        self.token = token

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        """Put the token in its header."""
        prepared.headers[self.header] = self.token
        return prepared


def _required_text(setting: Mapping, member: str) -> str:
    """A non-empty string member of the ONGOING_WEBHOOK_AUTH setting."""
    value = setting.get(member)
    if not isinstance(value, str) or not value:
        raise ValueError(f"ONGOING_WEBHOOK_AUTH of type {setting['type']!r} needs a non-empty string {member!r}.")
    return value


def build_webhook_auth(setting: Mapping | None) -> AuthBase | None:
    """The authentication of ONGOING_WEBHOOK_AUTH: None, basic (username, password) or token (header, token)."""
    if setting is None:
        return None
    if not isinstance(setting, Mapping):
        raise ValueError("ONGOING_WEBHOOK_AUTH must be None or a mapping with a 'type'.")
    if setting.get("type") == "basic":
        return HTTPBasicAuth(_required_text(setting, "username"), _required_text(setting, "password"))
    if setting.get("type") == "token":
        return StaticTokenAuth(_required_text(setting, "header"), _required_text(setting, "token"))
    raise ValueError(f"ONGOING_WEBHOOK_AUTH type must be 'basic' or 'token', not {setting.get('type')!r}.")


def read_retry_delays(setting: Sequence) -> tuple[float, ...]:
    """The seconds to wait before each retry, from ONGOING_WEBHOOK_RETRY_DELAYS."""
    if isinstance(setting, str | bytes) or not isinstance(setting, Sequence):
        raise ValueError("ONGOING_WEBHOOK_RETRY_DELAYS must be a list of seconds.")
    delays = []
    for delay in setting:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError(f"ONGOING_WEBHOOK_RETRY_DELAYS must hold non-negative numbers, not {delay!r}.")
        delays.append(float(delay))
    return tuple(delays)


@dataclass
class _Delivery:
    """One webhook's payload and how its delivery has gone so far."""

    payload: dict
    body: bytes
    attempts: int = 0
    state: str = PENDING
    last_status: int | None = None
    last_error: str | None = None
    # Failed attempts since the webhook was fired or last resent: which retry delay comes next.
    retries_used: int = 0
    # Raised by each resend, so that a retry planned before it is dropped.
    generation: int = 0

    def describe(self) -> dict:
        """The record of this webhook as GET /ongoing/webhooks shows it."""
        return {
            "webhookEventId": self.payload["webhookEventId"],
            "webhookTemplate": self.payload["webhookTemplate"],
            "orderId": self.payload["orderId"],
            "attempts": self.attempts,
            "state": self.state,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


class SenderStopped(Exception):
    """The sender was stopped and sends nothing more."""


class WebhookSender:
    """Posts webhook payloads to one URL from a daemon thread started on the first send, retrying failures."""

    def __init__(
        self,
        url: str | None,
        auth: AuthBase | None,
        retry_delays: Sequence[float],
        timeout: float,
    ):
        self._url = url
        self._auth = auth
        self._retry_delays = tuple(retry_delays)
        self._timeout = timeout
        self._changed = threading.Condition()
        self._deliveries: dict[int, _Delivery] = {}
        # Planned attempts as (due on the monotonic clock, sequence, event id, generation): the sequence keeps
        # attempts due at the same moment in the order they were planned.
        self._planned: list[tuple[float, int, int, int]] = []
        self._sequence = itertools.count()
        self._attempt_in_flight = False
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def enabled(self) -> bool:
        """Whether a webhook URL is configured; without one nothing is sent or recorded."""
        return self._url is not None

    def send(self, payloads: Sequence[dict]) -> None:
        """Record each payload as pending and plan its first attempt, in the order given."""
        if not self.enabled:
            return
        with self._changed:
            for payload in payloads:
                event_id = payload["webhookEventId"]
                delivery = _Delivery(payload=payload, body=json.dumps(payload, ensure_ascii=False).encode("utf-8"))
                self._deliveries[event_id] = delivery
                if self._stopped:
                    delivery.state, delivery.last_error = FAILED, SENDER_STOPPED
                else:
                    self._plan_attempt(event_id, delivery, delay=0.0)
            self._start_thread_once()
            self._changed.notify_all()

    def resend(self, event_id: int) -> dict | None:
        """Send a recorded webhook again (same payload, fresh retries); its record, or None if there is none."""
        with self._changed:
            delivery = self._deliveries.get(event_id)
            if delivery is None:
                return None
            if self._stopped:
                raise SenderStopped(SENDER_STOPPED)
            delivery.generation += 1
            delivery.retries_used = 0
            delivery.state = PENDING
            self._plan_attempt(event_id, delivery, delay=0.0)
            self._start_thread_once()
            self._changed.notify_all()
            return delivery.describe()

    def records(self) -> list[dict]:
        """Every webhook fired since the start or the last reset, in the order fired."""
        with self._changed:
            return [delivery.describe() for delivery in self._deliveries.values()]

    def reset(self) -> None:
        """Forget every webhook and drop the planned retries; an attempt already under way is not recorded."""
        with self._changed:
            self._deliveries.clear()
            self._planned.clear()
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no webhook is pending and no attempt is under way; False if `timeout` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(self._is_idle, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop for good: pending webhooks fail, and the thread ends once an attempt under way has finished."""
        with self._changed:
            self._stopped = True
            self._planned.clear()
            for delivery in self._deliveries.values():
                if delivery.state == PENDING:
                    delivery.state, delivery.last_error = FAILED, SENDER_STOPPED
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self._timeout + 1 if timeout is None else timeout)

    def _is_idle(self) -> bool:
        """Whether nothing is pending or under way; the caller holds the lock."""
        return not self._attempt_in_flight and all(delivery.state != PENDING for delivery in self._deliveries.values())

    def _plan_attempt(self, event_id: int, delivery: _Delivery, delay: float) -> None:
        """Plan an attempt `delay` seconds from now; the caller holds the lock."""
        due = time.monotonic() + delay
        heapq.heappush(self._planned, (due, next(self._sequence), event_id, delivery.generation))

    def _start_thread_once(self) -> None:
        """Start the sending thread unless it runs already or the sender is stopped; the caller holds the lock."""
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._send_planned_attempts, name=SENDER_THREAD_NAME, daemon=True)
            self._thread.start()

    def _send_planned_attempts(self) -> None:
        """The thread's loop: take the next due attempt, post it outside the lock, record the outcome."""
        with requests.Session() as session:
            while True:
                with self._changed:
                    attempt = self._wait_for_due_attempt()
                    if attempt is None:
                        return
                    self._attempt_in_flight = True
                event_id, delivery, generation = attempt
                status, error = self._post(session, delivery.body)
                with self._changed:
                    self._attempt_in_flight = False
                    self._record_outcome(event_id, delivery, generation, status, error)
                    self._changed.notify_all()

    def _wait_for_due_attempt(self) -> tuple[int, _Delivery, int] | None:
        """The next attempt once it is due, skipping stale plans; None once stopped. The caller holds the lock."""
        while not self._stopped:
            if not self._planned:
                self._changed.wait()
                continue
            due, _, event_id, generation = self._planned[0]
            delivery = self._deliveries.get(event_id)
            if delivery is None or delivery.generation != generation:
                heapq.heappop(self._planned)
                continue
            wait = due - time.monotonic()
            if wait > 0:
                self._changed.wait(wait)
                continue
            heapq.heappop(self._planned)
            return event_id, delivery, generation
        return None

    def _post(self, session: requests.Session, body: bytes) -> tuple[int | None, str | None]:
        """Post one payload; the HTTP status (None without an answer) and what went wrong (None on a 2xx)."""
        try:
            response = session.post(
                self._url,
                data=body,
                headers={"Content-Type": WEBHOOK_CONTENT_TYPE},
                auth=self._auth,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            return None, f"No answer within {self._timeout:g} seconds."
        except requests.RequestException as error:
            return None, f"{type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
        response.close()
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    def _record_outcome(
        self, event_id: int, delivery: _Delivery, generation: int, status: int | None, error: str | None
    ) -> None:
        """Count the attempt, then mark it delivered, plan the next retry, or give up; the caller holds the lock."""
        delivery.attempts += 1
        delivery.last_status, delivery.last_error = status, error
        if self._deliveries.get(event_id) is not delivery or delivery.generation != generation:
            return  # reset or resent while the attempt was under way
        if error is None:
            delivery.state = DELIVERED
        elif delivery.retries_used < len(self._retry_delays) and not self._stopped:
            self._plan_attempt(event_id, delivery, self._retry_delays[delivery.retries_used])
            delivery.retries_used += 1
        else:
            delivery.state = FAILED
