"""The update job store's contract: what `SqliteJobStore` and `RedisJobStore` both do, proven by
tests/test_job_store.py.

A job is one vendor call an update accepted with `Prefer: respond-async` travels in: a single update is one job, a
bulk one job per call. It is stored whole before the 202 goes out, and sent later by the event worker
(gateway/jobs/sender.py).

Jobs wait in **lanes**, one per connection and goods owner (the connection's call-lock name): a lane's jobs go out
one at a time in the order the store accepted them (its own sequence, which no caller chooses), so a later update of
an order never overtakes an earlier one. The lane's **head** is its active job (queued or sending) with the lowest
sequence; nothing behind it is sent before it leaves the active states.

    queued    waiting for its turn, or for `next_attempt_at` after an attempt the backend could not take
    sending   claimed by a worker (`lease_owner`, until `lease_until`); once `exchange_id` is set, a call with that
              journal id was about to go out, so it may have reached the backend
    done      the backend applied it; `result` is what the synchronous call would have replied
    failed    the backend refused it, or its outcome is unknown and it may not be sent again; `result` says which
    dead      the backend stayed unavailable until the job was older than `[jobs] max_age_seconds`

A job's `attempts` (at most MAX_KEPT_ATTEMPTS, the newest; `attempt_count` counts all) are dicts with `at`, `outcome`
(one of ATTEMPT_OUTCOMES), and optionally `status`, `error`, `exchange_id`, `retry_after`, `requested_by`.

A crashed worker's claim runs out (`lease_until`); the next claim of the job hands back the job as it was, so the
sender can tell a call that may have gone out (`exchange_id` set) from one that never did.

A **dedupe key** (the caller, its Idempotency-Key and the request's fingerprint, and the job's place in the request)
makes add_jobs() hand back the job already stored under it instead of a second one: a retry of a request whose 202
was lost finds the same jobs.

Once a job is final (done, failed, dead) its completion event is due: unannounced() lists final jobs whose event was
not yet handed to the event store, and mark_announced() says it was (events are deduplicated by job and finish, so
announcing twice delivers once). purge_finished() removes final jobs that finished long enough ago, a bounded batch
at a time.

Errors of the storage itself (sqlite3.Error, redis.RedisError) are passed on as they are.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

QUEUED, SENDING, DONE, FAILED, DEAD = "queued", "sending", "done", "failed", "dead"
JOB_STATES = (QUEUED, SENDING, DONE, FAILED, DEAD)
ACTIVE_STATES = (QUEUED, SENDING)
FINAL_STATES = (DONE, FAILED, DEAD)
#: what an attempt in a job's history ended in: "done" applied, "refused" the backend said no, "unavailable" it
#: could not take the call now (retried), "outcome-unknown" it may have applied it (sent again only when
#: idempotent), "interrupted" the worker stopped while the call may have been out, "expired" too old to try again,
#: "retry" an operator or caller asked to send a failed or dead job again (no call)
ATTEMPT_OUTCOMES = ("done", "refused", "unavailable", "outcome-unknown", "interrupted", "expired", "retry")
#: the newest attempts a job keeps in its history (attempt_count counts them all)
MAX_KEPT_ATTEMPTS = 50
#: how many active jobs active_summary() counts per connection at most: enough to see a backlog, bounded in cost
ACTIVE_COUNT_LIMIT = 100_000
SQLITE_FILE_NAME = "jobs.sqlite3"


class JobStoreError(ValueError):
    """A job cannot be stored or changed as asked (a field missing or not JSON-able, an unknown state)."""


@dataclass(frozen=True)
class NewJob:
    """A job as the REST layer hands it to add_jobs(): everything the worker needs to send it later.

    `items` are the canonical update documents, each `{"order_id": ..., "document": {...}}` as the caller sent
    them (validated), from which the worker plans the call again; they never hold a credential."""

    id: str
    lane: str
    connection: str
    backend: str
    operation: str
    order_ids: tuple[str, ...]
    items: tuple[Mapping[str, Any], ...]
    idempotent: bool
    #: "single" (PATCH /orders/<id>) or "bulk" (one call of PATCH /orders): the shape of `result`'s body
    kind: str = "single"
    caller: str = ""
    request_id: str = ""
    dedupe_key: str | None = None
    trace_context: Mapping[str, str] = field(default_factory=dict)


class JobStore(abc.ABC):
    """Stores update jobs and answers which to send next; safe across threads and processes.

    Every method returning a job returns a dict with the keys of JOB_FIELDS."""

    @abc.abstractmethod
    def add_jobs(self, jobs: Sequence[NewJob], *, now: float | None = None) -> list[dict]:
        """Store the jobs in one transaction, in the order given, each queued at the back of its lane and due now;
        a job whose dedupe_key the store knows is not stored again: the job stored under it is returned in its
        place. Returns one job per job given, in the same order. A job the store cannot keep (see check_new_job) or
        whose id is taken is refused with JobStoreError, and then nothing of the batch is stored."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> dict | None:
        """The job, or None if the store has no job of that id."""

    @abc.abstractmethod
    def list_jobs(self, *, connections: Collection[str] | None = None, connection: str | None = None,
                  order_id: str | None = None, state: str | None = None, request_id: str | None = None,
                  limit: int = 100, before: str | None = None) -> list[dict]:
        """Up to `limit` jobs, newest (highest sequence) first, matching every filter given.

        `connections`: only jobs of these connections (None: any; empty: none). `order_id`: jobs one of whose
        order_ids it is. `before`: only jobs with a lower sequence than the job of this id, which must itself pass
        `connections` (else nothing is listed, as for an unknown id)."""

    @abc.abstractmethod
    def active_lanes(self) -> list[str]:
        """Every lane with at least one queued or sending job, sorted."""

    @abc.abstractmethod
    def lane_head(self, lane: str) -> dict | None:
        """The lane's active job with the lowest sequence (due or not), or None when the lane has none."""

    @abc.abstractmethod
    def claim(self, job_id: str, owner: str, *, lease_seconds: float, now: float | None = None) -> dict | None:
        """Make the job `sending` for `owner` until now + lease_seconds, with no exchange noted yet, if it is the head
        of its lane and queued, or sending under a lease that ran out (or already `owner`'s). Returns the job as it
        was before the claim (its state, lease and exchange_id tell a crashed send), or None when it was not
        claimed."""

    @abc.abstractmethod
    def note_exchange(self, job_id: str, owner: str, exchange_id: str, *, now: float | None = None) -> bool:
        """Note, durably (SQLite: synced to disk before it returns; Redis: one write, as durable as the server's
        persistence settings make it), that the call with this journal exchange id is about to go out for the job;
        False (nothing changed) when the job is not `sending` for `owner`."""

    @abc.abstractmethod
    def release(self, job_id: str, owner: str, *, state: str, attempt: Mapping[str, Any] | None = None,
                result: Mapping[str, Any] | None = None, next_attempt_at: float | None = None,
                now: float | None = None) -> bool:
        """End `owner`'s claim: add `attempt` (if given) to the history, and set `state`: QUEUED (to be tried again
        at `next_attempt_at`, None: now), or DONE, FAILED or DEAD with `result` (`{"status": int, "body": ...}`),
        when the job is final and its completion event due. Clears the lease and the noted exchange. False (nothing
        changed) when the job is not `sending` for `owner`."""

    @abc.abstractmethod
    def retry(self, job_id: str, *, requested_by: str = "", now: float | None = None) -> tuple[dict, bool] | None:
        """Queue a failed or dead job again, at the back of its lane (a new sequence), due now, its result cleared
        and a "retry" entry naming `requested_by` in its history: (the job, True). A job in any other state is left
        as it is: (the job, False). None when the store has no job of that id."""

    @abc.abstractmethod
    def unannounced(self, *, finished_by: float, limit: int = 100) -> list[dict]:
        """Up to `limit` final jobs whose completion event was not marked announced, finished at or before
        `finished_by`, oldest finish first."""

    @abc.abstractmethod
    def mark_announced(self, job_id: str, finish: int) -> None:
        """Note that the completion event of the job's finish number `finish` (its `finishes` when it became final)
        was handed to the event store; a later finish (after a retry) is due again."""

    @abc.abstractmethod
    def active_summary(self, *, limit: int = ACTIVE_COUNT_LIMIT) -> dict[str, tuple[int, float]]:
        """Per connection with active jobs: (how many are queued or sending, counted up to `limit`; the oldest
        active job's accepted_at)."""

    @abc.abstractmethod
    def purge_finished(self, *, finished_by: float, limit: int) -> int:
        """Delete up to `limit` final jobs (oldest finish first) that finished at or before `finished_by`, with their
        dedupe keys and indexes, in one transaction; how many were deleted. Active jobs are never deleted."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


#: the keys of every job a store returns: `seq` the store's acceptance sequence; `order_ids` a list; `items`,
#: `trace_context` as given; `accepted_at`, `updated_at`, `next_attempt_at` (None: due now), `lease_until`,
#: `finished_at` UNIX seconds (floats, given back exactly); `lease_owner`, `exchange_id` None unless sending;
#: `result` None unless final; `finishes` how many times the job became final; `announced` the highest finish whose
#: completion event was handed over (0: none)
JOB_FIELDS = (
    "id", "seq", "lane", "connection", "backend", "operation", "order_ids", "items", "idempotent", "kind",
    "caller", "request_id", "trace_context", "state", "accepted_at", "updated_at", "next_attempt_at",
    "lease_owner", "lease_until", "exchange_id", "attempts", "attempt_count", "result", "finished_at",
    "finishes", "announced",
)


# Helpers both implementations share, so they agree on every detail.

def timestamp(now: float | None) -> float:
    """The caller's time as a float (UNIX seconds), or the current time when none is given."""
    return time.time() if now is None else float(now)


