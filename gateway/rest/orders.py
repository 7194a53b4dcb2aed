"""PATCH /orders/<id>: one canonical document in, one normalized JSON reply out, for every backend."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from marshmallow import ValidationError

from gateway.canonical import flatten_errors, load_order_update
from gateway.errors import MalformedRequest, UnsupportedMediaType, ValidationFailed
from gateway.rest.request_ids import current_request_id

blueprint = Blueprint("orders", __name__)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json_body() -> Any:
    """The request body as JSON; 415 unless it is sent as JSON, 400 unless it parses."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Send the body as application/json (got {request.mimetype or 'no Content-Type'})."
        )
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 JSON"
        position = f" at line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise MalformedRequest(f"The body is not valid JSON: {reason}{position}.") from None


def read_dry_run_flag() -> bool:
    """The ?dry_run= query flag."""
    value = request.args.get("dry_run")
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValidationFailed({"dry_run": ["Not a valid boolean; use true or false."]})


@blueprint.patch("/orders/<path:order_id>")
def update_order(order_id: str):
    """Update one order in the backend of the requested connection."""
    dry_run = read_dry_run_flag()
    document = read_json_body()
    try:
        update = load_order_update(order_id, document)
    except ValidationError as error:
        raise ValidationFailed(flatten_errors(error.messages)) from None
    backend = current_app.extensions["order_gateway"].resolve(update.connection)
    reply = {
        "order_id": order_id,
        "connection": backend.name,
        "backend": backend.kind,
    }
    if dry_run:
        outbound = backend.dry_run_view(backend.prepare_update(update, mask_credentials=True))
        reply.update(
            dry_run=True,
            updated=dict(update.fields),
            request={
                "method": outbound.method,
                "url": outbound.url,
                "headers": dict(outbound.headers),
                "body": outbound.body.decode("utf-8"),
            },
            request_id=current_request_id(),
        )
        return jsonify(reply)
    outcome = backend.update_order(update)
    reply.update(
        updated=dict(update.fields),
        backend_order_id=outcome.backend_order_id,
        message=outcome.message,
        request_id=current_request_id(),
    )
    return jsonify(reply)
