"""PATCH /orders/<id> and PATCH /orders: canonical documents in, one normalized JSON shape out, for every backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, g
from marshmallow import ValidationError

from gateway.calls import AttemptListener, CallContext
from gateway.canonical import (
    OrderUpdate,
    OrderUpdateSchema,
    UpdateOutcome,
    flatten_errors,
    load_bulk_envelope,
    load_bulk_item,
    load_order_update,
)
from gateway.connections import Connection, PlannedUpdate
from gateway.errors import GatewayError, PayloadTooLarge, ValidationFailed
from gateway.jobs.sender import JobSender
from gateway.rest.auth import Policy, authorize, current_caller
from gateway.rest.common import (
    IDEMPOTENCY_KEY,
    PREFER_PARAMETER,
    REQUEST_ID,
    TRACE_CONTEXT,
    connections,
    prefers_async,
    request_budget,
)
from gateway.rest.endpoints import OneOf, endpoint
from gateway.rest.problems import TYPE_PREFIX, gateway_error_document
from gateway.rest.queries import UpdateQuery
from gateway.rest.request_ids import current_request_id
from gateway.rest.schemas import (
    BulkQueuedSchema,
    BulkReplySchema,
    BulkRequestSchema,
    DryRunReplySchema,
    UpdateJobSchema,
    UpdateReplySchema,
)
from gateway.rest.updates import accepted, bulk_location, job_document, job_location, queue_updates
from gateway.runtime import gateway_of
from gateway.transport import OutboundRequest

blueprint = Blueprint("orders", __name__)


def describe_request(outbound: OutboundRequest) -> dict:
    """An outgoing request as a dry run shows it."""
    return {
        "method": outbound.method,
        "url": outbound.url,
        "headers": dict(outbound.headers),
        "body": outbound.body.decode("utf-8"),
    }


DRY_RUN = {"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean"},
           "description": "validate and translate, show the outgoing request (credentials masked), send nothing"}
BACKEND_PROBLEMS = {
    404: "the backend does not know the order",
    409: "the backend refused because of the order's state",
    502: "the backend failed: fault, 5xx, unusable reply, refused credentials",
    503: "the backend could not be reached or rate-limited the gateway",
    504: "the backend did not answer in time",
}
IDEMPOTENCY_PROBLEMS = {409: "a request with the same Idempotency-Key is still being served, or its first request's "
                             "outcome is unknown (it may have been applied: check the order)"}
REQUEST_PROBLEMS = {
    400: "the body is not JSON",
    413: "the body (or the batch) is too large",
    415: "the body is not application/json",
    422: "invalid for the schema or for the connection's backend, or the Idempotency-Key was used for another "
         "request",
    500: "the gateway failed (its own bug); nothing was sent",
}


def per_backend_examples(gateway_connections) -> dict:
    """One request example per configured connection and example of its backend."""
    return {f"{name}: {title}": {"connection": name, **document}
            for name, connection in gateway_connections.by_name.items()
            for title, document in connection.backend.example_updates.items()}


def bulk_examples(gateway_connections) -> dict:
    """A two-item bulk update per configured connection."""
    examples = {}
    for name, connection in gateway_connections.by_name.items():
        documents = list(connection.backend.example_updates.values())[:2]
        examples[f"{name}: two orders"] = {"connection": name, "orders": [
            {"order_id": f"ORDER-{n + 1}", **{k: v for k, v in doc.items() if k != "id_type"}}
            for n, doc in enumerate(documents)]}
    return examples


def call_context(listener: AttemptListener | None) -> CallContext:
    """Who asks for this request's backend calls, and who must be told of each before it goes out."""
    return CallContext(request_id=current_request_id(), caller=current_caller().name, listener=listener)


@dataclass(frozen=True)
class OrderUpdated:
    """An update a backend applied: UpdateReplySchema dumps it, the one success shape of every backend and
    operation."""

    connection: Connection
    planned: PlannedUpdate
    outcome: UpdateOutcome
    request_id: str


@dataclass(frozen=True)
class OrderDryRun:
    """What an update would send: DryRunReplySchema dumps it."""

    connection: Connection
    planned: PlannedUpdate
    request: dict
    request_id: str
    dry_run: bool = True


#: the single update's reply, and each successful bulk item's body
ORDER_REPLY = OneOf((OrderUpdated, UpdateReplySchema), (OrderDryRun, DryRunReplySchema))
#: PATCH: orders:write, or orders:dry-run for a dry run
UPDATE_POLICY = Policy(("orders:write",), dry_run_scopes=("orders:dry-run",), connection_data=True)


def load_update(document: Any, order_id: str) -> OrderUpdate:
    """The body of PATCH /orders/<id>: one canonical document for that order."""
    return load_order_update(order_id, document)


