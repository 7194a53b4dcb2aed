"""The configured connections of a running gateway: each a backend kind with its own settings, credentials,
transport, bulkhead, call lock and circuit breaker, and the one update flow every backend plugs into.

    Connection.check(update)           -> PlannedUpdate     fields, ids and rules checked; operation chosen
    Connection.dry_run(planned)        -> [OutboundRequest] the calls that would go out, credentials masked
    Connection.send(planned, budget)   -> [UpdateOutcome | GatewayError], one per update, in order

Updates travel in calls: consecutive updates planned onto the same operation share a call, up to the
operation's `call_size`; a failed call fails exactly its own updates. Each call, in this order:

    budget spent?        the request's time budget ran out: the call's updates are 504 "not sent"
    guards, in order     each may wait (within its own setting and the request's budget) and may refuse the call,
                         nothing sent:
      breaker            open: 503 with Retry-After (the breaker's state is in the problem's backend.code)
      bulkhead           at most max_concurrent_calls in flight per process; waiting beyond queue_timeout is 503
      call lock          the backend's (Ongoing: one goods owner's calls one after another, across processes and
                         machines); waiting beyond lock_timeout is 503; its store unusable is 503 store-unavailable
    attempts             within min(call_timeout, the budget), the call's deadline counted from when the guards let
                         it through (their waits, on stores too, are not the backend's time): retried with jittered
                         backoff only when the request provably never reached the backend, or the operation is
                         idempotent
    guards, in reverse   each learns the outcome (the lock is released, the breaker counts it, the bulkhead frees
                         its place); outcome first: what fails here is counted and logged (gateway/bookkeeping.py),
                         and the call's outcome stands

A guard is one CallGuard subclass and one entry in `Connection.guards`. Who asks for the calls comes with them, as
a CallContext passed to `send` (as the budget is): the caller and request id the journal records, and the listener
(the REST layer's Idempotency-Key record) told of each attempt before it goes out, with the id the journal records
its exchange under, which may stop it unsent by raising StoreUnavailable.

The REST layer never needs to know which backend it talks to.
"""

from __future__ import annotations

import abc
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

from opentelemetry.trace import SpanKind
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_random_exponential

from gateway import logs, metrics, tracing
from gateway.backends import Backend, Credentials, Operation
from gateway.bookkeeping import note_failure
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.config import ConnectionSettings, GatewaySettings
from gateway.coordination import ConcurrentCircuitBreaker, Coordination, LockTimeout
from gateway.coordination.breakers import BreakerOpen
from gateway.coordination.locks import LockUnavailable
from gateway.deadlines import Deadline
from gateway.errors import (
    BackendError,
    BackendFailure,
    BackendTimeout,
    BackendUnavailable,
    ConnectionBusy,
    GatewayError,
    StoreUnavailable,
    ValidationFailed,
)
from gateway.journal import Exchange
from gateway.journal.recorder import JournalRecorder
from gateway.replies import read_reply, valid_retry_after
from gateway.scrubbing import Scrubber
from gateway.transport import BackendReply, HttpTransport, OutboundRequest, Transport

log = logging.getLogger("gateway.backends")

