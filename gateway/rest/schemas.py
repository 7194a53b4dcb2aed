"""marshmallow schemas of the gateway's replies: what an endpoint's declaration dumps its view's result through,
and what the OpenAPI document says of it (the requests use the canonical schemas)."""

from __future__ import annotations

from marshmallow import Schema, fields

from gateway.canonical.events import ALL_EVENT_TYPES
from gateway.canonical.schema import OrderUpdateSchema


class BackendDetailsSchema(Schema):
    """What the backend said, when it answered."""

    connection = fields.String(required=True)
    code = fields.String(allow_none=True, required=True)
    message = fields.String(allow_none=True, required=True)


class ProblemSchema(Schema):
    """application/problem+json (RFC 9457), the one error shape of every endpoint."""

    type = fields.String(required=True, metadata={"example": "urn:order-gateway:problem:validation-failed"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "field path -> messages (validation errors)"})
    backend = fields.Nested(BackendDetailsSchema, metadata={"description": "present when the backend answered"})
    retry_after = fields.String(metadata={"description": "seconds to wait, when the backend said so"})
    errors_omitted = fields.Integer(metadata={"description": "how many further field paths `errors` does not list "
                                                             "(it lists at most 50)"})
    store = fields.String(metadata={"description": "the store that could not be used (store-unavailable): event "
                                                   "store, idempotency store, exchange journal, call locks, ..."})


def _operation() -> fields.String:
    return fields.String(required=True, attribute="planned.operation.name", metadata={
        "description": "the vendor call that carried the update (UpdateOrder, ProcessOrder, updateOrderStatus, ...)"})


class UpdateReplySchema(Schema):
    """The one success shape of every backend and operation (dumps gateway.rest.orders.OrderUpdated)."""

    order_id = fields.String(required=True, attribute="planned.update.order_id")
    connection = fields.String(required=True, attribute="connection.name")
    backend = fields.String(required=True, attribute="connection.kind")
    operation = _operation()
    updated = fields.Dict(required=True, attribute="planned.update.fields",
                          metadata={"description": "the canonical fields applied, as sent"})
    backend_order_id = fields.String(required=True, allow_none=True, attribute="outcome.backend_order_id")
    message = fields.String(required=True, attribute="outcome.message")
    request_id = fields.String(required=True)


class OutboundRequestSchema(Schema):
    """A request the gateway would send to the backend (credentials masked)."""

    method = fields.String(required=True)
    url = fields.String(required=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    body = fields.String(required=True)


class DryRunReplySchema(Schema):
    """What ?dry_run=true shows instead of sending (dumps gateway.rest.orders.OrderDryRun)."""

    order_id = fields.String(required=True, attribute="planned.update.order_id")
    connection = fields.String(required=True, attribute="connection.name")
    backend = fields.String(required=True, attribute="connection.kind")
    operation = _operation()
    dry_run = fields.Boolean(required=True)
    updated = fields.Dict(required=True, attribute="planned.update.fields")
    request = fields.Nested(OutboundRequestSchema, required=True)
    request_id = fields.String(required=True)


class BulkItemSchema(OrderUpdateSchema):
    """One item of a bulk update: the order's id and the fields of PATCH /orders/{order_id}."""

    class Meta(OrderUpdateSchema.Meta):
        exclude = ("connection",)

    order_id = fields.String(required=True, metadata={"description": "a string, or an integer id"})


class BulkRequestSchema(Schema):
    """PATCH /orders: one connection, many orders."""

    connection = fields.String(metadata={"description": "optional when the configuration names a default"})
    orders = fields.List(fields.Nested(BulkItemSchema), required=True)


class BulkResultSchema(Schema):
    """The outcome of one bulk item."""

    position = fields.Integer(required=True)
    order_id = fields.String(required=True, allow_none=True)
    status = fields.Integer(required=True, metadata={"description": "the item's HTTP-style status"})
    body = fields.Dict(required=True, metadata={"description": "the single-update success shape, or a problem"})


class BulkReplySchema(Schema):
    """Per-item outcomes of a bulk update."""

    connection = fields.String(required=True)
    backend = fields.String(required=True)
    dry_run = fields.Boolean()
    requests = fields.List(fields.Nested(OutboundRequestSchema))
    succeeded = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    results = fields.List(fields.Nested(BulkResultSchema), required=True)
    request_id = fields.String(required=True)


class WebhookAcceptedSchema(Schema):
    """A stored (202) or already known (200) webhook."""

    id = fields.String(required=True)
    type = fields.String(required=True)
    duplicate = fields.Boolean(required=True)
    subscribers = fields.List(fields.String(), required=True)


class OrderEventSchema(Schema):
    """The canonical order event subscribers receive."""

    id = fields.String(required=True)
    type = fields.String(required=True, metadata={"enum": list(ALL_EVENT_TYPES)})
    occurred_at = fields.String(required=True)
    source = fields.Dict(required=True)
    order = fields.Dict(required=True)
    goods_owner = fields.Dict(allow_none=True)
    tracking = fields.List(fields.Dict())
    parcels = fields.List(fields.Dict())
    actor = fields.Dict(allow_none=True)
    raw = fields.Dict(required=True)


class DeliveryAttemptSchema(Schema):
    """One attempt to deliver an event to a subscriber."""

    attempt = fields.Integer(required=True)
    at = fields.DateTime(required=True)
    outcome = fields.String(required=True)
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    requested_by = fields.String(allow_none=True, metadata={"description": "the caller who asked for a redelivery"})


class DeliverySchema(Schema):
    """An event's delivery to one subscriber."""

    subscriber = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["pending", "delivered", "dead"]})
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    history = fields.List(fields.Nested(DeliveryAttemptSchema), required=True)


