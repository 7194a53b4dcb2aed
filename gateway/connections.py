"""The configured connections of a running gateway: each a backend kind with its own settings, credentials,
transport and guards, and the one update flow every backend plugs into.

    Connection.check(update)           -> PlannedUpdate     fields, ids and rules checked; operation chosen
    Connection.dry_run(planned)        -> [OutboundRequest] the calls that would go out, credentials masked
    Connection.send(planned, budget)   -> [UpdateOutcome | GatewayError], one per update, in order

Updates travel in calls: consecutive updates planned onto the same operation share a call, up to the
operation's `call_size`; a failed call fails exactly its own updates. Each call, in this order:

    budget spent?        the request's time budget ran out: the call's updates are 504 "not sent"
    guards, in order     Connection.guards, built from gateway/guards (GUARDS); each may wait (within its own
                         setting and the request's budget) and may refuse the call, nothing sent; a refusal is
                         counted by guard name (order_gateway_guard_refusals_total) and is the call's outcome:
      breaker            open: 503 breaker-open with Retry-After
      bulkhead           at most max_concurrent_calls in flight per process; waiting beyond queue_timeout is 503
      call lock          the backend's (Ongoing: one goods owner's calls one after another, across processes and
                         machines); waiting beyond lock_timeout is 503; its store unusable is 503 store-unavailable
      rate limit         at most max_calls_per_second to the backend, across the processes sharing the stores; a
                         token the call cannot wait for is 503 rate-limited with Retry-After; its store unusable is
                         503 store-unavailable
    attempts             within min(call_timeout, the budget), the call's deadline counted from when the guards let
                         it through (their waits, on stores too, are not the backend's time): retried with jittered
                         backoff only when the request provably never reached the backend, or the operation is
                         idempotent
    guards, in reverse   each learns the outcome (the lock is released, the breaker counts it, the bulkhead frees
                         its place); outcome first: what fails here is counted and logged (gateway/bookkeeping.py),
                         and the call's outcome stands

An attempt's failure is a value from where it is raised (the transport, the reply's reading, the operation's
parse) to the call's outcome: a BackendError or StoreUnavailable is caught once, where the attempt or a guard
raises it, and handed on as the result of its updates; only errors nothing expects (a gateway bug) propagate.
Every attempt that went out is counted, logged and journaled, whatever it ended in.

A guard is one CallGuard subclass and one entry in gateway/guards' GUARDS. Who asks for the calls comes with them,
as a CallContext passed to `send` (as the budget is): the caller and request id the journal records, and the
listener (the REST layer's Idempotency-Key record) told of each attempt before it goes out, with the id the journal
records its exchange under, which may stop it unsent by raising StoreUnavailable.

The REST layer never needs to know which backend it talks to.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.trace import SpanKind
from tenacity import Retrying, retry_if_result, stop_after_attempt, stop_any, wait_random_exponential

from gateway import logs, metrics, tracing
from gateway.backends import Backend, Credentials, Operation
from gateway.bookkeeping import note_failure
from gateway.calls import NO_CONTEXT, CallAttempt, CallContext
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.config import ConnectionSettings, GatewaySettings
from gateway.coordination import Coordination
from gateway.deadlines import Deadline
from gateway.errors import (
    BackendError,
    BackendFailure,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    StoreUnavailable,
    ValidationFailed,
)
from gateway.guards import (
    BreakerGuard,
    BulkheadGuard,
    CallGuard,
    GuardedCall,
    build_guards,
)
from gateway.journal import Exchange
from gateway.journal.recorder import JournalRecorder
from gateway.replies import read_reply, valid_retry_after
from gateway.scrubbing import Scrubber
from gateway.transport import BackendReply, HttpTransport, OutboundRequest, Transport

log = logging.getLogger("gateway.backends")

#: what a call's failure of its own may be besides a BackendError: a store it needed before it was sent
CALL_FAILURES = (BackendError, StoreUnavailable)


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A checked canonical update and the operation that will carry it."""

    update: OrderUpdate
    operation: Operation


