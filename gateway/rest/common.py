"""Helpers every endpoint shares: reading JSON bodies and flags, the running gateway's connections."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request

from gateway.connections import Connections
from gateway.errors import MalformedRequest, UnsupportedMediaType, ValidationFailed

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
        if isinstance(error, json.JSONDecodeError):
            raise MalformedRequest(
                f"The body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}."
            ) from None
        raise MalformedRequest("The body is not valid JSON: not UTF-8 JSON.") from None


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


def connections() -> Connections:
    """The running gateway's connections."""
    return current_app.extensions["order_gateway"]



REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,128}$"},
              "description": "echoed on the reply; a new one is made when absent"}
