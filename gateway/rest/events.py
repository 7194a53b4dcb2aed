"""GET /events, GET /events/<id>, POST /events/<id>/redeliver: what operators need to see and act on.

A caller sees the events of its connections only (an event's connection is its source's): lists are filtered in
the store's query, so `limit` counts what the caller may see, and another connection's event is a 404 like an
unknown id, so a reply never tells whether it exists. A `connection` filter outside the caller's connections
matches nothing: an empty list, as for a connection nobody configured.

A list is paged: at most `limit` events and at most `[events] max_list_bytes` bytes (a page holds one event at
least, so a single event larger than that is the only thing its page holds); `next` is the path of the following
page (`before` the page's last event), null on the last one, and `truncated` says the byte bound ended the page.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, make_response, url_for

from gateway.canonical.events import ALL_EVENT_TYPES
from gateway.errors import EventNotFound
from gateway.events.store import event_connection
from gateway.rest.auth import Policy, current_caller, listed_connections
from gateway.rest.common import IDEMPOTENCY_KEY, REQUEST_ID, TRACE_CONTEXT, iso_time
from gateway.rest.endpoints import endpoint
from gateway.rest.queries import DELIVERY_STATES, EventListQuery, NoQuery
from gateway.rest.schemas import EventListSchema, RedeliveryReplySchema, StoredEventSchema
from gateway.runtime import current_gateway

blueprint = Blueprint("events", __name__)
log = logging.getLogger("gateway.events")


def _service():
    return current_gateway().events


def with_iso_times(stored: dict) -> dict:
    """A stored event with its delivery times as ISO 8601 (UTC), like the event's own occurred_at."""
    return {
        "event": stored["event"],
        "received_at": iso_time(stored["received_at"]),
        "deliveries": [
            {**delivery,
             "next_attempt_at": iso_time(delivery["next_attempt_at"]),
             "delivered_at": iso_time(delivery["delivered_at"]),
             "history": [{**entry, "at": iso_time(entry["at"])} for entry in delivery["history"]]}
            for delivery in stored["deliveries"]
        ],
    }


def visible_event(event_id: str) -> dict:
    """The stored event, if the caller may see it; else 404, whether or not it exists."""
    stored = _service().store.get_event(event_id)
    # The caller is asked whether or not the event exists: an unknown id and a hidden one take the same path.
    if not current_caller().sees(event_connection(stored["event"]) if stored else None) or stored is None:
        raise EventNotFound(f"No event {event_id!r}.")
    return stored


#: what the compact JSON of a reply is written with (Flask's, outside debug mode)
COMPACT = (",", ":")


def event_page(found: list[dict], query: dict, max_bytes: int) -> Response:
    """The reply to GET /events: of `found` (up to limit + 1 events, newest first), as many as `limit` and
    `max_bytes` allow, one at least, with the path of the next page when there are more."""
    limit, dumps = query["limit"], current_app.json.dumps
    filters = {name: query[name] for name in ("order_id", "type", "state", "connection") if name in query}
    base = url_for("events.list_events")

    def envelope(count: int) -> dict:
        """The reply of the first `count` events, without them."""
        cursor = {"before": found[count - 1]["event"]["id"]} if count < len(found) else None
        return {"count": count, "events": [],
                "next": f"{base}?{urlencode({**filters, 'limit': limit, **cursor})}" if cursor else None,
                "truncated": count < min(len(found), limit)}

    # A page stops where the next event would take the reply (its envelope, the events with a comma between each
    # two, the final newline) past max_bytes.
    page: list[str] = []
    events_size = 0
    for stored in found[:limit]:
        item = dumps(with_iso_times(stored), separators=COMPACT)
        size = events_size + len(item.encode()) + bool(page)
        if page and len(dumps(envelope(len(page) + 1), separators=COMPACT).encode()) + size + 1 > max_bytes:
            break
        page.append(item)
        events_size = size
    # The events go in as they were measured (the envelope's only empty list is "events").
    body = dumps(envelope(len(page)), separators=COMPACT).replace('"events":[]', f'"events":[{",".join(page)}]', 1)
    return current_app.response_class(body + "\n", mimetype=current_app.json.mimetype)


EVENT_ID = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
HIDDEN = "no such event (an event of a connection the caller may not use is not one it can see)"


