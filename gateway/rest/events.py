"""GET /events, GET /events/<id>, POST /events/<id>/redeliver: what operators need to see and act on."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, make_response

from gateway.canonical.events import EVENT_TYPES
from gateway.errors import EventNotFound
from gateway.rest.auth import current_caller
from gateway.rest.common import IDEMPOTENCY_KEY, REQUEST_ID, TRACE_CONTEXT
from gateway.rest.idempotency import idempotent
from gateway.rest.openapi import documented
from gateway.rest.queries import DELIVERY_STATES, EventListQuery, NoQuery, read_query
from gateway.rest.schemas import EventListSchema, RedeliveryReplySchema, StoredEventSchema

blueprint = Blueprint("events", __name__)
log = logging.getLogger("gateway.events")


def _service():
    return current_app.extensions["order_events"]


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def with_iso_times(stored: dict) -> dict:
    """A stored event with its delivery times as ISO 8601 (UTC), like the event's own occurred_at."""
    return {
        "event": stored["event"],
        "received_at": _iso(stored["received_at"]),
        "deliveries": [
            {**delivery,
             "next_attempt_at": _iso(delivery["next_attempt_at"]),
             "delivered_at": _iso(delivery["delivered_at"]),
             "history": [{**entry, "at": _iso(entry["at"])} for entry in delivery["history"]]}
            for delivery in stored["deliveries"]
        ],
    }


EVENT_ID = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}


@blueprint.get("/events")
@documented(
    "/events", "get", "List stored events", tags=["events"],
    parameters=[
        {"name": "order_id", "in": "query", "schema": {"type": "string"}, "description": "backend id or number"},
        {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(EVENT_TYPES)}},
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(DELIVERY_STATES)},
         "description": "events with at least one delivery in this state"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        REQUEST_ID,
    ],
    replies={200: ("events, newest first", EventListSchema)},
    problems={422: "an invalid filter, or an unknown query parameter", 500: "the gateway failed"},
)
def list_events():
    """Stored events, newest first, filtered by order, type and delivery state."""
    query = read_query(EventListQuery)
    events = _service().store.list_events(order_id=query.get("order_id"), type=query.get("type"),
                                          state=query.get("state"), limit=query["limit"])
    return jsonify({"events": [with_iso_times(event) for event in events], "count": len(events)})


@blueprint.get("/events/<event_id>")
@documented("/events/{event_id}", "get", "Show one event with its delivery attempts", tags=["events"],
            parameters=[EVENT_ID, REQUEST_ID], replies={200: ("the event", StoredEventSchema)},
            problems={404: "no such event", 422: "an unknown query parameter", 500: "the gateway failed"})
def show_event(event_id: str):
    """One event with every delivery and its attempts."""
    read_query(NoQuery)
    event = _service().store.get_event(event_id)
    if event is None:
        raise EventNotFound(f"No event {event_id!r}.")
    return jsonify(with_iso_times(event))


@blueprint.post("/events/<event_id>/redeliver")
@documented("/events/{event_id}/redeliver", "post", "Deliver an event again", tags=["events"],
            parameters=[EVENT_ID, IDEMPOTENCY_KEY, REQUEST_ID, *TRACE_CONTEXT],
            replies={202: ("queued again", RedeliveryReplySchema)},
            problems={404: "no such event", 409: "a redelivery with the same Idempotency-Key is still being served",
                      422: "an unknown query parameter, or the Idempotency-Key was used for another request",
                      500: "the gateway failed"})
@idempotent
def redeliver_event(event_id: str):
    """Send an event to its subscribers again (dead or delivered alike), in order with its order's other events."""
    read_query(NoQuery)
    return queue_redelivery(event_id)


def redelivery_request(event_id: str) -> tuple[str, str]:
    """(method, path) of the API's redelivery of this event: the request the console's redeliver button stands
    for, so that an Idempotency-Key means the same whichever sent it."""
    return "POST", f"/events/{event_id}/redeliver"


def queue_redelivery(event_id: str) -> Response:
    """Make every delivery of the event pending again and wake the worker: the 202 reply (404 when unknown)."""
    service = _service()
    caller = current_caller().name
    streams = service.store.redeliver(event_id, requested_by=caller)
    if streams is None:
        raise EventNotFound(f"No event {event_id!r}.")
    for subscriber, order_key in streams:
        service.queue.nudge(subscriber, order_key)
    log.info("event %s redelivered at the request of caller %s", event_id, caller)
    return make_response(jsonify({"id": event_id, "redelivering_to": sorted({subscriber for subscriber, _ in streams}),
                                  "requested_by": caller}), 202)
