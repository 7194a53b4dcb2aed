"""The configured connections of a running gateway: each a backend kind with its own settings, credentials,
transport, bulkhead, call lock and circuit breaker, and the one update flow every backend plugs into.

    Connection.check(update)           -> PlannedUpdate     fields, ids and rules checked; operation chosen
    Connection.dry_run(planned)        -> [OutboundRequest] the calls that would go out, credentials masked
    Connection.send(planned, budget)   -> [UpdateOutcome | BackendError], one per update, in order

Updates travel in calls: consecutive updates planned onto the same operation share a call, up to the
operation's `call_size`; a failed call fails exactly its own updates. Each call, in this order:

    budget spent?        the request's time budget ran out: the call's updates are 504 "not sent"
    breaker open?        503 with Retry-After, nothing sent (the breaker's state is in the problem's backend.code)
    bulkhead             at most max_concurrent_calls in flight per process; waiting beyond queue_timeout is 503
    call lock            the backend's (Ongoing: one goods owner's calls one after another, across processes and
                         machines); waiting beyond lock_timeout is 503
    attempts             under the breaker, within min(call_timeout, the budget): retried with jittered backoff only
                         when the request provably never reached the backend, or the operation is idempotent

The REST layer never needs to know which backend it talks to.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace

import pybreaker
from opentelemetry.trace import SpanKind
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_random_exponential

from gateway import logs, metrics, tracing
from gateway.backends import Backend, Credentials, Operation
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.config import ConnectionSettings, GatewaySettings
from gateway.coordination import ConcurrentCircuitBreaker, Coordination, LockTimeout
from gateway.deadlines import Deadline
from gateway.errors import (
    BackendError,
    BackendFailure,
    BackendTimeout,
    BackendUnavailable,
    ConnectionBusy,
    ValidationFailed,
)
from gateway.journal import Exchange
from gateway.journal.recorder import CallContext, JournalRecorder, call_context
from gateway.replies import read_reply, valid_retry_after
from gateway.scrubbing import Scrubber
from gateway.transport import BackendReply, HttpTransport, OutboundRequest, Transport

log = logging.getLogger("gateway.backends")

#: the failures that say a backend is unwell and count towards opening its breaker (refusals do not)
UNWELL = (BackendFailure, BackendUnavailable, BackendTimeout)
#: when set (a list), every attempt to send a call is noted in it: whoever set it learns whether anything may
#: have reached a backend (the REST layer stores an Idempotency-Key's reply only then)
calls_attempted: ContextVar[list[str] | None] = ContextVar("calls_attempted", default=None)


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A checked canonical update and the operation that will carry it."""

    update: OrderUpdate
    operation: Operation


