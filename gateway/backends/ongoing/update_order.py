"""Ongoing's UpdateOrder: changes to an existing order, whatever its picking status (specs/000).

The template holds every update block in wire order; from it an envelope is made once per shape (id type and
the blocks a request uses), and rendering copies that envelope and fills in the request's values. The OrderId
element of OrderUpdateIdentification is required but nillable: it carries a SystemId, and is nil otherwise.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from lxml import etree

from gateway import ns
from gateway.backends.base import Backend, Credentials, Operation
from gateway.backends.ongoing.wire import (
    ID_TYPES,
    XSI_NIL,
    fill_login,
    read_result,
    soap_headers,
    soap_request,
    wsi,
)
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.errors import BackendError
from gateway.safexml import check_rendered_document, load_xsd, parse_trusted_template
from gateway.transport import OutboundRequest

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "update_order.xml"
XSD_PATH = "ongoing/update_order.xsd"

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


@functools.cache
def _update_order_template() -> tuple[etree._Element, tuple[tuple[str, etree._Element], ...]]:
    """The template split once into the envelope without update blocks, and each block by canonical field."""
    skeleton = parse_trusted_template(TEMPLATE_PATH)
    body = skeleton.find(f"{{{ns.SOAP11_ENVELOPE}}}Body/{wsi('UpdateOrder')}/{wsi('updateOrder')}")
    field_of_block = {block: name for name, (block, _) in UPDATE_BLOCKS.items()}
    blocks = []
    for block in list(body)[1:]:
        body.remove(block)
        blocks.append((field_of_block[etree.QName(block).localname], block))
    return skeleton, tuple(blocks)


#: the most envelope shapes a process keeps ready (id type x update blocks x way of delivery form)
MAX_SHAPES = 256


@functools.lru_cache(maxsize=MAX_SHAPES)
def _update_order_shape(id_type: str, changed: frozenset[str],
                        way_of_delivery: tuple[bool, bool] | None) -> tuple[etree._Element, tuple[str, ...]]:
    """The envelope for one id type and one set of changed fields, with every text that is not the request's own
    filled in, and the canonical fields of its update blocks in wire order.

    Made from the template once per shape; rendering copies it and fills in credentials, order id and values by
    position. `way_of_delivery` is (create_if_missing, has a name) when the way of delivery changes.
    """
    skeleton, blocks = _update_order_template()
    envelope = copy.deepcopy(skeleton)
    body = envelope[0][0][3]  # Envelope/Body/UpdateOrder/updateOrder
    identification = body[0]
    id_kind, id_element = ID_TYPES[id_type]
    identification[0].text = id_kind
    for element in list(identification)[1:]:
        if element.tag == wsi(id_element):
            if id_element == "OrderId":
                del element.attrib[XSI_NIL]
        elif element.tag != wsi("OrderId"):
            identification.remove(element)
    names = []
    for name, block_template in blocks:  # wire order
        if name not in changed and not (name == "status" and "status_code" in changed):
            continue
        block = copy.deepcopy(block_template)
        if name == "way_of_delivery":
            create_if_missing, named = way_of_delivery
            block[0].text = "FindOrCreate" if create_if_missing else "Find"  # Operation
            if not named:
                block.remove(block[3])  # WayOfDeliveryTypeName
        body.append(block)
        names.append(name)
    return envelope, tuple(names)


def as_wire_text(value: Any) -> str:
    """A canonical value as xs:dateTime, xs:boolean or plain text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class UpdateOrder(Operation):
    """UpdateOrder: status (but not canceled), dates, numbers, waybills, instructions, way of delivery."""

    name: ClassVar[str] = "UpdateOrder"
    carries: ClassVar = frozenset({"status", "status_code", *UPDATE_BLOCKS})
    # UpdateOrder sets values, so sending it twice is sending it once — except a renaming
    # (UpdateOrderGoodsOwnerOrderNumber): repeated, it no longer finds the order by its old number.
    idempotent: ClassVar[bool] = True
    # UpdateOrder carries one order, and Ongoing wants one goods owner's calls made one after another.
    orders_per_call: ClassVar[int] = 1

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        # Compiled once per process, at start-up rather than on the first request.
        self.template = _update_order_template()
        load_xsd(XSD_PATH)
        self.headers = soap_headers(self.name)

    def is_idempotent(self, updates: Sequence[OrderUpdate]) -> bool:
        """Idempotent unless an update renames its order."""
        return not any("new_order_number" in update.changes for update in updates)

    def render(self, updates: Sequence[OrderUpdate], credentials: Credentials) -> OutboundRequest:
        """Fill the UpdateOrder template, validate it against xsd/ongoing, and wrap it in an HTTP request."""
        (update,) = updates
        changes = update.changes
        way = changes.get("way_of_delivery")
        shape, names = _update_order_shape(
            self.backend.effective_id_type(update), frozenset(changes),
            None if way is None else (way.create_if_missing, way.name is not None))
        envelope = copy.copy(shape)  # lxml copies an element with its whole subtree, without deepcopy's memo
        # The shape is fixed: Envelope/Body/UpdateOrder/(code, user, password, updateOrder/(OrderUpdateIdentification/
        # (type, id, ...), block, ...)), so its elements are reached by position, not searched for.
        call = envelope[0][0]
        fill_login(call, self.settings.options["goods_owner_code"], credentials)
        body = call[3]
        body[0][1].text = update.order_id
        for position, name in enumerate(names, 1):
            block = body[position]
            if name == "status":
                block[0].text = as_wire_text(self.backend.backend_status_code(update))
            elif name == "way_of_delivery":
                block[2].text = way.code  # WayOfDeliveryTypeCode
                if way.name is not None:
                    block[3].text = way.name  # WayOfDeliveryTypeName
            else:
                block[0].text = as_wire_text(changes[name])
        check_rendered_document(envelope, XSD_PATH, "UpdateOrder")
        return soap_request(self.settings.url, self.headers, envelope)

    def parse(self, payload: etree._Element, updates: Sequence[OrderUpdate], *,
              retry_after: str | None = None) -> list[UpdateOutcome | BackendError]:
        """UpdateOrderResult (Success, Message, OrderId) of the one order; refusals mapped by their patterns."""
        success, message, backend_order_id = read_result(payload, self.name, self.backend)
        if success:
            return [UpdateOutcome(backend_order_id=backend_order_id, message=message or "Order updated.")]
        return [self.backend.refusal_by_message(message, "Success=false")]
