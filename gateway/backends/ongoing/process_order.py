"""Ongoing's ProcessOrder with OrderOperation Remove: how an order is canceled (specs/000: UpdateOrder must not).

ProcessOrder can change an order only while the warehouse has not begun to pick it; a refusal for that reason
is mapped to 409 by the connection's order_conflict_patterns. The WSDL requires OrderInfo/DeliveryDate, whose
value a removal does not determine: the connection's `cancel_delivery_date` setting supplies it (by default
.NET's DateTime.MinValue, what Ongoing's service reads when the element is left out, as the vendor's own
example request does).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from lxml import etree

from gateway.backends.base import Backend, Credentials, Operation
from gateway.backends.ongoing.wire import ID_TYPES, fill_login, read_result, soap_headers, soap_request, wsi
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.errors import BackendError
from gateway.safexml import check_rendered_document, load_xsd, parse_trusted_template
from gateway.transport import OutboundRequest

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "process_order.xml"
XSD_PATH = "ongoing/process_order.xsd"
ID_ELEMENTS = frozenset(element for _, element in ID_TYPES.values())


@functools.cache
def _process_order_template() -> etree._Element:
    return parse_trusted_template(TEMPLATE_PATH)


@functools.cache
def _process_order_shape(id_type: str) -> etree._Element:
    """The envelope for one id type: OrderIdentification filled in, only the id element it uses kept.

    Made once per id type; rendering copies it and fills in credentials, order id and DeliveryDate by position:
    OrderInfo holds OrderIdentification, OrderOperation, the id element, DeliveryDate.
    """
    envelope = copy.deepcopy(_process_order_template())
    order_info = envelope[0][0][3][0]  # Envelope/Body/ProcessOrder/co/OrderInfo
    id_kind, id_element = ID_TYPES[id_type]
    order_info.find(wsi("OrderIdentification")).text = id_kind
    for element in list(order_info):
        localname = etree.QName(element).localname
        if localname in ID_ELEMENTS and localname != id_element:
            order_info.remove(element)
    return envelope


class ProcessOrderRemove(Operation):
    """ProcessOrder, OrderOperation Remove: cancels the order, which carries nothing but its status."""

    name: ClassVar[str] = "ProcessOrder"
    carries: ClassVar = frozenset({"status", "status_code"})
    # Removing a removed order leaves it removed.
    idempotent: ClassVar[bool] = True
    orders_per_call: ClassVar[int] = 1

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.template = _process_order_template()
        load_xsd(XSD_PATH)
        self.headers = soap_headers(self.name)

    def render(self, updates: Sequence[OrderUpdate], credentials: Credentials) -> OutboundRequest:
        """Fill the ProcessOrder template for the one order, validate it against xsd/ongoing, wrap it."""
        (update,) = updates
        # lxml copies an element with its whole subtree, without deepcopy's memo
        envelope = copy.copy(_process_order_shape(self.backend.effective_id_type(update)))
        call = envelope[0][0]  # Envelope/Body/ProcessOrder
        fill_login(call, self.settings.options["goods_owner_code"], credentials)
        order_info = call[3][0]  # co/OrderInfo
        order_info[2].text = update.order_id  # the id element
        order_info[3].text = self.settings.options["cancel_delivery_date"]  # DeliveryDate
        check_rendered_document(envelope, XSD_PATH, "ProcessOrder")
        return soap_request(self.settings.url, self.headers, envelope)

    def parse(self, payload: etree._Element, updates: Sequence[OrderUpdate], *,
              retry_after: str | None = None) -> list[UpdateOutcome | BackendError]:
        """ProcessOrderResult (Success, ErrorMessage or Message, OrderId) of the one order."""
        success, message, backend_order_id = read_result(payload, self.name, self.backend)
        if success:
            return [UpdateOutcome(backend_order_id=backend_order_id, message=message or "Order canceled.")]
        return [self.backend.refusal_by_message(message, "Success=false")]
