"""Reading Ongoing's UpdateOrder request element and writing its UpdateOrderResponse, from the vendor's spec."""

import copy
import threading
from pathlib import Path
from types import MappingProxyType

from lxml import etree

from sandbox.ongoing.model import (
    ORDER_IDENTIFICATION_TYPES,
    OrderChanges,
    OrderIdentification,
    UpdateOrderRequest,
    UpdateOrderResult,
    WayOfDeliveryTypeChange,
)
from sandbox.soap11 import XSI_NS, SoapFault, check_operation_element

WSI_NS = "http://ongoingsystems.se/WSI"
UPDATE_ORDER_SOAP_ACTION = f"{WSI_NS}/UpdateOrder"
UPDATE_ORDER_TAG = f"{{{WSI_NS}}}UpdateOrder"
UPDATE_ORDER_XSD = Path(__file__).with_name("update_order.xsd")

_XSI_NIL = f"{{{XSI_NS}}}nil"


def _wsi(local_name: str) -> str:
    """Qualify a local name with Ongoing's namespace."""
    return f"{{{WSI_NS}}}{local_name}"


def _datetime_text(text: str) -> str:
    """An xs:dateTime as sent, without the surrounding whitespace XML Schema ignores."""
    return text.strip()


def _string_text(text: str) -> str:
    """An xs:string exactly as sent."""
    return text


# Update blocks whose value replaces an order attribute as it is:
# block element, value element, Order attribute, conversion of the (schema-valid) text.
PLAIN_UPDATE_BLOCKS = (
    ("UpdateOrderDeliveryDate", "DeliveryDate", "delivery_date", _datetime_text),
    ("UpdateOrderWaybill", "Waybill", "waybill", _string_text),
    (
        "UpdateOrderTransporterOrderNumber",
        "UpdateOrderTransporterOrderNumber",
        "transporter_order_number",
        _string_text,
    ),
    ("UpdateOrderPrintedTime", "PrintedTime", "printed_time", _datetime_text),
    ("UpdateOrderShippedTime", "ShippedTime", "shipped_time", _datetime_text),
    ("UpdatePickingPriority", "PickingPriority", "picking_priority", int),
    ("UpdateOrderWarehouseInstruction", "WarehouseInstruction", "warehouse_instruction", _string_text),
    ("UpdateOrderReturnWaybill", "ReturnWaybill", "return_waybill", _string_text),
    ("UpdateOrderServicePointCode", "ServicePointCode", "service_point_code", _string_text),
)


class UpdateOrderSchema:
    """The sandbox's own XSD of the UpdateOrder element, compiled once and validated against under a lock."""

    def __init__(self, xsd_path: Path = UPDATE_ORDER_XSD):
        self._schema = etree.XMLSchema(etree.parse(str(xsd_path)))
        # An XMLSchema keeps the error log of its last run, so runs must not overlap.
        self._lock = threading.Lock()

    def find_problems(self, operation: etree._Element) -> list[str]:
        """Return what is wrong with the UpdateOrder element (empty if valid), never quoting the password."""
        # The password is only checked for its length, so a mask of the same length validates alike
        # and keeps the password out of every message.
        masked = copy.deepcopy(operation)
        for password in masked.iterchildren(_wsi("Password")):
            password.text = "*" * len(password.text or "")
        with self._lock:
            if self._schema.validate(masked):
                return []
            messages = [error.message for error in self._schema.error_log]
        return [message.replace(f"{{{WSI_NS}}}", "") for message in messages]


def read_update_order(operation: etree._Element, schema: UpdateOrderSchema) -> UpdateOrderRequest:
    """Validate an UpdateOrder element (default namespace or any prefix) and read it into a request."""
    check_operation_element(operation, UPDATE_ORDER_TAG, UPDATE_ORDER_SOAP_ACTION)
    problems = schema.find_problems(operation)
    if problems:
        raise SoapFault("Client", "Server was unable to read request. " + " ".join(problems))
    update = operation.find(_wsi("updateOrder"))
    return UpdateOrderRequest(
        goods_owner_code=operation.findtext(_wsi("GoodsOwnerCode")),
        user_name=operation.findtext(_wsi("UserName")),
        password=operation.findtext(_wsi("Password")),
        identification=_read_identification(update.find(_wsi("OrderUpdateIdentification"))),
        changes=_read_changes(update),
    )


def _read_identification(identification: etree._Element) -> OrderIdentification:
    """Read OrderUpdateIdentification: the type, and the value of the element that type uses."""
    identification_type = identification.findtext(_wsi("OrderIdentificationType")).strip()
    _, value_element_name = ORDER_IDENTIFICATION_TYPES[identification_type]
    value_element = identification.find(_wsi(value_element_name))
    value: str | int | None
    if value_element is None or value_element.get(_XSI_NIL) in ("true", "1"):
        value = None
    elif identification_type == "SystemId":
        value = int(value_element.text)
    else:
        value = value_element.text or ""
    return OrderIdentification(identification_type=identification_type, value=value)


def _read_changes(update: etree._Element) -> OrderChanges:
    """Read the update blocks present in `updateOrder`; a string block without its value element clears it."""
    status = update.findtext(f"{_wsi('UpdateOrderStatus')}/{_wsi('OrderStatus')}")
    order_number_block = update.find(_wsi("UpdateOrderGoodsOwnerOrderNumber"))
    way_of_delivery_block = update.find(_wsi("UpdateOrderWayOfDeliveryType"))
    fields = {}
    for block_name, value_name, attribute, convert in PLAIN_UPDATE_BLOCKS:
        block = update.find(_wsi(block_name))
        if block is not None:
            value = block.find(_wsi(value_name))
            fields[attribute] = None if value is None else convert(value.text or "")
    return OrderChanges(
        status=None if status is None else int(status),
        order_number=(
            None
            if order_number_block is None
            else order_number_block.findtext(_wsi("GoodsOwnerOrderNumber"), default="")
        ),
        way_of_delivery_type=(
            None
            if way_of_delivery_block is None
            else WayOfDeliveryTypeChange(
                operation=way_of_delivery_block.findtext(_wsi("Operation")).strip(),
                code=way_of_delivery_block.findtext(_wsi("WayOfDeliveryTypeCode")),
                name=way_of_delivery_block.findtext(_wsi("WayOfDeliveryTypeName")),
            )
        ),
        fields=MappingProxyType(fields),
    )


def render_update_order_response(body: etree._Element, result: UpdateOrderResult) -> None:
    """Write UpdateOrderResponse/UpdateOrderResult into a response Body, as Ongoing's service does."""
    response = etree.SubElement(body, _wsi("UpdateOrderResponse"), nsmap={None: WSI_NS})
    result_element = etree.SubElement(response, _wsi("UpdateOrderResult"))
    etree.SubElement(result_element, _wsi("Success")).text = "true" if result.success else "false"
    if result.message:
        etree.SubElement(result_element, _wsi("Message")).text = result.message
    order_id = etree.SubElement(result_element, _wsi("OrderId"))
    if result.order_id is None:
        order_id.set(_XSI_NIL, "true")
    else:
        order_id.text = str(result.order_id)