class StoredEventSchema(Schema):
    """An event as stored, with every delivery."""

    event = fields.Nested(OrderEventSchema, required=True)
    received_at = fields.DateTime(required=True)
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True)


class EventListSchema(Schema):
    """Stored events, newest first, a page at a time."""

    events = fields.List(fields.Nested(StoredEventSchema), required=True)
    count = fields.Integer(required=True)
    next = fields.String(required=True, allow_none=True, metadata={
        "description": "the path of the next page (the same filters, `before` the last event of this one); null "
                       "on the last page"})
    truncated = fields.Boolean(required=True, metadata={
        "description": "true when `[events] max_list_bytes` ended the page before `limit` events"})


class RedeliveryReplySchema(Schema):
    """A redelivery under way."""

    id = fields.String(required=True)
    redelivering_to = fields.List(fields.String(), required=True)
    requested_by = fields.String(required=True, metadata={"description": "the caller who asked"})


def _timestamp(**options: object) -> fields.String:
    """A time as the job views show it: an ISO 8601 string in UTC."""
    return fields.String(**options, metadata={"format": "date-time"})


class UpdateAttemptSchema(Schema):
    """One attempt of an update job (or an operator's or caller's retry of it)."""

    at = _timestamp(required=True)
    outcome = fields.String(required=True, metadata={"enum": [
        "done", "refused", "unavailable", "outcome-unknown", "interrupted", "expired", "retry"]})
    status = fields.Integer(metadata={"description": "the HTTP-style status of what the attempt ended in"})
    code = fields.String(metadata={"description": "the backend's code, or the guard's that refused the call "
                                                  "(breaker-open, bulkhead-full, lock-timeout, rate-limited)"})
    error = fields.String(allow_none=True)
    exchange_id = fields.String(allow_none=True, metadata={"description": "the call in the exchange journal "
                                                                          "(GET /exchanges/{id})"})
    retry_after = fields.String(metadata={"description": "how long the backend (or a guard) asked to wait"})
    requested_by = fields.String(metadata={"description": "the caller who asked for a retry"})


class UpdateResultSchema(Schema):
    """What a final job ended in: the status and body the synchronous update would have answered."""

    status = fields.Integer(required=True)
    body = fields.Dict(required=True, metadata={"description": "the update's reply (a bulk job's: its items'), or "
                                                               "its problem document"})


class UpdateJobLinksSchema(Schema):
    """Where to go from a job."""

    self = fields.String(required=True)
    exchanges = fields.String(allow_none=True, metadata={"description": "the journal's exchanges of the request"})


class UpdateJobSchema(Schema):
    """An update job: an update accepted with Prefer: respond-async, sent by the event worker."""

    id = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["queued", "sending", "done", "failed", "dead"]})
    connection = fields.String(required=True)
    backend = fields.String(required=True)
    operation = fields.String(required=True)
    order_ids = fields.List(fields.String(), required=True)
    kind = fields.String(required=True, metadata={"enum": ["single", "bulk"], "description": "single: PATCH "
                         "/orders/{order_id}; bulk: one vendor call of PATCH /orders"})
    idempotent = fields.Boolean(required=True, metadata={"description": "whether sending it twice is harmless (a "
                                "call whose answer was lost is then sent again)"})
    caller = fields.String(required=True)
    request_id = fields.String(required=True)
    accepted_at = _timestamp(required=True)
    updated_at = _timestamp(required=True)
    next_attempt_at = _timestamp(allow_none=True, required=True)
    finished_at = _timestamp(allow_none=True, required=True)
    attempt_count = fields.Integer(required=True)
    attempts = fields.List(fields.Nested(UpdateAttemptSchema), required=True,
                           metadata={"description": "the newest 50 attempts"})
    result = fields.Nested(UpdateResultSchema, allow_none=True, required=True)
    links = fields.Nested(UpdateJobLinksSchema, required=True)


class UpdateJobListSchema(Schema):
    """Update jobs, newest accepted first, a page at a time."""

    updates = fields.List(fields.Nested(UpdateJobSchema), required=True)
    count = fields.Integer(required=True)
    next = fields.String(required=True, allow_none=True, metadata={"description": "the path of the next page; null "
                                                                                  "on the last"})


class BulkQueuedItemSchema(Schema):
    """One item of an asynchronous bulk update: queued in a job (202), or refused on its own (4xx, a problem)."""

    position = fields.Integer(required=True)
    order_id = fields.String(required=True, allow_none=True)
    status = fields.Integer(required=True)
    job_id = fields.String(metadata={"description": "the job the item travels in"})
    body = fields.Dict(metadata={"description": "the problem of an item refused before anything was queued"})


class BulkQueuedSchema(Schema):
    """PATCH /orders with Prefer: respond-async: one job per vendor call, and each item's fate."""

    connection = fields.String(required=True)
    backend = fields.String(required=True)
    queued = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    jobs = fields.List(fields.Nested(UpdateJobSchema), required=True)
    results = fields.List(fields.Nested(BulkQueuedItemSchema), required=True)
    request_id = fields.String(required=True)
