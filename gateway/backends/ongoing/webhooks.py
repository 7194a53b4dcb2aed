"""Ongoing WMS order webhooks (created, status changed, picked) read into canonical order events.

The payload is WebhookOrderPayload of the vendor's webhook page. Unknown fields are tolerated and kept under
`raw`, since Ongoing adds fields over time. Ongoing's timestamps carry no offset; the connection's webhook
time zone says which one they are in. Template names are configured per webhook in Ongoing's UI, so their
mapping to event types is a setting with these defaults.

A webhook is one event of one connection: its dedupe key is `<connection>:<system>:<webhookEventId>`, so a
webhookEventId sent with another connection's credentials never hides this connection's event. The timestamp says
when the event happened: one older than the connection's max_age_hours is refused as a replay (Ongoing retries for
a day), and one further ahead of the gateway's clock than max_ahead_minutes as impossible (it is read in the
configured time zone, so a wrong zone shows here rather than as events dated hours off).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from gateway.canonical.events import ORDER_CREATED, ORDER_PICKED, ORDER_STATUS_CHANGED, OrderEvent
from gateway.canonical.schema import BoundedList

#: tracking entries, parcels and goods owner classes one webhook may list
MAX_WEBHOOK_LIST_ITEMS = 1000
DEFAULT_EVENT_TYPES = {
    "OrderCreated": ORDER_CREATED,
    "OrderStatusChanged": ORDER_STATUS_CHANGED,
    "OrderPicked": ORDER_PICKED,
}


class OngoingTimestamp(fields.String):
    """Ongoing's `2023-01-01T12:00:00.0000000`: ISO 8601 with up to 7 fractional digits, usually no offset."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        text = super()._deserialize(value, attr, data, **kwargs)
        head, dot, fraction = text.partition(".")
        if dot:  # Python reads at most 6 fractional digits; keep the offset that may follow them
            digits = "".join(c for c in fraction if c in "0123456789")
            text = f"{head}.{digits[:6]}{fraction[len(digits):]}"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError("Not a valid ISO 8601 timestamp.") from None


class _Lenient(Schema):
    class Meta:
        unknown = INCLUDE


class ByUserSchema(_Lenient):
    """ByUserInfo."""

    userId = fields.Integer(strict=True, allow_none=True)  # the vendor's camelCase names


class ByComputerSchema(_Lenient):
    """ByComputerInfo."""

    computerId = fields.Integer(strict=True, allow_none=True)
    computerName = fields.String(allow_none=True)


class OrderStatusSchema(_Lenient):
    """OrderStatus."""

    number = fields.Integer(strict=True, required=True)


class GoodsOwnerClassSchema(_Lenient):
    """GoodsOwnerClass."""

    id = fields.Integer(strict=True, allow_none=True)
    code = fields.String(allow_none=True)
    name = fields.String(allow_none=True)


class OrderTrackingSchema(_Lenient):
    """OrderTracking."""

    trackingUrl = fields.String(allow_none=True)
    waybill = fields.String(allow_none=True)
    isReturn = fields.Boolean(allow_none=True)


class ParcelTrackingSchema(_Lenient):
    """ParcelTracking."""

    trackingUrl = fields.String(allow_none=True)


class ParcelSchema(_Lenient):
    """Parcel."""

    id = fields.Integer(strict=True, allow_none=True)
    parcelNumber = fields.String(allow_none=True)
    isReturnParcel = fields.Boolean(allow_none=True)
    tracking = fields.Nested(ParcelTrackingSchema, allow_none=True)


class WebhookOrderPayloadSchema(_Lenient):
    """WebhookOrderPayload; the fields that identify and date the event are required."""

    webhookOrdersId = fields.Integer(strict=True, allow_none=True)
    webhookEventId = fields.Integer(strict=True, required=True)
    system = fields.String(required=True, validate=validate.Length(min=1))
    timestamp = OngoingTimestamp(required=True)
    orderId = fields.Integer(strict=True, required=True)
    orderNumber = fields.String(allow_none=True)
    goodsOwnerId = fields.Integer(strict=True, allow_none=True)
    path = fields.String(allow_none=True)
    byUser = fields.Nested(ByUserSchema, allow_none=True)
    byComputer = fields.Nested(ByComputerSchema, allow_none=True)
    orderStatus = fields.Nested(OrderStatusSchema, allow_none=True)
    currentShipmentId = fields.Integer(strict=True, allow_none=True)
    webhookTemplate = fields.String(required=True, validate=validate.Length(min=1))
    goodsOwnerName = fields.String(allow_none=True)
    goodsOwnerClasses = BoundedList(fields.Nested(GoodsOwnerClassSchema), max_items=MAX_WEBHOOK_LIST_ITEMS,
                                    allow_none=True)
    tracking = BoundedList(fields.Nested(OrderTrackingSchema), max_items=MAX_WEBHOOK_LIST_ITEMS, allow_none=True)
    parcels = BoundedList(fields.Nested(ParcelSchema), max_items=MAX_WEBHOOK_LIST_ITEMS, allow_none=True)


