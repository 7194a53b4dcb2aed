"""Sending update jobs: the event worker works through one lane (a connection's jobs, in the order accepted) at a
time, through the same Connection.send as a synchronous update — the same guards (call lock, bulkhead, breaker,
rate limit), deadlines and exchange journal.

`drain_lane` sends the lane's head when it is due and moves on only once the head is final, so a later update of an
order never overtakes an earlier one. What a send ends in decides the job's next state:

    applied (every item)                          done, its result the reply the synchronous update would give
    nothing sent: a guard refused (breaker open,  queued again after a backoff (full jitter, doubling from
    bulkhead or lock busy, rate-limited), the     `[jobs] backoff_base_seconds` up to `backoff_max_seconds`), or
    backend unreachable or not accepting the      later when the backend's Retry-After says so; once the job is
    connection in time, a store unusable; or the  older than `[jobs] max_age_seconds`, dead
    backend said 429/503
    the call may have reached the backend and no  idempotent operation: queued again as above;
    answer came (read timeout, reset, broken)     otherwise failed, "outcome-unknown", naming the exchange
    refused by the backend (404, 409, 422, a      failed, its result the problem document; the lane goes on
    fault), or no longer valid for the connection with the next job (a refusal is the backend's answer:
                                                  later updates of the order are sent all the same)

Before each call goes out, its journal exchange id is noted on the job (JobStore.note_exchange, synced to disk); a
job that cannot be noted is not sent. A worker killed mid-send leaves the job `sending` until its claim's lease
(`[jobs] send_timeout` plus `lease_margin_seconds`) runs out; the next claim sees whether an exchange was noted: if
not, nothing went out and the job is sent; if so, the call may have been applied, and the job is sent again only
when its operation is idempotent, else it fails with "outcome-unknown".

A job that becomes final is announced: an `order.update_succeeded` or `order.update_failed` event, stored once per
finish (deduplicated by the job's id and finish number) and delivered, signed, to the subscribers that want it.
An announcement that fails is made later by `announce_pending`, which the worker runs every resume interval.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from marshmallow import ValidationError
from opentelemetry.trace import SpanKind
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from gateway import logs, metrics, tracing
from gateway.calls import CallAttempt, CallContext
from gateway.canonical import flatten_errors, load_order_update
from gateway.canonical.events import ORDER_UPDATE_FAILED, ORDER_UPDATE_SUCCEEDED, new_event_id
from gateway.config import JobSettings
from gateway.connections import Connection, Connections, PlannedUpdate
from gateway.deadlines import Deadline
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    StoreUnavailable,
    ValidationFailed,
)
from gateway.jobs.base import DEAD, DONE, FAILED, QUEUED, SENDING, JobStore, JobStoreError
from gateway.scrubbing import Scrubber

log = logging.getLogger("gateway.jobs")

#: how soon a lane whose head another worker holds is looked at again
HELD_RETRY_SECONDS = 1.0
#: how long after a job became final its announcement counts as missed (announce_pending makes it)
ANNOUNCE_GRACE_SECONDS = 5.0
#: the most of an error's text an attempt keeps
MAX_ERROR_CHARS = 1000
#: the three ways a failed send is handled
RETRY, UNKNOWN, REFUSED = "retry", "unknown", "refused"


class JobReplies(Protocol):
    """Renders what a job ended in as the API shows it (the REST layer's shapes): `{"status": int, "body": ...}`."""

    def applied(self, job: dict, connection: Connection, planned: list[PlannedUpdate],
                outcomes: list[Any]) -> dict:
        """The reply the synchronous update would have given for these outcomes (one per planned update)."""

    def problem(self, job: dict, error: GatewayError, *, exchange_id: str | None = None,
                outcome_unknown: bool = False) -> dict:
        """The problem document of an error that ended the job (`outcome_unknown`: the call may have been applied
        and is not sent again; `exchange_id` names it)."""


def classify(error: GatewayError) -> str:
    """How a job handles the error a send ended in: RETRY (nothing was applied), UNKNOWN (the call may have
    reached the backend, no answer came), REFUSED (the backend's answer, or a gateway refusal)."""
    if isinstance(error, StoreUnavailable):
        return RETRY  # a store needed before the call (a guard's, the job's note): nothing was sent
    if not isinstance(error, BackendError):
        return REFUSED
    if error.never_sent:
        return RETRY
    if error.from_transport:
        return UNKNOWN
    if isinstance(error, BackendUnavailable):
        return RETRY  # a guard's refusal (breaker, bulkhead, lock, rate limit) or the backend's 429/503
    if isinstance(error, BackendTimeout):
        # the budget ran out before the call went out; any other deadline cut a call that may have gone out
        return RETRY if error.code == "budget-exhausted" else UNKNOWN
    return REFUSED


def retry_after_seconds(value: str | None, now: float) -> float:
    """A Retry-After (delta-seconds or an HTTP-date) as seconds from now; 0 when absent or unreadable."""
    if not value:
        return 0.0
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, IndexError):
        return 0.0


