"""Helpers every endpoint shares: reading bounded JSON bodies, the running gateway's connections."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app, g, request

from gateway.connections import Connections
from gateway.deadlines import Deadline
from gateway.errors import MalformedRequest, UnsupportedMediaType, ValidationFailed
from gateway.runtime import current_gateway
from gateway.safejson import MalformedJSON, UnrepresentableJSON, load_untrusted_json


def read_json_body() -> Any:
    """The request body as bounded JSON; 415 unless sent as JSON, 400 unless it parses within the limits.

    The body was bounded in size before the view ran (gateway.rest.limits); here its nesting depth (the
    [gateway] max_json_depth setting) and its numbers' digits are, before any schema walks it, and values no
    store or backend can carry (non-finite numbers, unpaired surrogates) are 422s naming their paths.
    """
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Send the body as application/json (got {request.mimetype or 'no Content-Type'})."
        )
    raw = request.get_data(cache=False)
    try:
        return load_untrusted_json(raw, max_depth=current_app.config["GATEWAY_SETTINGS"].max_json_depth)
    except MalformedJSON as error:
        raise MalformedRequest(f"The body {error.description}.") from None
    except UnrepresentableJSON as error:
        raise ValidationFailed(error.errors) from None


def request_budget() -> Deadline:
    """The request's whole time budget (`[gateway] request_timeout`), counted from when it began to be served."""
    budget = g.get("budget")
    if budget is None:
        seconds = current_app.config["GATEWAY_SETTINGS"].request_timeout
        budget = g.budget = Deadline.after(seconds, f"request_timeout {seconds:g} s")
    return budget


def connections() -> Connections:
    """The running gateway's connections."""
    return current_gateway().connections



IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "minLength": 1, "maxLength": 257},
                   "description": "a structured-field string (e.g. \"8e03978e-40d5\"): a retry with the same key and "
                                  "request gets the first reply again (Idempotent-Replayed: true) and sends nothing; "
                                  "another request with the key is 422, one while the first runs 409"}
REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,128}$"},
              "description": "echoed on the reply; a new one is made when absent"}
#: W3C trace context: the trace this request belongs to, continued on every backend call and event delivery
TRACE_CONTEXT = [
    {"name": "traceparent", "in": "header", "required": False,
     "schema": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
     "description": "W3C trace context; a new trace is started when absent or malformed"},
    {"name": "tracestate", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 512},
     "description": "W3C vendor trace state, passed on with traceparent"},
]

PREFER = "Prefer"
RESPOND_ASYNC = "respond-async"
#: the Prefer header as the PATCH endpoints document it
PREFER_PARAMETER = {
    "name": PREFER, "in": "header", "required": False, "schema": {"type": "string", "example": RESPOND_ASYNC},
    "description": "`respond-async`: queue the checked update as a job and answer 202 at once, with "
                   "`Location: /updates/<job id>`; the event worker sends it when the backend can take it, in the "
                   "order accepted (a dry run ignores it)"}


def prefers_async() -> bool:
    """Whether the request asks for `Prefer: respond-async` (RFC 7240: preferences are comma-separated tokens,
    each with optional `=value` and `;` parameters; tokens are case-insensitive). Several Prefer headers reach the
    app as one, joined by commas (WSGI), so one lookup reads them all."""
    value = request.headers.get(PREFER)
    if not value:
        return False
    return any(preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == RESPOND_ASYNC
               for preference in value.split(","))


def iso_time(seconds: float | None) -> str | None:
    """A time of the stores (UNIX seconds) as a reply shows it: ISO 8601 in UTC; None stays None."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()
