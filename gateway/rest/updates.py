"""Update jobs over HTTP: `Prefer: respond-async` (RFC 7240) on PATCH /orders/<id> and PATCH /orders queues the
checked update as jobs (gateway/jobs) and answers 202 with where to follow it; GET /updates/<id> and GET /updates
show jobs, POST /updates/<id>/retry sends a failed or dead one again.

Everything is scoped to the caller's connections: a job of another connection is a 404, as if it did not exist.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app

from gateway import tracing
from gateway.calls import AttemptListener
from gateway.canonical import update_document
from gateway.connections import Connection, PlannedUpdate
from gateway.errors import JobNotFound, JobNotRetryable
from gateway.jobs import DONE, JOB_STATES, JobStore, NewJob
from gateway.rest.auth import Policy, current_caller, listed_connections
from gateway.rest.common import IDEMPOTENCY_KEY, PREFER, REQUEST_ID, RESPOND_ASYNC, TRACE_CONTEXT, iso_time
from gateway.rest.endpoints import endpoint
from gateway.rest.idempotency import KeyRecord
from gateway.rest.queries import NoQuery, UpdateListQuery
from gateway.rest.request_ids import current_request_id
from gateway.rest.schemas import UpdateJobListSchema, UpdateJobSchema
from gateway.runtime import current_gateway

blueprint = Blueprint("updates", __name__)
log = logging.getLogger("gateway.jobs")

JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
HIDDEN = "no such job (a job of a connection the caller may not use is not one it can see)"


def _store() -> JobStore:
    return current_gateway().events.jobs


def job_location(job_id: str) -> str:
    """Where a job is shown."""
    return f"/updates/{job_id}"


def job_document(job: dict) -> dict:
    """A stored job as the API shows it (UpdateJobSchema): times as ISO 8601 (UTC); the canonical documents it
    carries and its worker's lease stay inside."""
    return {
        "id": job["id"], "state": job["state"], "connection": job["connection"], "backend": job["backend"],
        "operation": job["operation"], "order_ids": list(job["order_ids"]), "kind": job["kind"],
        "idempotent": job["idempotent"], "caller": job["caller"], "request_id": job["request_id"],
        "accepted_at": iso_time(job["accepted_at"]), "updated_at": iso_time(job["updated_at"]),
        "next_attempt_at": iso_time(job["next_attempt_at"]), "finished_at": iso_time(job["finished_at"]),
        "attempt_count": job["attempt_count"],
        "attempts": [{**attempt, "at": iso_time(attempt["at"])} for attempt in job["attempts"]],
        "result": job["result"],
        "links": {"self": job_location(job["id"]),
                  "exchanges": f"/exchanges?{urlencode({'request_id': job['request_id']})}" if job["request_id"]
                  else None},
    }


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return f"upd_{uuid.uuid4().hex}"


def queue_updates(connection: Connection, planned: Sequence[PlannedUpdate], *, kind: str,
                  listener: AttemptListener | None, positions: Sequence[int] | None = None) -> list[dict]:
    """Store the checked updates as jobs, one per call they would travel in (as Connection.send groups them), in
    one transaction: the stored jobs. Under an Idempotency-Key each job has a dedupe key, so a retry of a request
    whose 202 was lost finds the same jobs instead of queueing them twice. `positions`: each update's place in a
    bulk request, kept with it for its result."""
    caller, request_id, trace = current_caller().name, current_request_id(), tracing.outbound_headers()
    places = iter(positions) if positions is not None else None
    jobs = []
    for index, (operation, updates) in enumerate(connection.calls(planned)):
        dedupe_key = f"{listener.key}\x00{listener.fingerprint}\x00{index}" if isinstance(listener, KeyRecord) \
            else None
        jobs.append(NewJob(
            id=new_job_id(), lane=connection.name, connection=connection.name, backend=connection.kind,
            operation=operation.name, order_ids=tuple(update.order_id for update in updates),
            items=tuple({"order_id": update.order_id, "document": update_document(update),
                         **({"position": next(places)} if places is not None else {})} for update in updates),
            idempotent=operation.is_idempotent(updates), kind=kind, caller=caller, request_id=request_id,
            dedupe_key=dedupe_key, trace_context=trace))
    stored = _store().add_jobs(jobs)
    wake_lanes({job["lane"] for job in stored})
    log.info("%d update job(s) queued for connection %s: %s", len(stored), connection.name,
             ", ".join(job["id"] for job in stored))
    return stored


def wake_lanes(lanes: set[str]) -> None:
    """Ask the worker to look at these lanes now; a wake-up that fails is logged: the worker resumes every lane
    with queued jobs on its own."""
    queue = current_gateway().events.job_queue
    for lane in sorted(lanes):
        try:
            queue.nudge(lane)
        except Exception as error:  # stored is safe
            log.warning("could not wake the worker for lane %s (%s: %s); it resumes queued jobs on its own", lane,
                        type(error).__name__, error)


def accepted(body: Any, location: str) -> Response:
    """A 202 that applies `Prefer: respond-async`: the body, and where to follow the jobs."""
    response = current_app.json.response(body)
    response.status_code = 202
    response.headers["Location"] = location
    response.headers["Preference-Applied"] = RESPOND_ASYNC
    response.headers["Vary"] = PREFER
    return response


def visible_job(job_id: str) -> dict:
    """The stored job, if the caller may see it; else 404, whether or not it exists."""
    job = _store().get_job(job_id)
    if job is None or not current_caller().sees(job["connection"]):
        raise JobNotFound(f"No update job {job_id!r}.")
    return job


