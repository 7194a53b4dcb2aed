"""POST /webhooks/<backend>/<connection>: a backend's order webhooks, authenticated, stored before the answer."""

from __future__ import annotations

import base64
import hmac
import json
import logging

from flask import Blueprint, current_app, request

from gateway import logs, metrics, tracing
from gateway.backends import BACKENDS
from gateway.bookkeeping import log_failure
from gateway.errors import GatewayError, PayloadTooLarge, StoreUnavailable, Unauthorized, WebhookNotFound
from gateway.rest.auth import OPEN, Policy
from gateway.rest.common import REQUEST_ID, TRACE_CONTEXT, connections
from gateway.rest.endpoints import Arguments, endpoint
from gateway.rest.queries import NoQuery
from gateway.rest.schemas import WebhookAcceptedSchema
from gateway.runtime import current_gateway

blueprint = Blueprint("webhooks", __name__)
#: the backends that send webhooks, and the payload schema of each, for the API's documentation
WEBHOOK_BACKENDS = {kind: backend.webhook_payload_schema for kind, backend in BACKENDS.items()
                    if backend.webhook_payload_schema is not None}
log = logging.getLogger("gateway.webhooks")


def _same(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so the time taken says nothing about the secret."""
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                     expected.encode("utf-8"))


def basic_credentials() -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, or None when there is none or it is garbled.

    Read here rather than by Werkzeug, so a header of raw non-ASCII bytes or bad base64 is "no credentials"
    (401), never an exception.
    """
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip().encode("ascii"), validate=True).decode("utf-8")
    except (ValueError, UnicodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def is_authenticated(webhooks: dict) -> bool:
    """Whether the request carries the credentials configured for this connection's webhooks."""
    if webhooks["auth"] == "basic":
        credentials = basic_credentials()
        if credentials is None:
            return False
        # Both compared, always, so a wrong user name takes as long as a wrong password.
        user_ok = _same(credentials[0], webhooks["username"])
        password_ok = _same(credentials[1], webhooks["password"].reveal())
        return user_ok and password_ok
    return _same(request.headers.get(webhooks["header"]), webhooks["token"].reveal())


@blueprint.post("/webhooks/<kind>/<connection>")
@endpoint(
    "post", "/webhooks/{backend}/{connection}", "Receive a backend's order webhook", tags=["events"],
    # a backend's webhook proves itself with its connection's own credentials: there is no caller to scope
    policy=Policy(OPEN, connection_data=False),
    # nothing of a request is read before its credentials are checked: the view loads query and body after
    query=NoQuery, body={"oneOf": list(WEBHOOK_BACKENDS.values())}, deferred=True,
    reply=WebhookAcceptedSchema, replies={202: "stored and queued for the subscribers",
                                          200: "already received (a retry): acknowledged, not stored again"},
    parameters=[{"name": "backend", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": sorted(WEBHOOK_BACKENDS)}},
                {"name": "connection", "in": "path", "required": True, "schema": {"type": "string"}}, REQUEST_ID,
                *TRACE_CONTEXT],
    security=[{"webhookBasic": []}, {"webhookToken": []}],
    problems={400: "the body is not JSON, or nested too deeply", 401: "missing or wrong webhook credentials",
              404: "no such webhook receiver",
              413: "the body is too large, or the webhook as compact JSON is larger than an event keeps "
                   "([events] max_raw_bytes); nothing is stored",
              415: "the body is not JSON",
              422: "the payload is invalid, or its timestamp is older than the connection accepts (a replay) or "
                   "too far ahead",
              500: "the gateway failed", 503: "the event could not be stored"},
)
def receive_webhook(kind: str, connection: str, arguments: Arguments):
    """Authenticate, validate, store (deduplicated) and queue one webhook; 202 new, 200 already known.

    Authentication is the connection's: HTTP Basic or a static token header. The event is stored before the
    answer; retries of the same event (same connection, system and webhookEventId) are acknowledged and not
    stored again.
    """
    receiver = connections().by_name.get(connection)
    webhooks = receiver.settings.webhooks if receiver is not None and receiver.kind == kind else None
    if webhooks is None:  # counted under one label: the path's name is the sender's to choose
        metrics.webhooks_received.labels("unknown", "not_found").inc()
        raise WebhookNotFound(f"No connection {connection!r} of backend {kind!r} receives webhooks.")
    try:
        reply, created = _store_webhook(receiver, webhooks, connection, arguments)
    except StoreUnavailable:
        metrics.webhooks_received.labels(connection, "not_stored").inc()
        raise
    except Unauthorized:
        metrics.webhooks_received.labels(connection, "unauthorized").inc()
        raise
    except GatewayError:
        metrics.webhooks_received.labels(connection, "rejected").inc()
        raise
    metrics.webhooks_received.labels(connection, "stored" if created else "duplicate").inc()
    return reply, 202 if created else 200


def check_raw_size(raw: dict, limit: int) -> None:
    """Refuse (413) a webhook whose payload, kept as the event's `raw`, is more than `limit` bytes of compact JSON."""
    size = len(json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(f"The webhook is {size} bytes as compact JSON; an event keeps at most {limit} "
                              "([events] max_raw_bytes). Nothing was stored.")


def _store_webhook(receiver, webhooks: dict, connection: str, arguments: Arguments):
    """Authenticate, validate, store and queue one webhook: its reply body, and whether it was new."""
    if not is_authenticated(webhooks):
        challenge = f'Basic realm="order gateway webhooks ({connection})"' if webhooks["auth"] == "basic" else None
        raise Unauthorized("The webhook's credentials are missing or wrong.", challenge=challenge)
    arguments.query()
    event = receiver.backend.read_webhook(arguments.body())
    check_raw_size(event.raw, current_app.config["GATEWAY_SETTINGS"].events.max_raw_bytes)
    service = current_gateway().events
    subscribers = service.subscribers_for(event.type)
    try:
        # the deliveries continue this request's trace: their spans are children of its span
        event_id, created = service.add_event(event.to_document(), dedupe_key=event.dedupe_key,
                                              order_key=event.order_key, subscribers=subscribers,
                                              trace_context=tracing.outbound_headers())
    except Exception as error:
        log_failure(error, "could not store a webhook of connection %s", connection, logger=log)
        raise StoreUnavailable("The event could not be stored; send it again later.", store="event store") from None
    logs.note(connection=connection, event_id=event_id)
    return {"id": event_id, "type": event.type, "duplicate": not created,
            "subscribers": subscribers if created else []}, created