class Connection:
    """One configured connection: settings, credentials, transport and guards; it renders nothing.

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
            egress=settings,
            auth=self.auth,
        )
        self.recorder = recorder
        self.scrubber = scrubber or Scrubber()
        self.coordination = coordination
        self.locks = coordination.locks if coordination is not None else None
        self.lock_name = self.backend.call_lock_name()
        #: the policies around every call, in the order they admit it (and the reverse order they learn its outcome)
        self.guards: list[CallGuard] = build_guards(self)
        #: the circuit breaker (health and metrics read its state) and the bulkhead's places, which every
        #: connection has
        self.breaker = next(guard for guard in self.guards if isinstance(guard, BreakerGuard)).breaker
        self.bulkhead = next(guard for guard in self.guards if isinstance(guard, BulkheadGuard)).places

    def check(self, update: OrderUpdate) -> PlannedUpdate:
        """Refuse (ValidationFailed, with field paths) what the backend cannot carry; plan the rest."""
        return PlannedUpdate(update, self.backend.check_update(update))

    def dry_run(self, planned: Sequence[PlannedUpdate]) -> list[OutboundRequest]:
        """The requests the planned updates would travel in, with every credential masked."""
        credentials = self.credentials.masked()
        return [self.backend.dry_run_view(operation.render(updates, credentials))
                for operation, updates in self.calls(planned)]

    def send(self, planned: Sequence[PlannedUpdate], budget: Deadline | None = None,
             context: CallContext = NO_CONTEXT) -> list[UpdateOutcome | GatewayError]:
        """Send planned updates call by call, in order, within `budget`, on behalf of `context`; a failed call fails
        exactly its updates (with a BackendError, or StoreUnavailable when a store it needed before it was sent could
        not be used)."""
        results: list[UpdateOutcome | GatewayError] = []
        for operation, updates in self.calls(planned):
            if budget is not None and budget.expired():
                outcome: list[UpdateOutcome | BackendError] | GatewayError = self._not_sent(budget)
            else:
                outcome = self._call(GuardedCall(operation, updates, budget, operation.is_idempotent(updates),
                                                 context))
            results.extend(outcome if isinstance(outcome, list) else [outcome] * len(updates))
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
        state, failures, wait = self.breaker.snapshot()
        return {"state": state, "failures": failures, "retry_after": None if wait is None else math.ceil(wait)}

    # --- one call --------------------------------------------------------------------------------------

    def _not_sent(self, budget: Deadline) -> BackendTimeout:
        return BackendTimeout(f"Not sent: the request's time budget ran out ({budget.reason}) before this "
                              "item's turn.", connection=self.name, code="budget-exhausted")

    def _call(self, call: GuardedCall) -> list[UpdateOutcome | BackendError] | GatewayError:
        """The call through the guards: admitted by each in turn, attempted (retried where provably safe), then its
        outcome handed back to each; its outcomes, or the error it ended in."""
        admitted: list[tuple[CallGuard, Any]] = []
        try:
            for guard in self.guards:
                try:
                    admitted.append((guard, guard.admit(call)))
                except CALL_FAILURES as refusal:
                    metrics.guard_refusals.labels(self.name, guard.name).inc()
                    call.error = refusal
                    return refusal
            if call.budget is not None and call.budget.expired():
                call.error = self._not_sent(call.budget)
                return call.error
            # The call's own deadline starts now: what the guards waited for (a queue, a lock, a store) is not the
            # backend's time.
            deadline = Deadline.after(self.settings.call_timeout,
                                      f"call_timeout {self.settings.call_timeout:g} s").earliest(call.budget)

            def retryable(result: object) -> bool:
                return (isinstance(result, BackendError) and result.from_transport and not deadline.expired()
                        and (result.never_sent or call.idempotent))

            backoff = wait_random_exponential(multiplier=0.05, max=1.0)
            result: list[UpdateOutcome | BackendError] | GatewayError = []
            for attempt in Retrying(
                stop=stop_any(stop_after_attempt(self.settings.retry_attempts),
                              lambda state: deadline.remaining() < 0.01),
                wait=lambda state: min(backoff(state), deadline.remaining()),
                retry=retry_if_result(retryable),
                retry_error_callback=lambda state: state.outcome.result(),
            ):
                with attempt:
                    result = self._attempt(call, deadline)
                if not attempt.retry_state.outcome.failed:  # (an error nothing expects is raised as it is)
                    attempt.retry_state.set_result(result)
            if not isinstance(result, list):
                call.error = result
            return result
        except BaseException as error:  # a gateway bug (or an interrupt): the guards still learn the call ended
            call.error = error
            raise
        finally:
            self._release(call, admitted)

    def _release(self, call: GuardedCall, admitted: list[tuple[CallGuard, Any]]) -> None:
        """Hand the call's outcome to the guards that admitted it, last first; what fails there is counted and
        logged, never raised, so the outcome stands."""
        for guard, admission in reversed(admitted):
            try:
                guard.release(call, admission)
            except Exception as error:
                note_failure(guard.name, error, f"the {guard.name.replace('_', ' ')} of connection {self.name!r} "
                             "did not learn how a call ended; the call's outcome stands")

    def _attempt(self, call: GuardedCall, deadline: Deadline) -> list[UpdateOutcome | BackendError] | GatewayError:
        """One attempt, in its own span: its outcomes, or the error it ended in (StoreUnavailable: the listener
        stopped it unsent); counted, logged and journaled once it went out, whatever it ended in."""
        operation, updates = call.operation, call.updates
        with tracing.span(f"{self.kind} {operation.name}", kind=SpanKind.CLIENT, attributes={
                "gateway.connection": self.name, "gateway.backend": self.kind, "gateway.operation": operation.name,
                "gateway.order_count": len(updates)}):
            rendered = operation.render(updates, self.credentials)
            # the trace goes on to the backend: its span is this call's
            request = replace(rendered, headers={**rendered.headers, **tracing.outbound_headers()})
            exchange_id = f"exc_{uuid.uuid4().hex}"
            listener = call.context.listener
            if listener is not None:
                try:
                    listener.attempting(CallAttempt(exchange_id, self.name, operation.name,
                                                    tuple(update.order_id for update in updates), call.idempotent,
                                                    retry=call.sent))
                except StoreUnavailable as error:
                    return error
            call.attempts += 1
            started, reply = time.time(), None
            result: list[UpdateOutcome | BackendError] | BackendError | None = None
            try:
                reply = self.transport.send(request, deadline)
                payload = read_reply(reply, operation.reply_format, self.name,
                                     max_depth=self.settings.max_reply_depth)
                result = operation.parse(payload, updates,
                                         retry_after=valid_retry_after(reply.headers.get("Retry-After")))
                if len(result) != len(updates):
                    result = BackendFailure(f"{operation.name} gave {len(result)} outcomes for {len(updates)} "
                                            "orders.", connection=self.name)
            except BackendError as error:
                result = error
            finally:
                self._account(call, exchange_id, request, reply, started, result)
            return result

    def _account(self, call: GuardedCall, exchange_id: str, request: OutboundRequest, reply: BackendReply | None,
                 started: float, result: list[UpdateOutcome | BackendError] | BackendError | None) -> None:
        """Count, log and journal an attempt that went out (`result` None: it ended in an error nothing expects);
        outcome first: what fails here is counted and logged, never raised."""
        operation, updates = call.operation, call.updates
        if isinstance(result, list):
            refusals = [item for item in result if isinstance(item, BackendError)]
            outcome, error_text = ("refused", refusals[0].detail) if refusals else ("ok", None)
        elif result is None:
            outcome, error_text = "failed", None
        else:
            outcome, error_text = _journal_outcome(result), result.detail
        try:
            took = time.time() - started
            metrics.child(metrics.backend_calls, self.name, self.kind, operation.name, outcome).inc()
            metrics.child(metrics.backend_call_duration, self.name, self.kind, operation.name).observe(took)
            self._log_call(operation, updates, reply, outcome, took)
            if self.recorder is not None:
                self._record(exchange_id, operation, updates, request, reply, started, outcome, error_text,
                             call.context)
        except Exception as error:  # outcome first: the figures, the log line and the journal are bookkeeping
            note_failure("call_record", error, f"{operation.name} on connection {self.name!r} was not fully "
                         "counted, logged or journaled; its outcome stands")

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

    def _record(self, exchange_id: str, operation: Operation, updates: list[OrderUpdate], request: OutboundRequest,
                reply: BackendReply | None, started: float, outcome: str, error_text: str | None,
                context: CallContext) -> None:
        """Hand the exchange to the journal, to be made (the request as a dry run shows it, everything scrubbed)
        and written on the journal's thread."""
        self.recorder.record(functools.partial(
            self._make_exchange, exchange_id, operation.name, tuple(update.order_id for update in updates), request,
            None if reply is None else (reply.status, dict(reply.headers), reply.body), started,
            round((time.time() - started) * 1000, 3), outcome, error_text, context))

    def _make_exchange(self, exchange_id: str, operation: str, order_ids: tuple[str, ...], request: OutboundRequest,
                       reply: tuple[int, dict[str, str], bytes] | None, started: float, duration_ms: float,
                       outcome: str, error_text: str | None, context: CallContext) -> Exchange:
        """The exchange as the journal keeps it (on the journal's thread), under the id the call was given before
        it went out (an Idempotency-Key whose outcome is unknown names it)."""
        shown = self.backend.dry_run_view(request)
        clean = self.scrubber
        return Exchange(
            id=exchange_id, at=started,
            request_id=context.request_id, caller=context.caller,
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
        """Close every connection's HTTP pool and the shared coordination state (the journal's recorder is the
        Gateway's to close: gateway/runtime.py)."""
        for connection in self.by_name.values():
            connection.close()
        self.coordination.close()