@blueprint.patch("/orders/<path:order_id>")
@endpoint(
    "patch", "/orders/{order_id}", "Update one order", tags=["orders"], policy=UPDATE_POLICY,
    query=UpdateQuery, body=OrderUpdateSchema, load_body=load_update, body_examples=per_backend_examples,
    reply=ORDER_REPLY, replies={200: "updated; with dry_run, what would be sent",
                                202: ("queued as a job (Prefer: respond-async); Location: /updates/{job id}",
                                      UpdateJobSchema)},
    idempotent=True, log_fields={"order_ids": "order_id"},
    parameters=[{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the order's id, read as the document's id_type says"}, DRY_RUN, PREFER_PARAMETER,
                IDEMPOTENCY_KEY, REQUEST_ID, *TRACE_CONTEXT],
    problems={**REQUEST_PROBLEMS, **BACKEND_PROBLEMS, **IDEMPOTENCY_PROBLEMS},
)
def update_order(order_id: str, query: dict, body: OrderUpdate, listener: AttemptListener | None):
    """Update one order in the backend of the requested connection.

    The body is one canonical document; which fields a connection accepts depends on its backend (a field it
    cannot carry is a 422 naming the field and the backend). Nothing is sent unless the whole document is valid.
    The backend picks the vendor call, named in the reply's `operation`: `{"status": "canceled"}` is Ongoing's
    ProcessOrder (OrderOperation Remove, alone) and Speed4Trade's updateOrderStatus CANCELED; SellerCenter,
    whose UpdateOrderInformation carries addresses only, refuses it with a 422.

    With `Prefer: respond-async` the checked update is queued as a job instead (202, `Location: /updates/<job
    id>`): the event worker sends it when the backend can take it, after the connection's jobs accepted before it.
    """
    connection = connections().resolve(body.connection)
    authorize(connection.name, query)
    planned = connection.check(body)
    if query["dry_run"]:
        (outbound,) = connection.dry_run([planned])
        return OrderDryRun(connection, planned, describe_request(outbound), current_request_id())
    if prefers_async():
        (job,) = queue_updates(connection, [planned], kind="single", listener=listener)
        return accepted(job_document(job), job_location(job["id"]))
    (outcome,) = connection.send([planned], request_budget(), call_context(listener))
    if isinstance(outcome, GatewayError):
        raise outcome
    return OrderUpdated(connection, planned, outcome, current_request_id())


@blueprint.patch("/orders")
@endpoint(
    "patch", "/orders", "Update many orders of one connection", tags=["orders"], policy=UPDATE_POLICY,
    query=UpdateQuery, body=BulkRequestSchema, load_body=load_bulk_envelope, body_examples=bulk_examples,
    reply=BulkReplySchema, replies={200: "every item succeeded", 207: "some items failed (with Prefer: "
                                                                      "respond-async: none was queued)",
                                    202: ("queued as one job per vendor call (Prefer: respond-async); Location: "
                                          "the job, or /updates?request_id= for several", BulkQueuedSchema)},
    idempotent=True, parameters=[DRY_RUN, PREFER_PARAMETER, IDEMPOTENCY_KEY, REQUEST_ID, *TRACE_CONTEXT],
    problems={400: REQUEST_PROBLEMS[400], 413: "more items than max_bulk_items, or too large a body",
              415: REQUEST_PROBLEMS[415], 422: "the envelope is malformed or names an unknown connection, or the "
                                               "Idempotency-Key was used for another request",
              409: IDEMPOTENCY_PROBLEMS[409], 500: REQUEST_PROBLEMS[500]},
)
def update_orders(query: dict, body: dict, listener: AttemptListener | None):
    """Update many orders of one connection; every item gets its own outcome (200 all done, 207 otherwise).

    Each item is validated on its own; invalid items are reported and never sent. Items travel as the backend
    allows: Ongoing one call per item in order, Speed4Trade and SellerCenter many per call; consecutive items
    of one vendor operation share a call.

    With `Prefer: respond-async` the valid items are queued, one job per vendor call, and the reply (202) lists
    the jobs and each item's job or refusal; with no valid item nothing is queued (207, as without it).
    """
    items = body["orders"]
    limit = current_app.config["GATEWAY_SETTINGS"].max_bulk_items
    if len(items) > limit:
        raise PayloadTooLarge(f"A bulk update carries at most {limit} orders; this one has {len(items)}.")
    connection = connections().resolve(body.get("connection"))
    authorize(connection.name, query)  # the whole bulk is refused before any item is looked at

    results: list[dict | None] = [None] * len(items)
    valid: list[tuple[int, PlannedUpdate]] = []
    for position, item in enumerate(items):
        try:
            planned = connection.check(load_bulk_item(item, connection.name))
        except ValidationError as error:
            results[position] = _item_failure(position, item, ValidationFailed(flatten_errors(error.messages)))
        except GatewayError as error:
            results[position] = _item_failure(position, item, error)
        else:
            valid.append((position, planned))

    reply: dict[str, Any] = {"connection": connection.name, "backend": connection.kind}
    planned_updates = [planned for _, planned in valid]
    request_id = current_request_id()
    if prefers_async() and not query["dry_run"] and valid:
        return _queue_bulk(connection, valid, results, listener, reply, request_id)
    if query["dry_run"]:
        for position, planned in valid:
            results[position] = _item_success(position, OrderDryRun(connection, planned, {}, request_id))
        reply.update(dry_run=True, requests=[describe_request(r) for r in connection.dry_run(planned_updates)])
    else:
        for (position, planned), outcome in zip(valid, connection.send(planned_updates, request_budget(),
                                                                     call_context(listener)), strict=True):
            if isinstance(outcome, GatewayError):
                results[position] = _item_failure(position, items[position], outcome)
            else:
                results[position] = _item_success(position, OrderUpdated(connection, planned, outcome, request_id))
    failed = sum(1 for result in results if result["status"] != 200)
    reply.update(succeeded=len(results) - failed, failed=failed, results=results, request_id=request_id)
    return reply, 200 if failed == 0 else 207


def _queue_bulk(connection: Connection, valid: list[tuple[int, PlannedUpdate]], results: list[dict | None],
                listener: AttemptListener | None, reply: dict[str, Any], request_id: str):
    """Queue a bulk's valid items, one job per vendor call: the 202 listing the jobs and each item's fate."""
    stored = queue_updates(connection, [planned for _, planned in valid], kind="bulk", listener=listener,
                           positions=[position for position, _ in valid])
    valid_items = iter(valid)
    for job in stored:
        for _ in job["order_ids"]:
            position, planned = next(valid_items)
            results[position] = {"position": position, "order_id": planned.update.order_id, "status": 202,
                                 "job_id": job["id"]}
    failed = sum(1 for result in results if result["status"] != 202)
    reply.update(queued=len(results) - failed, failed=failed, jobs=[job_document(job) for job in stored],
                 results=results, request_id=request_id)
    return accepted(reply, bulk_location(stored, request_id))


#: a dry-run bulk item's body: the single dry run's without its request (the bulk's `requests` list them)
_BULK_DRY_RUN_ITEM = DryRunReplySchema(exclude=("request",))
_UPDATED_ITEM = UpdateReplySchema()


def _item_success(position: int, result: OrderUpdated | OrderDryRun) -> dict:
    schema = _BULK_DRY_RUN_ITEM if isinstance(result, OrderDryRun) else _UPDATED_ITEM
    return {"position": position, "order_id": result.planned.update.order_id, "status": 200,
            "body": schema.dump(result)}


def _item_failure(position: int, item: Any, error: GatewayError) -> dict:
    order_id = item.get("order_id") if isinstance(item, dict) else None
    return {
        "position": position,
        "order_id": str(order_id) if isinstance(order_id, str | int) and not isinstance(order_id, bool) else None,
        "status": error.status,
        "body": gateway_error_document(error),
    }


class JobReplies:
    """How the worker shows what an update job ended in (gateway.jobs.sender.JobReplies): the replies the
    synchronous update would have given, rendered in an app context that carries the job's request id."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def applied(self, job: dict, connection: Connection, planned: list[PlannedUpdate], outcomes: list) -> dict:
        """A single job: the update's reply (or its problem); a bulk job: the bulk reply of its items."""
        with self.app.app_context():
            g.request_id = job["request_id"]
            if job["kind"] == "single":
                (outcome,) = outcomes
                if isinstance(outcome, GatewayError):
                    return {"status": outcome.status, "body": gateway_error_document(outcome)}
                return {"status": 200, "body": _UPDATED_ITEM.dump(
                    OrderUpdated(connection, planned[0], outcome, job["request_id"]))}
            results = []
            for item, update, outcome in zip(job["items"], planned, outcomes, strict=True):
                position = item.get("position", len(results))
                if isinstance(outcome, GatewayError):
                    results.append(_item_failure(position, {"order_id": item["order_id"]}, outcome))
                else:
                    results.append(_item_success(position, OrderUpdated(connection, update, outcome,
                                                                        job["request_id"])))
            failed = sum(1 for result in results if result["status"] != 200)
            return {"status": 200 if failed == 0 else 207, "body": {
                "connection": connection.name, "backend": connection.kind, "succeeded": len(results) - failed,
                "failed": failed, "results": results, "request_id": job["request_id"]}}

    def problem(self, job: dict, error: GatewayError, *, exchange_id: str | None = None,
                outcome_unknown: bool = False) -> dict:
        """The error's problem document; an outcome-unknown one says so in its type and names the exchange."""
        with self.app.app_context():
            g.request_id = job["request_id"]
            document = gateway_error_document(error)
        if outcome_unknown:
            document.update(type=TYPE_PREFIX + "outcome-unknown", title="Outcome unknown")
        if exchange_id:
            document["exchange_id"] = exchange_id
        return {"status": error.status, "body": document}


def job_sender(app: Flask, **options: Any) -> JobSender:
    """The JobSender of an app's update jobs, as the worker runs it: the app's job store, connections, `[jobs]`
    settings and scrubber, its results shown as this module's replies, announced through its event service
    (`options`: the sender's clock and jitter)."""
    gateway = gateway_of(app)
    return JobSender(gateway.events.jobs, gateway.connections, gateway.settings.jobs, JobReplies(app),
                     gateway.events.announce_job, scrubber=gateway.scrubber, **options)