class _NoteExchange:
    """The AttemptListener of a job's send: notes each attempt's exchange id on the job before it goes out, and
    stops it unsent (StoreUnavailable) when the note cannot be made."""

    def __init__(self, store: JobStore, job_id: str, owner: str) -> None:
        self.store, self.job_id, self.owner = store, job_id, owner
        self.noted: list[str] = []

    def attempting(self, attempt: CallAttempt) -> None:
        try:
            noted = self.store.note_exchange(self.job_id, self.owner, attempt.exchange_id)
        except Exception as error:
            raise StoreUnavailable(f"The update job store could not note the call before it went out "
                                   f"({type(error).__name__}); it was not sent.", store="update job store") from None
        if not noted:
            raise StoreUnavailable("The update job is no longer this worker's to send (its claim ran out); the call "
                                   "was not sent.", store="update job store")
        self.noted.append(attempt.exchange_id)


class JobSender:
    """Sends the jobs of a lane in order, records each attempt, and announces jobs that became final."""

    def __init__(self, store: JobStore, connections: Connections, settings: JobSettings, replies: JobReplies,
                 announce: Callable[[dict, str], None], *, scrubber: Scrubber | None = None,
                 clock: Callable[[], float] = time.time, jitter: Callable[[float], float] | None = None) -> None:
        self.store = store
        #: masks every credential in the errors an attempt keeps (a backend may echo one)
        self.scrubber = scrubber or Scrubber()
        self.connections = connections
        self.settings = settings
        self.replies = replies
        #: stores the completion event (the job, its event type); raises when it could not
        self._announce = announce
        self.clock = clock
        self.jitter = jitter or (lambda bound: random.uniform(bound / 2, bound))  # noqa: S311 - not for secrets
        self.lease_seconds = settings.send_timeout + settings.lease_margin_seconds

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the given number of attempts the backend could not take."""
        bound = min(self.settings.backoff_max_seconds,
                    self.settings.backoff_base_seconds * 2 ** max(attempts - 1, 0))
        return self.jitter(bound)

    def drain_lane(self, lane: str, still_mine: Callable[[], bool] = lambda: True) -> float | None:
        """Send what is due in the lane, in order; the seconds until it needs attention again (None: empty)."""
        while True:
            if not still_mine():
                return None
            head = self.store.lane_head(lane)
            if head is None:
                return None
            now = self.clock()
            if head["state"] == QUEUED and head["next_attempt_at"] is not None and head["next_attempt_at"] > now:
                return head["next_attempt_at"] - now
            if head["state"] == SENDING and (head["lease_until"] or 0) > now:
                return min(head["lease_until"] - now, HELD_RETRY_SECONDS)  # another worker's send under way
            owner = uuid.uuid4().hex
            prior = self.store.claim(head["id"], owner, lease_seconds=self.lease_seconds, now=now)
            if prior is None:
                return HELD_RETRY_SECONDS
            # the send continues the trace of the request that queued the job
            with logs.bound(job_id=prior["id"], connection=prior["connection"], order_ids=prior["order_ids"][:10]), \
                    tracing.span(f"send update job {prior['operation']}", kind=SpanKind.CONSUMER,
                                 parent=tracing.incoming_context(prior["trace_context"] or {}),
                                 attributes={"gateway.job_id": prior["id"], "gateway.connection": prior["connection"]}):
                self._send(prior, owner)

    # --- one job -------------------------------------------------------------------------------------

    def _send(self, job: dict, owner: str) -> None:
        """Send a claimed job once and record what it ended in."""
        now = self.clock()
        if job["state"] == SENDING and job["exchange_id"]:
            # A worker stopped while this call may have been out.
            interrupted = {"at": now, "outcome": "interrupted", "exchange_id": job["exchange_id"],
                           "error": "the worker stopped while the call may have been out"}
            if not job["idempotent"]:
                error = BackendTimeout(
                    f"The {job['operation']} call of this job (exchange {job['exchange_id']}) may have reached the "
                    "backend, but the worker sending it stopped before its reply was recorded (the journal has the "
                    "exchange only if the worker wrote it before it stopped); it is not sent again as sending it "
                    "twice is not harmless. Check the order.",
                    connection=job["connection"], code="outcome-unknown")
                self._finish(job, owner, FAILED, interrupted, lambda: self.replies.problem(
                    job, error, exchange_id=job["exchange_id"], outcome_unknown=True))
                return
            self.store.release(job["id"], owner, state=QUEUED, attempt=interrupted, now=now)
            if not self.store.claim(job["id"], owner, lease_seconds=self.lease_seconds):
                return
        if now - job["accepted_at"] > self.settings.max_age_seconds:
            self._expire(job, owner, now, None)
            return
        try:
            connection = self.connections.resolve(job["connection"])
            planned = [connection.check(load_order_update(item["order_id"], item["document"]))
                       for item in job["items"]]
        except ValidationError as invalid:
            self._refuse(job, owner, ValidationFailed(flatten_errors(invalid.messages)))
            return
        except GatewayError as error:  # the connection is gone, or no longer takes the update
            self._refuse(job, owner, error)
            return
        listener = _NoteExchange(self.store, job["id"], owner)
        budget = Deadline.after(self.settings.send_timeout, f"[jobs] send_timeout {self.settings.send_timeout:g} s")
        outcomes = connection.send(planned, budget, CallContext(request_id=job["request_id"], caller=job["caller"],
                                                                listener=listener))
        exchange_id = listener.noted[-1] if listener.noted else None
        errors = [outcome for outcome in outcomes if isinstance(outcome, GatewayError)]
        if not errors:
            self._finish(job, owner, DONE, {"at": self.clock(), "outcome": "done", "exchange_id": exchange_id},
                         lambda: self.replies.applied(job, connection, planned, outcomes))
            return
        call_error = errors[0] if len(errors) == len(outcomes) and all(e is errors[0] for e in errors) else None
        if call_error is None:  # the backend answered item by item, refusing some
            self._finish(job, owner, FAILED, self._attempt("refused", errors[0], exchange_id),
                         lambda: self.replies.applied(job, connection, planned, outcomes))
            return
        kind = classify(call_error)
        if kind == RETRY or (kind == UNKNOWN and job["idempotent"]):
            self._wait(job, owner, call_error, exchange_id, "unavailable" if kind == RETRY else "outcome-unknown")
        elif kind == UNKNOWN:
            self._finish(job, owner, FAILED, self._attempt("outcome-unknown", call_error, exchange_id),
                         lambda: self.replies.problem(job, call_error, exchange_id=exchange_id, outcome_unknown=True))
        else:
            self._refuse(job, owner, call_error, exchange_id)

    def _record(self, job_id: str, owner: str, **outcome: Any) -> bool:
        """JobStore.release, tried again while the store fails, for at most half the claim's margin: what a call
        that went out ended in is recorded rather than lost (a job left `sending` would count as outcome unknown)."""
        for attempt in Retrying(stop=stop_after_delay(self.settings.lease_margin_seconds / 2),
                                wait=wait_exponential(multiplier=0.05, max=2.0),
                                retry=retry_if_exception(lambda error: not isinstance(error, JobStoreError)),
                                before_sleep=lambda state: log.warning(
                                    "update job %s: its outcome could not be recorded (%s); trying again", job_id,
                                    type(state.outcome.exception()).__name__),
                                reraise=True):
            with attempt:
                return self.store.release(job_id, owner, **outcome)
        return False  # pragma: no cover - Retrying either returns or raises

    def _attempt(self, outcome: str, error: GatewayError, exchange_id: str | None) -> dict:
        attempt: dict[str, Any] = {"at": self.clock(), "outcome": outcome, "status": error.status,
                                   "error": self.scrubber.scrub(error.detail)[:MAX_ERROR_CHARS],
                                   "exchange_id": exchange_id}
        code = getattr(error, "code", None)
        if code:  # the backend's own code, or a guard's (breaker-open, bulkhead-full, lock-timeout, rate-limited)
            attempt["code"] = code
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            attempt["retry_after"] = retry_after
        return attempt

    def _wait(self, job: dict, owner: str, error: GatewayError, exchange_id: str | None, outcome: str) -> None:
        """Queue the job again after a backoff (at least the Retry-After the backend or a guard gave), or make it
        dead once it would be older than max_age."""
        now = self.clock()
        delay = max(self.backoff(job["attempt_count"] + 1),
                    retry_after_seconds(getattr(error, "retry_after", None), now))
        attempt = self._attempt(outcome, error, exchange_id)
        if now + delay - job["accepted_at"] > self.settings.max_age_seconds:
            self._expire(job, owner, now, error, attempt)
            return
        log.info("update job %s waits %.1f s: %s", job["id"], delay, error.detail)
        self._record(job["id"], owner, state=QUEUED, attempt=attempt, next_attempt_at=now + delay, now=now)
        metrics.job_attempts.labels(job["connection"], outcome).inc()

    def _expire(self, job: dict, owner: str, now: float, error: GatewayError | None,
                attempt: dict | None = None) -> None:
        """The job is too old to be tried again: dead, its result the last error (or one saying so)."""
        age = f"{self.settings.max_age_seconds:g} s ([jobs] max_age_seconds)"
        error = error or BackendUnavailable(f"The backend could not take the update within {age}.",
                                            connection=job["connection"], code="expired")
        log.warning("update job %s is dead: the backend could not take it within %s", job["id"], age)
        expired = {**(attempt or {"at": now, "status": error.status, "error": error.detail}), "outcome": "expired"}
        expired["error"] = f"{expired.get('error')}; the job is older than {age}"
        self._finish(job, owner, DEAD, expired, lambda: self.replies.problem(job, error))

    def _refuse(self, job: dict, owner: str, error: GatewayError, exchange_id: str | None = None) -> None:
        self._finish(job, owner, FAILED, self._attempt("refused", error, exchange_id),
                     lambda: self.replies.problem(job, error))

    def _finish(self, job: dict, owner: str, state: str, attempt: dict, render: Callable[[], dict]) -> None:
        """Make the job final, with its result as `render` shows it, and announce it. A result that cannot be
        rendered (a gateway bug) does not change what the job ended in: it is recorded without its body."""
        try:
            result = render()
        except Exception:
            log.exception("update job %s: its result could not be rendered; it is recorded %s without it", job["id"],
                          state)
            result = {"status": 200 if state == DONE else attempt.get("status", 500), "body": {}}
        if not self._record(job["id"], owner, state=state, attempt=attempt, result=result):
            log.warning("update job %s was no longer this worker's to finish as %s", job["id"], state)
            return
        metrics.job_attempts.labels(job["connection"], attempt["outcome"]).inc()
        metrics.job_outcomes.labels(job["connection"], state).inc()
        metrics.job_delivery_lag.labels(job["connection"], state).observe(max(self.clock() - job["accepted_at"], 0.0))
        log.log(logging.INFO if state == DONE else logging.WARNING, "update job %s %s", job["id"], state,
                extra={"outcome": state})
        finished = self.store.get_job(job["id"])
        if finished is not None:
            self.announce(finished)

    # --- completion events ----------------------------------------------------------------------------

    def announce(self, job: dict) -> bool:
        """Store the completion event of the job's latest finish and mark it announced; False (logged) when that
        failed: announce_pending makes it later."""
        event_type = ORDER_UPDATE_SUCCEEDED if job["state"] == DONE else ORDER_UPDATE_FAILED
        try:
            self._announce(job, event_type)
            self.store.mark_announced(job["id"], job["finishes"])
        except Exception as error:
            log.warning("the completion event of update job %s was not stored (%s: %s); it is made later", job["id"],
                        type(error).__name__, error)
            return False
        return True

    def announce_pending(self, limit: int = 100) -> int:
        """Announce the final jobs whose announcement was missed (a crash, a store failure); how many were."""
        missed = self.store.unannounced(finished_by=self.clock() - ANNOUNCE_GRACE_SECONDS, limit=limit)
        return sum(self.announce(job) for job in missed)


def completion_event(job: dict, event_type: str) -> dict:
    """The canonical event announcing how a job ended: its id, state, the orders, the operation and the result."""
    order_id = job["order_ids"][0]
    id_type = (job["items"][0]["document"] if job["items"] else {}).get("id_type")
    return {
        "id": new_event_id(),
        "type": event_type,
        "occurred_at": datetime.fromtimestamp(job["finished_at"] or time.time(), UTC).isoformat(),
        "source": {"backend": job["backend"], "connection": job["connection"]},
        "order": {"order_id": order_id, "id_type": id_type,
                  "order_number": order_id if id_type in (None, "order_number") else None,
                  "backend_order_id": _backend_order_id(job)},
        "update": {"job_id": job["id"], "state": job["state"], "operation": job["operation"],
                   "order_ids": list(job["order_ids"]), "request_id": job["request_id"], "caller": job["caller"],
                   "attempt_count": job["attempt_count"], "result": job["result"]},
    }


def _backend_order_id(job: dict) -> str | None:
    body = (job["result"] or {}).get("body")
    value = body.get("backend_order_id") if isinstance(body, Mapping) else None
    return value if isinstance(value, str) else None
