"""Ongoing's WebhookOrderPayload (specs/004), written for one order event with the spec's camelCase members."""

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import quote

from sandbox.ongoing.model import ORDER_CREATED, ORDER_PICKED, ORDER_STATUS_CHANGED, OrderEvent

# The id of the webhook configured for each trigger; a real system numbers its webhooks as they are set up.
WEBHOOK_ORDERS_IDS: Mapping[str, int] = MappingProxyType({ORDER_CREATED: 1, ORDER_STATUS_CHANGED: 2, ORDER_PICKED: 3})
# Ongoing's real template names are not public; these are the sandbox's own.
DEFAULT_WEBHOOK_TEMPLATES: Mapping[str, str] = MappingProxyType(
    {ORDER_CREATED: "OrderCreated", ORDER_STATUS_CHANGED: "OrderStatusChanged", ORDER_PICKED: "OrderPicked"}
)
TRACKING_URL = "https://tracking.sandbox.invalid/{waybill}"
ORDER_PATH = "/api/v1/orders/{order_id}"
COMPUTER_NAME = "sandbox"


def format_ongoing_timestamp(moment: datetime) -> str:
    """A moment in UTC as Ongoing writes it: seven fractional digits (100 ns ticks) and no offset."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond * 10:07d}"


def _tracking_entry(waybill: str, is_return: bool) -> dict:
    """One OrderTracking: the waybill and where to follow it."""
    return {
        "trackingUrl": TRACKING_URL.format(waybill=quote(waybill, safe="")),
        "waybill": waybill,
        "isReturn": is_return,
    }


def render_order_webhook_payload(event: OrderEvent, system_name: str, templates: Mapping[str, str]) -> dict:
    """The WebhookOrderPayload Ongoing delivers for `event`, its members in the spec's order."""
    order = event.order
    tracking = []
    if order.waybill:
        tracking.append(_tracking_entry(order.waybill, is_return=False))
    if order.return_waybill:
        tracking.append(_tracking_entry(order.return_waybill, is_return=True))
    return {
        "webhookOrdersId": WEBHOOK_ORDERS_IDS[event.trigger],
        "webhookEventId": event.event_id,
        "system": system_name,
        "timestamp": format_ongoing_timestamp(event.occurred_at),
        "orderId": order.system_id,
        "orderNumber": order.order_number,
        "goodsOwnerId": event.goods_owner.id,
        "path": ORDER_PATH.format(order_id=order.system_id),
        "byUser": {"userId": 0},
        "byComputer": {"computerId": 0, "computerName": COMPUTER_NAME},
        "orderStatus": {"number": order.status},
        "currentShipmentId": None,
        "webhookTemplate": templates[event.trigger],
        "goodsOwnerName": event.goods_owner.name,
        "goodsOwnerClasses": [],
        "tracking": tracking,
        "parcels": [],
    }
