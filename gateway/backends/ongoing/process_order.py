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
from gateway.backends.ongoing.wire import ID_TYPES, fill_login, read_result, soap_request, wsi
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

    def render(self, updates: Sequence[OrderUpdate], credentials: Credentials) -> OutboundRequest:
        """Fill the ProcessOrder template for the one order, validate it against xsd/ongoing, wrap it."""
        (update,) = updates
        envelope = copy.deepcopy(self.template)
        call = envelope[0][0]  # Envelope/Body/ProcessOrder
        fill_login(call, self.settings.options["goods_owner_code"], credentials)
        order_info = call[3][0]  # co/OrderInfo
        id_kind, id_element = ID_TYPES[self.backend.effective_id_type(update)]
        order_info.find(wsi("OrderIdentification")).text = id_kind
        for element in list(order_info):
            localname = etree.QName(element).localname
            if localname == id_element:
                element.text = update.order_id
            elif localname in ID_ELEMENTS:
                order_info.remove(element)
        order_info.find(wsi("DeliveryDate")).text = self.settings.options["cancel_delivery_date"]
        check_rendered_document(envelope, XSD_PATH, "ProcessOrder")
        return soap_request(self.settings.url, self.name, envelope)

    def parse(self, payload: etree._Element, updates: Sequence[OrderUpdate], *,
              retry_after: str | None = None) -> list[UpdateOutcome | BackendError]:
        """ProcessOrderResult (Success, ErrorMessage or Message, OrderId) of the one order."""
        success, message, backend_order_id = read_result(payload, self.name, self.backend)
        if success:
            return [UpdateOutcome(backend_order_id=backend_order_id, message=message or "Order canceled.")]
        return [self.backend.refusal_by_message(message, "Success=false")]