@blueprint.get("/events")
@endpoint(
    "get", "/events", "List stored events", tags=["events"], policy=Policy(("events:read",), connection_data=True),
    query=EventListQuery, reply=EventListSchema,
    replies={200: "events of the caller's connections, newest first, at most `limit` and at most `[events] "
                  "max_list_bytes` bytes; `next` is the rest"},
    parameters=[
        {"name": "order_id", "in": "query", "schema": {"type": "string"}, "description": "backend id or number"},
        {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(ALL_EVENT_TYPES)}},
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(DELIVERY_STATES)},
         "description": "events with at least one delivery in this state"},
        {"name": "connection", "in": "query", "schema": {"type": "string"},
         "description": "the events of this connection (one the caller may not use matches nothing)"},
        {"name": "before", "in": "query", "schema": {"type": "string"},
         "description": "events stored before this one: the cursor of a reply's `next` (an id the caller cannot "
                        "see matches nothing)"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        REQUEST_ID,
    ],
    problems={422: "an invalid filter, or an unknown query parameter", 500: "the gateway failed"},
)
def list_events(query: dict):
    """Stored events of the caller's connections, newest first, filtered by order, type, delivery state and
    connection, a page at a time."""
    service = _service()
    # One more than the page holds: whether there is a next page.
    found = service.store.list_events(order_id=query.get("order_id"), type=query.get("type"),
                                      state=query.get("state"), connections=listed_connections(query.get("connection")),
                                      before=query.get("before"), limit=query["limit"] + 1)
    return event_page(found, query, service.settings.events.max_list_bytes)


@blueprint.get("/events/<event_id>")
@endpoint("get", "/events/{event_id}", "Show one event with its delivery attempts", tags=["events"],
          policy=Policy(("events:read",), connection_data=True), query=NoQuery, reply=StoredEventSchema,
          replies={200: "the event"}, parameters=[EVENT_ID, REQUEST_ID],
          problems={404: HIDDEN, 422: "an unknown query parameter", 500: "the gateway failed"})
def show_event(event_id: str, query: dict):
    """One event of the caller's connections with every delivery and its attempts."""
    return jsonify(with_iso_times(visible_event(event_id)))


@blueprint.post("/events/<event_id>/redeliver")
@endpoint("post", "/events/{event_id}/redeliver", "Deliver an event again", tags=["events"],
          policy=Policy(("events:redeliver",), connection_data=True), query=NoQuery, reply=RedeliveryReplySchema,
          replies={202: "queued again"}, idempotent=True,
          parameters=[EVENT_ID, IDEMPOTENCY_KEY, REQUEST_ID, *TRACE_CONTEXT],
          problems={404: HIDDEN, 409: "a redelivery with the same Idempotency-Key is still being served",
                    422: "an unknown query parameter, or the Idempotency-Key was used for another request",
                    500: "the gateway failed"})
def redeliver_event(event_id: str, query: dict, listener: object):
    """Send an event of the caller's connections to its subscribers again (dead or delivered alike), in order with
    its order's other events (no backend call: `listener` has nothing to be told)."""
    return redeliver(event_id), 202


def redelivery_request(event_id: str) -> tuple[str, str]:
    """(method, path) of the API's redelivery of this event: the request the console's redeliver button stands
    for, so that an Idempotency-Key means the same whichever sent it."""
    return "POST", f"/events/{event_id}/redeliver"


def queue_redelivery(event_id: str) -> Response:
    """Make every delivery of the event pending again and wake the worker: the 202 reply (404 when unknown, or of a
    connection the caller may not use), as the API's redelivery answers it."""
    return make_response(jsonify(_REDELIVERY_REPLY.dump(redeliver(event_id))), 202)


_REDELIVERY_REPLY = RedeliveryReplySchema()


def redeliver(event_id: str) -> dict:
    """Make every delivery of the event pending again and wake the worker: what the 202 reply says (404 when
    unknown, or of a connection the caller may not use)."""
    visible_event(event_id)
    service = _service()
    caller = current_caller().name
    streams = service.store.redeliver(event_id, requested_by=caller)
    if streams is None:
        raise EventNotFound(f"No event {event_id!r}.")
    for subscriber, order_key in streams:
        service.queue.nudge(subscriber, order_key)
    log.info("event %s redelivered at the request of caller %s", event_id, caller)
    return {"id": event_id, "redelivering_to": sorted({subscriber for subscriber, _ in streams}),
            "requested_by": caller}