_PAYLOAD_SCHEMA = WebhookOrderPayloadSchema()


def check_timestamp(occurred: datetime, *, now: datetime, max_age: timedelta, max_ahead: timedelta,
                    timezone: str) -> None:
    """Refuse (ValidationError on `timestamp`) an event older than max_age (a replay) or further ahead of `now`
    than max_ahead."""
    if occurred < now - max_age:
        raise ValidationError({"timestamp": [
            f"The event happened {_hours(now - occurred)} ago, longer ago than the {_hours(max_age)} a webhook is "
            "accepted for (webhooks.max_age_hours): refused as a replay."
        ]})
    if occurred > now + max_ahead:
        raise ValidationError({"timestamp": [
            f"The event is dated {_hours(occurred - now)} ahead of the gateway's clock, more than the "
            f"{max_ahead.total_seconds() / 60:g} min allowed (webhooks.max_ahead_minutes); Ongoing's timestamps "
            f"carry no offset and are read in the connection's webhooks.timezone ({timezone})."
        ]})


def _hours(duration: timedelta) -> str:
    """A duration as hours with one decimal, e.g. "49.5 h"."""
    return f"{duration.total_seconds() / 3600:.1f} h"


def read_order_webhook(payload: Any, *, connection: str, event_types: Mapping[str, str], timezone: str,
                       status_names: Mapping[int, str], now: datetime | None = None,
                       max_age: timedelta = timedelta(hours=48),
                       max_ahead: timedelta = timedelta(hours=15)) -> OrderEvent:
    """Validate an Ongoing order webhook and turn it into a canonical OrderEvent; raises ValidationError.

    With `now` (an aware datetime), the timestamp must lie within max_age before it and max_ahead after it."""
    if not isinstance(payload, Mapping):
        raise ValidationError({"body": ["The body must be a JSON object."]})
    data = _PAYLOAD_SCHEMA.load(payload)
    template = data["webhookTemplate"]
    if template not in event_types:
        raise ValidationError({"webhookTemplate": [
            f"Unknown webhook template {template!r}; map it to an event type in the connection's "
            f"webhooks.event_types (known: {', '.join(sorted(event_types))})."
        ]})
    occurred = data["timestamp"]
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=ZoneInfo(timezone))
    if now is not None:
        check_timestamp(occurred, now=now, max_age=max_age, max_ahead=max_ahead, timezone=timezone)
    status = data.get("orderStatus") or {}
    code = status.get("number")
    user, computer = data.get("byUser") or {}, data.get("byComputer") or {}
    return OrderEvent(
        type=event_types[template],
        occurred_at=occurred.isoformat(),
        source={"backend": "ongoing", "connection": connection, "system": data["system"], "template": template},
        order={
            "backend_order_id": str(data["orderId"]),
            "order_number": data.get("orderNumber"),
            "status": None if code is None else {"code": code, "name": status_names.get(code)},
        },
        goods_owner={
            "id": data.get("goodsOwnerId"),
            "name": data.get("goodsOwnerName"),
            "classes": [{"id": c.get("id"), "code": c.get("code"), "name": c.get("name")}
                        for c in data.get("goodsOwnerClasses") or []],
        },
        tracking=[{"url": t.get("trackingUrl"), "waybill": t.get("waybill"), "is_return": bool(t.get("isReturn"))}
                  for t in data.get("tracking") or []],
        parcels=[{"id": p.get("id"), "parcel_number": p.get("parcelNumber"),
                  "is_return": bool(p.get("isReturnParcel")),
                  "tracking_url": (p.get("tracking") or {}).get("trackingUrl")}
                 for p in data.get("parcels") or []],
        actor={"user": {"id": user.get("userId")},
               "computer": {"id": computer.get("computerId"), "name": computer.get("computerName")}},
        raw=dict(payload),
        dedupe_key=f"{connection}:{data['system']}:{data['webhookEventId']}",
        order_key=f"{connection}:{data['orderId']}",
    )
