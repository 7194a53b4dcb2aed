"""GET /exchanges and GET /exchanges/<id>: the journal of backend calls — what went out, what came back.

Every call the gateway makes to a backend is recorded (gateway/journal/): when, the request id and caller, the
connection, backend and operation, the orders, the request as a dry run shows it and the reply, both with every
credential masked, the duration and the outcome. A PATCH reply's `request_id` finds its exchanges
(`?request_id=`). Reading it needs the scope `exchanges:read`.

A caller sees the exchanges of its connections only: the list is filtered in the journal's query (so `limit`
counts what it may see), a `connection` filter outside its connections matches nothing (an empty list, as for a
connection nobody configured), and another connection's exchange is a 404 like an unknown id.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, jsonify
from marshmallow import fields, validate

from gateway.canonical.schema import Text
from gateway.errors import NotFound
from gateway.journal import Exchange
from gateway.rest.auth import Policy, current_caller, scoped_connections
from gateway.rest.common import REQUEST_ID
from gateway.rest.endpoints import endpoint
from gateway.rest.queries import AsciiInteger, NoQuery, QuerySchema
from gateway.runtime import current_gateway

blueprint = Blueprint("exchanges", __name__)
OUTCOMES = ("ok", "refused", "failed", "timeout", "unreachable")


class ExchangeNotFound(NotFound):
    """No recorded exchange has that id (or it is past the journal's retention)."""

    slug = "exchange-not-found"
    title = "Exchange not found"


class ExchangeListQuery(QuerySchema):
    """GET /exchanges."""

    order_id = Text(validate=validate.Length(min=1, max=255))
    connection = Text(validate=validate.Length(min=1, max=100))
    outcome = fields.String(validate=validate.OneOf(OUTCOMES, error="One of: {choices}."))
    request_id = Text(validate=validate.Length(min=1, max=128))
    since = fields.AwareDateTime(format="iso", default_timezone=UTC)
    limit = AsciiInteger(load_default=100, validate=validate.Range(min=1, max=1000, error="An integer from 1 to 1000."))


def describe(exchange: Exchange) -> dict[str, Any]:
    """An exchange as the API shows it: its time in ISO 8601 (UTC)."""
    document = dataclasses.asdict(exchange)
    document["at"] = datetime.fromtimestamp(exchange.at, UTC).isoformat()
    document["order_ids"] = list(exchange.order_ids)
    return document


EXCHANGE_ID = {"name": "exchange_id", "in": "path", "required": True, "schema": {"type": "string"}}


@blueprint.get("/exchanges")
@endpoint(
    "get", "/exchanges", "List recorded backend exchanges", tags=["operations"],
    policy=Policy(("exchanges:read",), connection_data=True), query=ExchangeListQuery,
    replies={200: "exchanges of the caller's connections, newest first"},
    parameters=[
        {"name": "order_id", "in": "query", "schema": {"type": "string"}, "description": "an order id of the call"},
        {"name": "connection", "in": "query", "schema": {"type": "string"},
         "description": "the exchanges of this connection (one the caller may not use matches nothing)"},
        {"name": "outcome", "in": "query", "schema": {"type": "string", "enum": list(OUTCOMES)}},
        {"name": "request_id", "in": "query", "schema": {"type": "string"},
         "description": "the request_id of the reply that made the calls"},
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        REQUEST_ID,
    ],
    problems={422: "an invalid filter, or an unknown query parameter", 500: "the gateway failed"},
)
def list_exchanges(query: dict):
    """Recorded exchanges of the caller's connections, newest first, filtered by order, connection, outcome,
    request id and time."""
    since = query.get("since")
    journal = current_gateway().recorder.flushed_journal()
    exchanges = journal.list(order_id=query.get("order_id"), connection=query.get("connection"),
                             outcome=query.get("outcome"), request_id=query.get("request_id"),
                             since=since.timestamp() if since else None, limit=query["limit"],
                             connections=scoped_connections())
    return jsonify({"exchanges": [describe(exchange) for exchange in exchanges], "count": len(exchanges)})


@blueprint.get("/exchanges/<exchange_id>")
@endpoint("get", "/exchanges/{exchange_id}", "Show one recorded backend exchange", tags=["operations"],
          policy=Policy(("exchanges:read",), connection_data=True), query=NoQuery, replies={200: "the exchange"},
          parameters=[EXCHANGE_ID, REQUEST_ID],
          problems={404: "no such exchange (an exchange of a connection the caller may not use is not one it can "
                         "see)", 422: "an unknown query parameter", 500: "the gateway failed"})
def show_exchange(exchange_id: str, query: dict):
    """One exchange of the caller's connections with its request and reply."""
    exchange = current_gateway().recorder.flushed_journal().get(exchange_id)
    # The caller is asked whether or not the exchange exists: an unknown id and a hidden one take the same path.
    if not current_caller().sees(exchange.connection if exchange else None) or exchange is None:
        raise ExchangeNotFound(f"No exchange {exchange_id!r} (exchanges are kept for the journal's retention).")
    return jsonify(describe(exchange))
