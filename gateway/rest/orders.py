"""PATCH /orders/<id> and PATCH /orders: canonical documents in, one normalized JSON shape out, for every backend."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from marshmallow import ValidationError

from gateway import logs
from gateway.canonical import (
    OrderUpdateSchema,
    UpdateOutcome,
    flatten_errors,
    load_bulk_envelope,
    load_bulk_item,
    load_order_update,
)
from gateway.connections import AttemptListener, CallContext, Connection, PlannedUpdate
from gateway.errors import GatewayError, PayloadTooLarge, ValidationFailed
from gateway.rest.auth import current_caller, require_connection, require_scope
from gateway.rest.common import (
    IDEMPOTENCY_KEY,
    REQUEST_ID,
    TRACE_CONTEXT,
    connections,
    read_json_body,
    request_budget,
)
from gateway.rest.idempotency import idempotent
from gateway.rest.openapi import documented
from gateway.rest.problems import gateway_error_document
from gateway.rest.queries import UpdateQuery, read_query
from gateway.rest.request_ids import current_request_id
from gateway.rest.schemas import BulkReplySchema, BulkRequestSchema, DryRunReplySchema, UpdateReplySchema
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


def authorize(connection: str, dry_run: bool) -> None:
    """403 unless the caller may use the connection, and may send (not only dry-run) when this is no dry run."""
    if not dry_run:
        require_scope("orders:write")
    require_connection(connection)


def call_context(listener: AttemptListener | None) -> CallContext:
    """Who asks for this request's backend calls, and who must be told of each before it goes out."""
    return CallContext(request_id=current_request_id(), caller=current_caller().name, listener=listener)


def order_result(connection: Connection, planned: PlannedUpdate, outcome: UpdateOutcome | None = None) -> dict:
    """The one success shape of every backend and operation; without an outcome, the dry run's."""
    update = planned.update
    result: dict[str, Any] = {
        "order_id": update.order_id,
        "connection": connection.name,
        "backend": connection.kind,
        "operation": planned.operation.name,
    }
    if outcome is None:
        result.update(dry_run=True, updated=dict(update.fields))
    else:
        result.update(updated=dict(update.fields), backend_order_id=outcome.backend_order_id,
                      message=outcome.message)
    return result


@blueprint.patch("/orders/<path:order_id>")
@documented(
    "/orders/{order_id}", "patch", "Update one order", tags=["orders"],
    body=OrderUpdateSchema, body_examples=per_backend_examples,
    parameters=[{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the order's id, read as the document's id_type says"}, DRY_RUN, IDEMPOTENCY_KEY,
                REQUEST_ID, *TRACE_CONTEXT],
    replies={200: ("updated; with dry_run, what would be sent", {"oneOf": [UpdateReplySchema, DryRunReplySchema]})},
    problems={**REQUEST_PROBLEMS, **BACKEND_PROBLEMS, **IDEMPOTENCY_PROBLEMS},
)
@idempotent
def update_order(order_id: str, listener: AttemptListener | None):
    """Update one order in the backend of the requested connection.

    The body is one canonical document; which fields a connection accepts depends on its backend (a field it
    cannot carry is a 422 naming the field and the backend). Nothing is sent unless the whole document is valid.
    The backend picks the vendor call, named in the reply's `operation`: `{"status": "canceled"}` is Ongoing's
    ProcessOrder (OrderOperation Remove, alone) and Speed4Trade's updateOrderStatus CANCELED; SellerCenter,
    whose UpdateOrderInformation carries addresses only, refuses it with a 422.
    """
    logs.note(order_ids=[order_id])
    dry_run = read_query(UpdateQuery)["dry_run"]
    document = read_json_body()
    try:
        update = load_order_update(order_id, document)
    except ValidationError as error:
        raise ValidationFailed(flatten_errors(error.messages)) from None
    connection = connections().resolve(update.connection)
    authorize(connection.name, dry_run)
    planned = connection.check(update)
    if dry_run:
        (outbound,) = connection.dry_run([planned])
        return jsonify({**order_result(connection, planned), "request": describe_request(outbound),
                        "request_id": current_request_id()})
    (outcome,) = connection.send([planned], request_budget(), call_context(listener))
    if isinstance(outcome, GatewayError):
        raise outcome
    return jsonify({**order_result(connection, planned, outcome), "request_id": current_request_id()})


@blueprint.patch("/orders")
@documented(
    "/orders", "patch", "Update many orders of one connection", tags=["orders"],
    body=BulkRequestSchema, body_examples=bulk_examples,
    parameters=[DRY_RUN, IDEMPOTENCY_KEY, REQUEST_ID, *TRACE_CONTEXT],
    replies={200: ("every item succeeded", BulkReplySchema), 207: ("some items failed", BulkReplySchema)},
    problems={400: REQUEST_PROBLEMS[400], 413: "more items than max_bulk_items, or too large a body",
              415: REQUEST_PROBLEMS[415], 422: "the envelope is malformed or names an unknown connection, or the "
                                               "Idempotency-Key was used for another request",
              409: IDEMPOTENCY_PROBLEMS[409], 500: REQUEST_PROBLEMS[500]},
)
@idempotent
def update_orders(listener: AttemptListener | None):
    """Update many orders of one connection; every item gets its own outcome (200 all done, 207 otherwise).

    Each item is validated on its own; invalid items are reported and never sent. Items travel as the backend
    allows: Ongoing one call per item in order, Speed4Trade and SellerCenter many per call; consecutive items
    of one vendor operation share a call.
    """
    dry_run = read_query(UpdateQuery)["dry_run"]
    document = read_json_body()
    try:
        envelope = load_bulk_envelope(document)
    except ValidationError as error:
        raise ValidationFailed(flatten_errors(error.messages)) from None
    items = envelope["orders"]
    limit = current_app.config["GATEWAY_SETTINGS"].max_bulk_items
    if len(items) > limit:
        raise PayloadTooLarge(f"A bulk update carries at most {limit} orders; this one has {len(items)}.")
    connection = connections().resolve(envelope.get("connection"))
    authorize(connection.name, dry_run)  # the whole bulk is refused before any item is looked at

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
    if dry_run:
        for position, planned in valid:
            results[position] = {"position": position, "order_id": planned.update.order_id, "status": 200,
                                 "body": {**order_result(connection, planned), "request_id": request_id}}
        reply.update(dry_run=True, requests=[describe_request(r) for r in connection.dry_run(planned_updates)])
    else:
        for (position, planned), outcome in zip(valid, connection.send(planned_updates, request_budget(),
                                                                     call_context(listener)), strict=True):
            if isinstance(outcome, GatewayError):
                results[position] = _item_failure(position, items[position], outcome)
            else:
                results[position] = {"position": position, "order_id": planned.update.order_id, "status": 200,
                                     "body": {**order_result(connection, planned, outcome),
                                              "request_id": request_id}}
    failed = sum(1 for result in results if result["status"] != 200)
    reply.update(succeeded=len(results) - failed, failed=failed, results=results, request_id=request_id)
    return jsonify(reply), 200 if failed == 0 else 207


def _item_failure(position: int, item: Any, error: GatewayError) -> dict:
    order_id = item.get("order_id") if isinstance(item, dict) else None
    return {
        "position": position,
        "order_id": str(order_id) if isinstance(order_id, str | int) and not isinstance(order_id, bool) else None,
        "status": error.status,
        "body": gateway_error_document(error),
    }