def check_new_job(job: NewJob) -> str:
    """The job's fixed part as JSON text (what never changes once stored), after checking it."""
    for name in ("id", "lane", "connection", "backend", "operation"):
        if not isinstance(getattr(job, name), str) or not getattr(job, name):
            raise JobStoreError(f"a job needs a non-empty string {name!r}")
    if not job.order_ids or not all(isinstance(order_id, str) for order_id in job.order_ids):
        raise JobStoreError("a job needs at least one order id, each a string")
    if job.kind not in ("single", "bulk"):
        raise JobStoreError(f"unknown job kind {job.kind!r}")
    try:
        return json.dumps({
            "backend": job.backend, "operation": job.operation, "order_ids": list(job.order_ids),
            "items": [dict(item) for item in job.items], "idempotent": bool(job.idempotent), "kind": job.kind,
            "caller": job.caller, "request_id": job.request_id, "trace_context": dict(job.trace_context),
        }, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise JobStoreError(f"a job must be JSON-able: {error}") from None


def check_state(state: str | None, allowed: Sequence[str] = JOB_STATES) -> None:
    """Refuse a state that is not one of `allowed`."""
    if state is not None and state not in allowed:
        raise JobStoreError(f"unknown or unexpected job state {state!r}; one of: {', '.join(allowed)}")


def check_attempt(attempt: Mapping[str, Any] | None) -> dict | None:
    """The attempt as a store keeps it (a plain dict), after checking its outcome."""
    if attempt is None:
        return None
    if attempt.get("outcome") not in ATTEMPT_OUTCOMES:
        raise JobStoreError(f"unknown attempt outcome {attempt.get('outcome')!r}; one of: "
                            f"{', '.join(ATTEMPT_OUTCOMES)}")
    return dict(attempt)


def kept_attempts(attempts: list[dict], new: dict | None) -> list[dict]:
    """The history with `new` added, cut to the newest MAX_KEPT_ATTEMPTS."""
    if new is None:
        return attempts
    return [*attempts, new][-MAX_KEPT_ATTEMPTS:]


def encode(value: Any) -> str:
    """JSON text as the stores keep documents."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
