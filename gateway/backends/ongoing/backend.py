"""The Ongoing WMS backend: canonical updates rendered into SOAP 1.1 UpdateOrder, replies normalized.

Wire facts (reference/ongoing): namespace http://ongoingsystems.se/WSI, SOAPAction
"http://ongoingsystems.se/WSI/UpdateOrder" with the quotes, children GoodsOwnerCode, UserName, Password,
updateOrder; a SystemId travels in <OrderId>. Ongoing answers refusals as Success=false with a free-text
Message; which messages mean "not found" or "state conflict" is configured per connection, since the vendor
does not document them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from lxml import etree
from marshmallow import ValidationError, fields, validate, validates

from gateway import ns
from gateway.backends.base import Backend
from gateway.backends.ongoing.webhooks import DEFAULT_EVENT_TYPES, WebhookOrderPayloadSchema, read_order_webhook
from gateway.canonical import OrderUpdate, UpdateOutcome, WayOfDelivery, flatten_errors
from gateway.canonical.events import OrderEvent
from gateway.config import ConnectionSchema, ConnectionSettings, RegexList
from gateway.errors import (
    BackendFailure,
    TranslationError,
    ValidationFailed,
)
from gateway.safexml import load_xsd, parse_trusted_template
from gateway.soap import unwrap_soap_reply
from gateway.transport import BackendReply, OutboundRequest

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "update_order.xml"
XSD_PATH = "ongoing/update_order.xsd"
INT32_MAX = 2**31 - 1

#: canonical id_type -> Ongoing's OrderIdentificationType and the element that carries the value
ID_TYPES = {
    "order_number": ("GoodsOwnerOrderNumber", "GoodsOwnerOrderNumber"),
    "order_id": ("GoodsOwnerOrderId", "GoodsOwnerOrderId"),
    "system_id": ("SystemId", "OrderId"),
}

#: canonical field -> (update block, value element), in wire order
UPDATE_BLOCKS = {
    "status": ("UpdateOrderStatus", "OrderStatus"),
    "delivery_date": ("UpdateOrderDeliveryDate", "DeliveryDate"),
    "new_order_number": ("UpdateOrderGoodsOwnerOrderNumber", "GoodsOwnerOrderNumber"),
    "waybill": ("UpdateOrderWaybill", "Waybill"),
    "transporter_order_number": ("UpdateOrderTransporterOrderNumber", "UpdateOrderTransporterOrderNumber"),
    "printed_at": ("UpdateOrderPrintedTime", "PrintedTime"),
    "shipped_at": ("UpdateOrderShippedTime", "ShippedTime"),
    "picking_priority": ("UpdatePickingPriority", "PickingPriority"),
    "warehouse_instruction": ("UpdateOrderWarehouseInstruction", "WarehouseInstruction"),
    "return_waybill": ("UpdateOrderReturnWaybill", "ReturnWaybill"),
    "service_point_code": ("UpdateOrderServicePointCode", "ServicePointCode"),
    "way_of_delivery": ("UpdateOrderWayOfDeliveryType", None),
}

DEFAULT_NOT_FOUND_PATTERNS = [r"^No order found with\b"]
DEFAULT_CONFLICT_PATTERNS = [
    r"not allowed if the order has allocated but not picked goods",
    r"is already in use",
]


def _q(localname: str) -> str:
    return f"{{{ns.ONGOING_WSI}}}{localname}"


class OngoingSettingsSchema(ConnectionSchema):
    """Settings of a connection of kind `ongoing`."""

    goods_owner_code = fields.String(required=True, validate=validate.Length(min=1, max=400))
    soap_action = fields.String(load_default=f'"{ns.ONGOING_WSI}/UpdateOrder"')
    order_not_found_patterns = RegexList(defaults=DEFAULT_NOT_FOUND_PATTERNS)
    order_conflict_patterns = RegexList(defaults=DEFAULT_CONFLICT_PATTERNS)

    @validates("username")
    def check_username(self, value: str, **_: Any) -> None:
        """Ongoing's UserName is a required str(50)."""
        if not 1 <= len(value) <= 50:
            raise ValidationError("Ongoing needs a username of 1 to 50 characters.")

    @validates("status_map")
    def check_status_codes(self, value: dict, **_: Any) -> None:
        """Ongoing status codes are integers."""
        for name, code in value.items():
            if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= INT32_MAX:
                raise ValidationError(f"status {name!r}: Ongoing status codes are integers, got {code!r}.")