class Connection:
    """One configured connection: settings, credentials, transport, bulkhead, lock and breaker; it renders nothing.

    Its secrets are masked by the gateway's one Scrubber (gateway/scrubbing.py) wherever errors become documents
    and log lines, so nothing here needs to know which texts a backend might echo.
    """

    def __init__(self, settings: ConnectionSettings, backend_class: type[Backend],
                 transport: Transport | None = None, coordination: Coordination | None = None,
                 recorder: JournalRecorder | None = None, scrubber: Scrubber | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.backend = backend_class(settings)
        self.kind = self.backend.kind
        self.credentials = Credentials(
            username=settings.username, password=settings.password.reveal() if settings.password else "")
        self.auth = self.backend.make_auth()
        self.transport: Transport = transport or HttpTransport(
            connection=settings.name,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_reply_bytes=settings.max_reply_bytes,
            pool_size=settings.pool_size,
            verify_tls=settings.verify_tls,
            auth=self.auth,
        )
        self.recorder = recorder
        self.scrubber = scrubber or Scrubber()
        self.bulkhead = threading.BoundedSemaphore(settings.max_concurrent_calls)
        self.locks = coordination.locks if coordination is not None else None
        self.lock_name = self.backend.call_lock_name()
        self.breaker = ConcurrentCircuitBreaker(
            fail_max=settings.breaker_failures, reset_timeout=settings.breaker_reset_seconds,
            state_storage=coordination.breaker_storage(settings.name) if coordination is not None else None,
            exclude=[lambda error: not isinstance(error, UNWELL)], name=settings.name,
            throw_new_error_on_trip=False,
        )

    def check(self, update: OrderUpdate) -> PlannedUpdate:
        """Refuse (ValidationFailed, with field paths) what the backend cannot carry; plan the rest."""
        return PlannedUpdate(update, self.backend.check_update(update))

    def dry_run(self, planned: Sequence[PlannedUpdate]) -> list[OutboundRequest]:
        """The requests the planned updates would travel in, with every credential masked."""
        credentials = self.credentials.masked()
        return [self.backend.dry_run_view(operation.render(updates, credentials))
                for operation, updates in self.calls(planned)]

    def send(self, planned: Sequence[PlannedUpdate],
             budget: Deadline | None = None) -> list[UpdateOutcome | BackendError]:
        """Send planned updates call by call, in order, within `budget`; a failed call fails exactly its updates."""
        results: list[UpdateOutcome | BackendError] = []
        for operation, updates in self.calls(planned):
            try:
                if budget is not None and budget.expired():
                    raise self._not_sent(budget)
                outcomes = self._guarded_call(operation, updates, budget)
            except BackendError as error:
                outcomes = [error] * len(updates)
            for outcome in outcomes:
                if isinstance(outcome, BackendError):
                    outcome.connection = self.name
                results.append(outcome)
        return results

    def calls(self, planned: Sequence[PlannedUpdate]) -> Iterator[tuple[Operation, list[OrderUpdate]]]:
        """The calls planned updates travel in: runs of one operation, cut at its call size."""
        start = 0
        while start < len(planned):
            operation = planned[start].operation
            end = start + 1
            while end < len(planned) and end - start < operation.call_size and planned[end].operation is operation:
                end += 1
            yield operation, [item.update for item in planned[start:end]]
            start = end

    def breaker_state(self) -> dict:
        """The breaker's state for health views: state, consecutive failures, seconds until a probe."""
        wait = self.breaker.retry_after()
        return {"state": self.breaker.current_state, "failures": self.breaker.fail_counter,
                "retry_after": None if wait is None else math.ceil(wait)}

    # --- one call --------------------------------------------------------------------------------------

    def _not_sent(self, budget: Deadline) -> BackendTimeout:
        return BackendTimeout(f"Not sent: the request's time budget ran out ({budget.reason}) before this "
                              "item's turn.", connection=self.name, code="budget-exhausted")

    def _guarded_call(self, operation: Operation, updates: list[OrderUpdate],
                      budget: Deadline | None) -> list[UpdateOutcome | BackendError]:
        deadline = Deadline.after(self.settings.call_timeout, f"call_timeout {self.settings.call_timeout:g} s")
        deadline = deadline.earliest(budget)
        wait = self.breaker.retry_after()
        if wait is not None:
            raise self._breaker_open(wait)
        if not self.bulkhead.acquire(timeout=min(self.settings.queue_timeout, deadline.remaining())):
            raise ConnectionBusy(
                f"Connection {self.name!r} has {self.settings.max_concurrent_calls} calls in flight "
                f"(max_concurrent_calls) and none ended within queue_timeout ({self.settings.queue_timeout:g} s); "
                "nothing was sent.", connection=self.name, code="bulkhead-full")
        try:
            if self.locks is None or self.lock_name is None:
                return self._breaker_call(operation, updates, deadline)
            try:
                with self.locks.hold(self.lock_name, min(self.settings.lock_timeout, deadline.remaining())):
                    return self._breaker_call(operation, updates, deadline)
            except LockTimeout:
                raise ConnectionBusy(
                    f"Another call of connection {self.name!r} held {self.backend.display_name}'s call lock "
                    f"({self.backend.call_lock_reason}) for lock_timeout ({self.settings.lock_timeout:g} s); "
                    "nothing was sent.", connection=self.name, code="lock-timeout") from None
        finally:
            self.bulkhead.release()

    def _breaker_open(self, wait: float) -> BackendUnavailable:
        error = BackendUnavailable(
            f"The circuit breaker of connection {self.name!r} is open after "
            f"{self.settings.breaker_failures} consecutive failures; nothing was sent. One probe call goes "
            f"through in {math.ceil(wait)} s.", connection=self.name, code="breaker-open")
        error.retry_after = str(max(math.ceil(wait), 1))
        return error

    def _breaker_call(self, operation: Operation, updates: list[OrderUpdate],
                      deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        try:
            return self.breaker.call(self._attempts, operation, updates, deadline)
        except pybreaker.CircuitBreakerError:  # another probe is deciding, or the breaker opened meanwhile
            raise self._breaker_open(self.breaker.retry_after() or self.settings.breaker_reset_seconds) from None

    def _attempts(self, operation: Operation, updates: list[OrderUpdate],
                  deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        idempotent = operation.is_idempotent(updates)

        def retryable(error: BaseException) -> bool:
            return (isinstance(error, BackendError) and error.from_transport and not deadline.expired()
                    and (error.never_sent or idempotent))

        backoff = wait_random_exponential(multiplier=0.05, max=1.0)
        for attempt in Retrying(
            stop=stop_any(stop_after_attempt(self.settings.retry_attempts),
                          lambda state: deadline.remaining() < 0.01),
            wait=lambda state: min(backoff(state), deadline.remaining()),
            retry=retry_if_exception(retryable),
            reraise=True,
        ):
            with attempt:
                return self._call(operation, updates, deadline)
        raise AssertionError("unreachable: Retrying either returns or reraises")  # pragma: no cover

    def _call(self, operation: Operation, updates: list[OrderUpdate],
              deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        with tracing.span(f"{self.kind} {operation.name}", kind=SpanKind.CLIENT, attributes={
                "gateway.connection": self.name, "gateway.backend": self.kind, "gateway.operation": operation.name,
                "gateway.order_count": len(updates)}):
            return self._traced_call(operation, updates, deadline)

    def _traced_call(self, operation: Operation, updates: list[OrderUpdate],
                     deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        rendered = operation.render(updates, self.credentials)
        # the trace goes on to the backend: its span is this call's
        request = replace(rendered, headers={**rendered.headers, **tracing.outbound_headers()})
        attempted = calls_attempted.get()
        if attempted is not None:
            attempted.append(f"{self.name}:{operation.name}")
        started, reply, outcome, error_text = time.time(), None, "failed", None
        try:
            reply = self.transport.send(request, deadline)
            try:
                payload = read_reply(reply, operation.reply_format, self.name,
                                     max_depth=self.settings.max_reply_depth)
                outcomes = operation.parse(payload, updates)
            except BackendUnavailable as error:
                error.retry_after = error.retry_after or valid_retry_after(reply.headers.get("Retry-After"))
                raise
            if len(outcomes) != len(updates):
                raise BackendFailure(f"{operation.name} gave {len(outcomes)} outcomes for {len(updates)} orders.",
                                     connection=self.name)
            refusals = [item for item in outcomes if isinstance(item, BackendError)]
            outcome = "refused" if refusals else "ok"
            error_text = refusals[0].detail if refusals else None
            return outcomes
        except BackendError as error:
            outcome, error_text = _journal_outcome(error), error.detail
            raise
        finally:
            took = time.time() - started
            metrics.backend_calls.labels(self.name, self.kind, operation.name, outcome).inc()
            metrics.backend_call_duration.labels(self.name, self.kind, operation.name).observe(took)
            self._log_call(operation, updates, reply, outcome, took)
            if self.recorder is not None:
                self._record(operation, updates, request, reply, started, outcome, error_text)

    def _log_call(self, operation: Operation, updates: list[OrderUpdate], reply: BackendReply | None, outcome: str,
                  took: float) -> None:
        """One log line per call, and the call's fields added to the request's (its access line names them)."""
        fields = {"connection": self.name, "backend": self.kind, "operation": operation.name,
                  "order_ids": [update.order_id for update in updates[:logs.MAX_ORDER_IDS]],
                  "backend_duration_ms": round(took * 1000, 3)}
        logs.note(**fields)
        tracing.annotate({"gateway.outcome": outcome, "http.response.status_code": reply.status if reply else None},
                         error=None if outcome in ("ok", "refused") else outcome)
        log.log(logging.INFO if outcome in ("ok", "refused") else logging.WARNING,
                "%s on %s: %s in %.1f ms", operation.name, self.name, outcome, took * 1000,
                extra={**fields, "outcome": outcome, "backend_status": reply.status if reply is not None else None})

    def _record(self, operation: Operation, updates: list[OrderUpdate], request: OutboundRequest,
                reply: BackendReply | None, started: float, outcome: str, error_text: str | None) -> None:
        """Hand the exchange to the journal, to be made (the request as a dry run shows it, everything scrubbed)
        and written on the journal's thread."""
        context = call_context.get()
        self.recorder.record(functools.partial(
            self._make_exchange, operation.name, tuple(update.order_id for update in updates), request,
            None if reply is None else (reply.status, dict(reply.headers), reply.body), started,
            round((time.time() - started) * 1000, 3), outcome, error_text, context))

    def _make_exchange(self, operation: str, order_ids: tuple[str, ...], request: OutboundRequest,
                       reply: tuple[int, dict[str, str], bytes] | None, started: float, duration_ms: float,
                       outcome: str, error_text: str | None, context: CallContext | None) -> Exchange:
        """The exchange as the journal keeps it (on the journal's thread)."""
        shown = self.backend.dry_run_view(request)
        clean = self.scrubber
        return Exchange(
            id=f"exc_{uuid.uuid4().hex}", at=started,
            request_id=context.request_id if context else "", caller=context.caller if context else "",
            connection=self.name, backend=self.kind, operation=operation, order_ids=order_ids,
            request=clean.scrub_document({"method": shown.method, "url": shown.url, "headers": dict(shown.headers),
                                          "body": self.recorder.body_text(shown.body)}),
            reply=None if reply is None else clean.scrub_document({
                "status": reply[0], "headers": reply[1], "body": self.recorder.body_text(reply[2])}),
            duration_ms=duration_ms, outcome=outcome, error=clean.scrub(error_text) if error_text else None,
        )

    def close(self) -> None:
        """Release the connection's pooled HTTP connections."""
        self.transport.close()


def _journal_outcome(error: BackendError) -> str:
    """How the journal names a call that ended in `error`."""
    if isinstance(error, BackendTimeout):
        return "timeout"
    if isinstance(error, BackendUnavailable) and error.never_sent:
        return "unreachable"
    if isinstance(error, BackendFailure | BackendUnavailable):
        return "failed"
    return "refused"


class Connections:
    """The running gateway's connections by name, and the default one."""

    def __init__(self, settings: GatewaySettings, backends: Mapping[str, type[Backend]],
                 transports: Mapping[str, Transport] | None = None, recorder: JournalRecorder | None = None,
                 scrubber: Scrubber | None = None) -> None:
        transports = transports or {}
        self.default = settings.default_connection
        self.coordination = Coordination(settings)
        self.recorder = recorder
        self.by_name: dict[str, Connection] = {
            name: Connection(connection, backends[connection.backend], transports.get(name), self.coordination,
                             recorder, scrubber)
            for name, connection in settings.connections.items()
        }
        if self.default is None and len(self.by_name) == 1:
            self.default = next(iter(self.by_name))

    def resolve(self, name: str | None) -> Connection:
        """The connection called `name`, or the default connection when name is None."""
        if name is None:
            if self.default is None:
                raise ValidationFailed({"connection": [
                    f"Required: no default connection is configured; one of: {', '.join(self.by_name)}."
                ]})
            name = self.default
        connection = self.by_name.get(name)
        if connection is None:
            raise ValidationFailed({"connection": [
                f"Unknown connection {name!r}; one of: {', '.join(self.by_name)}."
            ]})
        return connection

    def close(self) -> None:
        """Close every connection's HTTP pool and the shared coordination state."""
        for connection in self.by_name.values():
            connection.close()
        self.coordination.close()
        if self.recorder is not None:
            self.recorder.close()