#: the failures that say a backend is unwell and count towards opening its breaker (refusals do not)
UNWELL = (BackendFailure, BackendUnavailable, BackendTimeout)
#: what a call's failure of its own may be besides a BackendError: a store it needed before it was sent
CALL_FAILURES = (BackendError, StoreUnavailable)


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A checked canonical update and the operation that will carry it."""

    update: OrderUpdate
    operation: Operation


@dataclass(frozen=True, slots=True)
class CallAttempt:
    """An attempt about to be sent: the id its journal exchange will have, where it goes, for which orders, whether
    the operation may be sent twice, and whether it repeats an attempt of the same call (a retry)."""

    exchange_id: str
    connection: str
    operation: str
    order_ids: tuple[str, ...]
    idempotent: bool
    retry: bool


class AttemptListener(Protocol):
    """Told of every attempt before it is sent (the REST layer's Idempotency-Key record)."""

    def attempting(self, attempt: CallAttempt) -> None:
        """Note the attempt; raising StoreUnavailable stops it unsent."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who asks for the calls `Connection.send` makes: the request id and caller the journal records with each
    exchange, and the listener told of every attempt before it goes out (whoever passes one learns whether anything
    may have reached a backend, and may note it where a crash cannot lose it: the REST layer's Idempotency-Key
    record notes the call on the key first)."""

    request_id: str = ""
    caller: str = ""
    listener: AttemptListener | None = None


#: the context of calls nobody in particular asked for
NO_CONTEXT = CallContext()


@dataclass(eq=False, slots=True)
class GuardedCall:
    """One call on its way through a connection's guards: what it carries, the request's budget, how many attempts
    went out, and the error it ended in (None: its outcomes)."""

    operation: Operation
    updates: list[OrderUpdate]
    budget: Deadline | None
    idempotent: bool
    context: CallContext = NO_CONTEXT
    attempts: int = 0
    error: BaseException | None = None

    @property
    def sent(self) -> bool:
        """Whether any attempt went out (so the backend may have acted)."""
        return self.attempts > 0

    def wait_allowed(self, seconds: float) -> float:
        """How long a guard may wait: its own setting, within what is left of the request's budget."""
        return seconds if self.budget is None else min(seconds, self.budget.remaining())


class CallGuard(abc.ABC):
    """One policy around a connection's calls (breaker, bulkhead, call lock, ...), with its own settings and errors.

    admit() runs before the call, in the guards' order: it waits if it must, refuses the call by raising a
    GatewayError (nothing is sent), or lets it through; what it returns comes back to release(), which runs after
    the call — sent or not, whatever its outcome — in reverse order. release() is bookkeeping: the connection counts
    and logs what it raises, and the call's outcome stands.
    """

    #: the guard's name in the count and the log line of a release that failed
    name: ClassVar[str]

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @abc.abstractmethod
    def admit(self, call: GuardedCall) -> Any:
        """Let the call through (returning what release() needs) or refuse it."""

    @abc.abstractmethod
    def release(self, call: GuardedCall, admission: Any) -> None:
        """Learn the outcome of an admitted call (`call.sent`, `call.error`) and free what admit() took."""


class BreakerGuard(CallGuard):
    """The circuit breaker: an open breaker refuses at once; the outcome of a call that went out is counted (UNWELL
    errors as failures), one that never went out is not."""

    name = "breaker"

    def admit(self, call: GuardedCall) -> bool:
        """Whether the call is the probe of a half-open breaker; an open one (or a probe in flight) refuses."""
        try:
            return self.connection.breaker.admit()
        except BreakerOpen as refusal:
            raise self.connection.breaker_open(refusal.retry_after) from None

    def release(self, call: GuardedCall, admission: bool) -> None:
        """Count the outcome."""
        breaker = self.connection.breaker
        if not call.sent:
            breaker.withdraw(admission)
        elif isinstance(call.error, UNWELL):
            breaker.record_failure(admission)
        else:
            breaker.record_success(admission)


class BulkheadGuard(CallGuard):
    """At most max_concurrent_calls in flight per process; a call waits at most queue_timeout for a place."""

    name = "bulkhead"

    def admit(self, call: GuardedCall) -> None:
        """Take a place, or refuse with 503 bulkhead-full."""
        settings = self.connection.settings
        if not self.connection.bulkhead.acquire(timeout=call.wait_allowed(settings.queue_timeout)):
            raise ConnectionBusy(
                f"Connection {self.connection.name!r} has {settings.max_concurrent_calls} calls in flight "
                f"(max_concurrent_calls) and none ended within queue_timeout ({settings.queue_timeout:g} s); "
                "nothing was sent.", connection=self.connection.name, code="bulkhead-full")

    def release(self, call: GuardedCall, admission: None) -> None:
        """Free the place."""
        self.connection.bulkhead.release()


class CallLockGuard(CallGuard):
    """The backend's call lock (Ongoing: one goods owner's calls one after another, in every process and machine);
    a call waits at most lock_timeout for it. A lock store that cannot be used refuses the call (503
    store-unavailable); one that cannot release the lock afterwards is the lock's own bookkeeping."""

    name = "call_lock"

    def admit(self, call: GuardedCall) -> AbstractContextManager[None] | None:
        """Hold the lock (the held lock is the admission), or refuse."""
        connection = self.connection
        if connection.locks is None or connection.lock_name is None:
            return None
        holding = connection.locks.hold(connection.lock_name, call.wait_allowed(connection.settings.lock_timeout))
        try:
            holding.__enter__()
        except LockTimeout:
            raise ConnectionBusy(
                f"Another call of connection {connection.name!r} held {connection.backend.display_name}'s call lock "
                f"({connection.backend.call_lock_reason}) for lock_timeout ({connection.settings.lock_timeout:g} s); "
                "nothing was sent.", connection=connection.name, code="lock-timeout") from None
        except LockUnavailable as error:
            raise StoreUnavailable(
                f"The call locks ({error.store}) could not be used to take {connection.backend.display_name}'s call "
                f"lock for connection {connection.name!r}; nothing was sent. Try again in a moment.",
                store="call locks") from None
        return holding

    def release(self, call: GuardedCall, admission: AbstractContextManager[None] | None) -> None:
        """Release the lock."""
        if admission is not None:
            admission.__exit__(None, None, None)


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
            egress=settings,
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
        #: the policies around every call, in the order they admit it (and the reverse order they learn its outcome)
        self.guards: list[CallGuard] = [BreakerGuard(self), BulkheadGuard(self), CallLockGuard(self)]

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
            try:
                if budget is not None and budget.expired():
                    raise self._not_sent(budget)
                outcomes = self._guarded_call(operation, updates, budget, context)
            except CALL_FAILURES as error:
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

    def _guarded_call(self, operation: Operation, updates: list[OrderUpdate], budget: Deadline | None,
                      context: CallContext) -> list[UpdateOutcome | BackendError]:
        """The call through the guards: admitted by each in turn, attempted, then its outcome handed back to each."""
        call = GuardedCall(operation, updates, budget, operation.is_idempotent(updates), context)
        admitted: list[tuple[CallGuard, Any]] = []
        try:
            for guard in self.guards:
                admitted.append((guard, guard.admit(call)))
            if budget is not None and budget.expired():
                raise self._not_sent(budget)
            # The call's own deadline starts now: what the guards waited for (a queue, a lock, a store) is not the
            # backend's time.
            deadline = Deadline.after(self.settings.call_timeout, f"call_timeout {self.settings.call_timeout:g} s")
            return self._attempts(call, deadline.earliest(budget))
        except BaseException as error:
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

    def breaker_open(self, wait: float | None) -> BackendUnavailable:
        """The 503 of an open breaker, `wait` seconds before its probe (None: a probe is deciding now)."""
        wait = self.settings.breaker_reset_seconds if wait is None else wait
        error = BackendUnavailable(
            f"The circuit breaker of connection {self.name!r} is open after "
            f"{self.settings.breaker_failures} consecutive failures; nothing was sent. One probe call goes "
            f"through in {math.ceil(wait)} s.", connection=self.name, code="breaker-open")
        error.retry_after = str(max(math.ceil(wait), 1))
        return error

    def _attempts(self, call: GuardedCall, deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        def retryable(error: BaseException) -> bool:
            return (isinstance(error, BackendError) and error.from_transport and not deadline.expired()
                    and (error.never_sent or call.idempotent))

        backoff = wait_random_exponential(multiplier=0.05, max=1.0)
        for attempt in Retrying(
            stop=stop_any(stop_after_attempt(self.settings.retry_attempts),
                          lambda state: deadline.remaining() < 0.01),
            wait=lambda state: min(backoff(state), deadline.remaining()),
            retry=retry_if_exception(retryable),
            reraise=True,
        ):
            with attempt:
                return self._call(call, deadline)
        raise AssertionError("unreachable: Retrying either returns or reraises")  # pragma: no cover

    def _call(self, call: GuardedCall, deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        operation = call.operation
        with tracing.span(f"{self.kind} {operation.name}", kind=SpanKind.CLIENT, attributes={
                "gateway.connection": self.name, "gateway.backend": self.kind, "gateway.operation": operation.name,
                "gateway.order_count": len(call.updates)}):
            return self._traced_call(call, deadline)

    def _traced_call(self, call: GuardedCall, deadline: Deadline) -> list[UpdateOutcome | BackendError]:
        operation, updates = call.operation, call.updates
        rendered = operation.render(updates, self.credentials)
        # the trace goes on to the backend: its span is this call's
        request = replace(rendered, headers={**rendered.headers, **tracing.outbound_headers()})
        exchange_id = f"exc_{uuid.uuid4().hex}"
        listener = call.context.listener
        if listener is not None:
            listener.attempting(CallAttempt(exchange_id, self.name, operation.name,
                                            tuple(update.order_id for update in updates), call.idempotent,
                                            retry=call.sent))
        call.attempts += 1
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
            try:
                took = time.time() - started
                metrics.backend_calls.labels(self.name, self.kind, operation.name, outcome).inc()
                metrics.backend_call_duration.labels(self.name, self.kind, operation.name).observe(took)
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
        """Close every connection's HTTP pool and the shared coordination state."""
        for connection in self.by_name.values():
            connection.close()
        self.coordination.close()
        if self.recorder is not None:
            self.recorder.close()