@functools.cache
def _update_order_template() -> tuple[etree._Element, tuple[tuple[str, etree._Element], ...]]:
    """The template split once into the envelope without update blocks, and each block by canonical field.

    Rendering then copies the small skeleton and only the blocks a request uses, in the template's order.
    """
    skeleton = parse_trusted_template(TEMPLATE_PATH)
    body = skeleton.find(f"{{{ns.SOAP11_ENVELOPE}}}Body/{_q('UpdateOrder')}/{_q('updateOrder')}")
    field_of_block = {block: name for name, (block, _) in UPDATE_BLOCKS.items()}
    blocks = []
    for block in list(body)[1:]:
        body.remove(block)
        blocks.append((field_of_block[etree.QName(block).localname], block))
    return skeleton, tuple(blocks)


def _as_wire_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class OngoingBackend(Backend):
    """Ongoing WMS over SOAP: UpdateOrder."""

    kind: ClassVar[str] = "ongoing"
    display_name: ClassVar[str] = "Ongoing WMS"
    settings_schema = OngoingSettingsSchema
    id_types: ClassVar = {
        "order_number": "GoodsOwnerOrderNumber (default)",
        "order_id": "GoodsOwnerOrderId",
        "system_id": "SystemId, Ongoing's internal integer id",
    }
    supported_fields: ClassVar = frozenset({"status", "status_code", *UPDATE_BLOCKS})
    example_updates: ClassVar = {
        "release the order": {"status": "released"},
        "waybill and way of delivery": {"waybill": "00340434161094042557",
                                        "way_of_delivery": {"code": "DHL-PARCEL", "create_if_missing": False}},
        "by SystemId, with a warehouse-specific status code": {"id_type": "system_id", "status_code": 425},
        "dates and instructions": {"delivery_date": "2026-12-01", "printed_at": "2026-11-23T10:15:00+01:00",
                                   "warehouse_instruction": "Fragile", "picking_priority": 5},
    }
    default_status_map: ClassVar = {
        "open": 200, "released": 300, "allocated": 320, "picked": 400,
        "sent": 450, "collected": 500, "returned": 800, "canceled": 1000,
    }
    refused_statuses: ClassVar = {
        "canceled": "Ongoing's UpdateOrder must not cancel an order; cancel it with ProcessOrder "
                    "(OrderOperation Remove) instead.",
    }
    # UpdateOrder carries one order, and Ongoing wants one goods owner's calls made one after another.
    orders_per_call: ClassVar = 1
    default_webhook_event_types: ClassVar = DEFAULT_EVENT_TYPES
    webhook_payload_schema: ClassVar = WebhookOrderPayloadSchema

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        # Compiled once per process, at start-up rather than on the first request.
        self.template = _update_order_template()
        self.schema = load_xsd(XSD_PATH)

    @classmethod
    def check_settings(cls, settings: ConnectionSettings) -> tuple[str, str] | None:
        """Ongoing needs a password of at most 50 characters."""
        if settings.password is None or not 1 <= len(settings.password.reveal()) <= 50:
            return "password", "Ongoing needs a password of 1 to 50 characters."
        return None

    def read_webhook(self, payload: Any) -> OrderEvent:
        """Ongoing's order webhooks (created, status changed, picked) as canonical events."""
        try:
            return read_order_webhook(
                payload, connection=self.name, event_types=self.webhook_event_types,
                timezone=(self.settings.webhooks or {}).get("timezone", "UTC"), status_names=self.status_names,
            )
        except ValidationError as error:
            raise ValidationFailed(flatten_errors(error.messages)) from None

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """The order id must fit its identification type; the canceled code is refused like the name."""
        errors: dict[str, list[str]] = {}
        id_type = self.effective_id_type(update)
        if id_type == "system_id":
            if not (update.order_id.isascii() and update.order_id.isdigit()) or int(update.order_id) > INT32_MAX:
                errors["id"] = ["With id_type system_id the order id must be Ongoing's integer SystemId."]
        elif len(update.order_id) > 50:
            errors["id"] = [f"Ongoing's {ID_TYPES[id_type][0]} is at most 50 characters."]
        if "status_code" in update.changes and update.changes["status_code"] == self.status_map.get("canceled"):
            errors["status_code"] = [self.refused_statuses["canceled"]]
        return errors

    def render_request(self, updates: Sequence[OrderUpdate], *, password: str) -> OutboundRequest:
        """Fill the UpdateOrder template, validate it against xsd/ongoing, and wrap it in an HTTP request."""
        (update,) = updates
        skeleton, blocks = self.template
        envelope = copy.deepcopy(skeleton)
        # The skeleton's shape is fixed (see _split_template): Envelope/Body/UpdateOrder/(code, user, password,
        # updateOrder/OrderUpdateIdentification), so its elements are reached by position, not searched for.
        operation = envelope[0][0]
        operation[0].text = self.settings.options["goods_owner_code"]
        operation[1].text = self.settings.username
        operation[2].text = password
        body = operation[3]
        identification = body[0]
        id_kind, id_element = ID_TYPES[self.effective_id_type(update)]
        identification[0].text = id_kind
        for element in list(identification)[1:]:
            if element.tag == _q(id_element):
                if id_element == "OrderId":
                    del element.attrib[f"{{{ns.XSI}}}nil"]
                element.text = update.order_id
            elif element.tag != _q("OrderId"):
                identification.remove(element)

        values = dict(update.changes)
        if "status" in values or "status_code" in values:
            values["status"] = self.backend_status_code(update)
            values.pop("status_code", None)
        for name, block_template in blocks:  # wire order
            if name not in values:
                continue
            block = copy.deepcopy(block_template)
            value = values[name]
            if isinstance(value, WayOfDelivery):
                self._fill_way_of_delivery(block, value)
            else:
                block[0].text = _as_wire_text(value)
            body.append(block)

        if not self.schema.validate(envelope):
            error = self.schema.error_log.last_error
            raise TranslationError(f"The rendered UpdateOrder failed xsd/{XSD_PATH} (line {error.line}): "
                                   f"{error.message}")
        return OutboundRequest(
            method="POST",
            url=self.settings.url,
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": self.settings.options["soap_action"]},
            body=etree.tostring(envelope, xml_declaration=True, encoding="utf-8"),
        )

    @staticmethod
    def _fill_way_of_delivery(block: etree._Element, way: WayOfDelivery) -> None:
        block.find(_q("Operation")).text = "FindOrCreate" if way.create_if_missing else "Find"
        block.find(_q("WayOfDeliveryTypeCode")).text = way.code
        name = block.find(_q("WayOfDeliveryTypeName"))
        if way.name is None:
            block.remove(name)
        else:
            name.text = way.name

    def parse_reply(self, reply: BackendReply, updates: Sequence[OrderUpdate]) -> list[UpdateOutcome]:
        """The one order's outcome; a refusal of the one order raises like a failure of the whole call."""
        return [self.read_update_order_result(reply)]

    def read_update_order_result(self, reply: BackendReply) -> UpdateOutcome:
        """Read UpdateOrderResult (Success, Message, OrderId); map refusals by their configured patterns."""
        payload = unwrap_soap_reply(reply, self.name)
        result = payload.find(_q("UpdateOrderResult")) if payload.tag == _q("UpdateOrderResponse") else None
        success = result.findtext(_q("Success")) if result is not None else None
        if success is None or success.strip() not in ("true", "false", "1", "0"):
            raise BackendFailure("The backend's reply is not an UpdateOrderResponse with a Success flag.",
                                 connection=self.name)
        message = (result.findtext(_q("Message")) or "").strip()
        order_id_element = result.find(_q("OrderId"))
        backend_order_id = None
        if order_id_element is not None and order_id_element.get(f"{{{ns.XSI}}}nil") not in ("true", "1"):
            backend_order_id = (order_id_element.text or "").strip() or None

        if success.strip() in ("true", "1"):
            return UpdateOutcome(backend_order_id=backend_order_id, message=message or "Order updated.")

        raise self.refusal_by_message(message, "Success=false")