READ_POLICY = Policy(("updates:read",), connection_data=True)


@blueprint.get("/updates")
@endpoint(
    "get", "/updates", "List update jobs", tags=["updates"], policy=READ_POLICY, query=UpdateListQuery,
    reply=UpdateJobListSchema,
    replies={200: "jobs of the caller's connections, newest accepted first, at most `limit`; `next` is the rest"},
    parameters=[
        {"name": "connection", "in": "query", "schema": {"type": "string"},
         "description": "the jobs of this connection (one the caller may not use matches nothing)"},
        {"name": "order_id", "in": "query", "schema": {"type": "string"}, "description": "jobs carrying this order"},
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(JOB_STATES)}},
        {"name": "request_id", "in": "query", "schema": {"type": "string"},
         "description": "the jobs one request queued (a bulk's Location names them so)"},
        {"name": "before", "in": "query", "schema": {"type": "string"},
         "description": "jobs accepted before this one: the cursor of a reply's `next`"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        REQUEST_ID,
    ],
    problems={422: "an invalid filter, or an unknown query parameter", 503: "the job store cannot be used",
              500: "the gateway failed"},
)
def list_updates(query: dict):
    """Update jobs of the caller's connections, newest accepted first, filtered by connection, order, state and
    request, a page at a time (`limit` at most `[jobs] max_list_limit`)."""
    limit = min(query["limit"], current_app.config["GATEWAY_SETTINGS"].jobs.max_list_limit)
    filters = {name: query[name] for name in ("connection", "order_id", "state", "request_id") if name in query}
    found = _store().list_jobs(connections=listed_connections(query.get("connection")),
                               connection=query.get("connection"), order_id=query.get("order_id"),
                               state=query.get("state"), request_id=query.get("request_id"),
                               before=query.get("before"), limit=limit + 1)
    more = len(found) > limit
    jobs = found[:limit]
    following = f"/updates?{urlencode({**filters, 'limit': limit, 'before': jobs[-1]['id']})}" if more else None
    return {"count": len(jobs), "updates": [job_document(job) for job in jobs], "next": following}


@blueprint.get("/updates/<job_id>")
@endpoint("get", "/updates/{job_id}", "Show one update job", tags=["updates"], policy=READ_POLICY, query=NoQuery,
          reply=UpdateJobSchema, replies={200: "the job: its state, attempts and, once final, its result"},
          parameters=[JOB_ID, REQUEST_ID],
          problems={404: HIDDEN, 422: "an unknown query parameter", 503: "the job store cannot be used",
                    500: "the gateway failed"})
def show_update(job_id: str, query: dict):
    """One update job of the caller's connections: `state` (queued, sending, done, failed, dead), every attempt
    with its time and outcome, and once final its `result`: the status and body the synchronous update would have
    answered (its problem document when it failed)."""
    return job_document(visible_job(job_id))


def retry_job(job_id: str) -> tuple[dict, bool]:
    """Queue a failed or dead job of the caller's connections again and wake the worker: (the job, whether it was
    queued again); a queued or sending one is left as it is (a retry is idempotent), a done one is a 409."""
    visible_job(job_id)
    caller = current_caller().name
    retried = _store().retry(job_id, requested_by=caller)
    if retried is None:
        raise JobNotFound(f"No update job {job_id!r}.")
    job, changed = retried
    if job["state"] == DONE:
        raise JobNotRetryable(f"The update job {job_id!r} is done: it was applied, and is not sent again.")
    if changed:
        wake_lanes({job["lane"]})
        log.info("update job %s queued again at the request of caller %s", job_id, caller)
    return job, changed


def retry_request(job_id: str) -> tuple[str, str]:
    """(method, path) of the API's retry of this job: the request the console's Retry button stands for, so that an
    Idempotency-Key means the same whichever sent it."""
    return "POST", f"/updates/{job_id}/retry"


def queue_retry(job_id: str) -> tuple[Response, bool]:
    """The API's reply to a retry of this job (202 with the job), and whether it was queued again."""
    job, changed = retry_job(job_id)
    return accepted(job_document(job), job_location(job_id)), changed


@blueprint.post("/updates/<job_id>/retry")
@endpoint("post", "/updates/{job_id}/retry", "Send a failed or dead update job again", tags=["updates"],
          policy=Policy(("orders:write",), connection_data=True), query=NoQuery, reply=UpdateJobSchema,
          replies={202: "queued again (or still queued or sending: nothing changed)"}, idempotent=True,
          parameters=[JOB_ID, IDEMPOTENCY_KEY, REQUEST_ID, *TRACE_CONTEXT],
          problems={404: HIDDEN, 409: "the job is done (it is not sent again), or a retry with the same "
                                      "Idempotency-Key is still being served",
                    422: "an unknown query parameter, or the Idempotency-Key was used for another request",
                    503: "the job store cannot be used", 500: "the gateway failed"})
def retry_update(job_id: str, query: dict, listener: object):
    """Queue a failed or dead job again, at the back of its connection's lane: it is sent after the jobs accepted
    before the retry (its attempts are kept, with the retry noted). Asking again while it is queued or sending
    changes nothing, so a retry is idempotent."""
    return queue_retry(job_id)[0]


def bulk_location(stored: Sequence[dict], request_id: str) -> str:
    """Where the jobs of one request are followed: the job itself when there is one, else the list of the
    request's jobs."""
    return job_location(stored[0]["id"]) if len(stored) == 1 else f"/updates?{urlencode({'request_id': request_id})}"
