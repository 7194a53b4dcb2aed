"""What Ongoing's SOAP calls share on the wire: the namespace, order identification, credentials and results.

Wire facts (reference/ongoing): SOAP 1.1, namespace http://ongoingsystems.se/WSI, SOAPAction
"http://ongoingsystems.se/WSI/<Operation>" with the quotes; every call's element starts with GoodsOwnerCode,
UserName and Password. Ongoing answers refusals as Success=false with free text; which texts mean "not found"
or "state conflict" is configured per connection, since the vendor does not document them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from lxml import etree

from gateway import ns
from gateway.backends.base import Credentials
from gateway.errors import BackendFailure
from gateway.safejson import parse_ascii_int
from gateway.transport import OutboundRequest

if TYPE_CHECKING:
    from gateway.backends.base import Backend

INT32_MAX = 2**31 - 1

#: canonical id_type -> Ongoing's OrderIdentificationType and the element that carries the value; a SystemId
#: travels in <OrderId> in UpdateOrder's OrderUpdateIdentification and in ProcessOrder's OrderInfo alike
ID_TYPES = {
    "order_number": ("GoodsOwnerOrderNumber", "GoodsOwnerOrderNumber"),
    "order_id": ("GoodsOwnerOrderId", "GoodsOwnerOrderId"),
    "system_id": ("SystemId", "OrderId"),
}


@functools.cache
def wsi(localname: str) -> str:
    """A name in Ongoing's namespace (made once per name: every call of every request asks for the same few)."""
    return f"{{{ns.ONGOING_WSI}}}{localname}"


def fill_login(call: etree._Element, goods_owner_code: str, credentials: Credentials) -> None:
    """Fill the GoodsOwnerCode, UserName and Password that open every call element, in that order."""
    call[0].text = goods_owner_code
    call[1].text = credentials.username
    call[2].text = credentials.password


@functools.cache
def soap_headers(operation: str) -> dict[str, str]:
    """The HTTP headers of one SOAP 1.1 call to Ongoing (made once per operation, shared by its requests)."""
    return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ns.ONGOING_WSI}/{operation}"'}


def soap_request(url: str, headers: dict[str, str], envelope: etree._Element) -> OutboundRequest:
    """The HTTP request of one SOAP 1.1 call to Ongoing, with the operation's `soap_headers`."""
    return OutboundRequest(
        method="POST",
        url=url,
        headers=headers,
        body=etree.tostring(envelope, xml_declaration=True, encoding="utf-8"),
    )


SUCCESS, MESSAGE, ERROR_MESSAGE, ORDER_ID = (wsi(name) for name in ("Success", "Message", "ErrorMessage", "OrderId"))
XSI_NIL = f"{{{ns.XSI}}}nil"


@functools.cache
def _result_tags(operation: str) -> tuple[str, str]:
    """The tags of `<operation>Response` and of its `<operation>Result`."""
    return wsi(f"{operation}Response"), wsi(f"{operation}Result")


def _text_of(element: etree._Element | None) -> str:
    """An element's own text, stripped ("" for none), as findtext() read it."""
    return (element.text or "").strip() if element is not None else ""


def read_result(payload: etree._Element, operation: str, backend: Backend) -> tuple[bool, str, str | None]:
    """(success, message, backend order id) of `<operation>Response/<operation>Result`.

    The refusal text is read from ErrorMessage where the result type has one (ProcessOrder's FileResultClass),
    else from Message; an OrderId of 0, nil or anything but an xs:int means no order.
    """
    response_tag, result_tag = _result_tags(operation)
    # one pass over the result's children (the first of each name counts, as find() would have it)
    children: dict[object, etree._Element] = {}
    if payload.tag == response_tag:
        for result in payload:
            if result.tag == result_tag:
                for child in result:
                    children.setdefault(child.tag, child)
                break
    success_element = children.get(SUCCESS)
    success = (success_element.text or "").strip() if success_element is not None else None
    if success not in ("true", "false", "1", "0"):
        raise BackendFailure(f"The backend's reply has no {operation}Response with a Success flag.",
                             connection=backend.name)
    message = _text_of(children.get(ERROR_MESSAGE)) or _text_of(children.get(MESSAGE))
    order_id = children.get(ORDER_ID)
    system_id = None
    if order_id is not None and order_id.get(XSI_NIL) not in ("true", "1"):
        system_id = parse_ascii_int(order_id.text, max_digits=10)  # xs:int; anything else names no order
    backend_order_id = str(system_id) if system_id and 0 < system_id <= INT32_MAX else None
    return success in ("true", "1"), message, backend_order_id
