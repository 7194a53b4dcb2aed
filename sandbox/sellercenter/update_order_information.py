"""UpdateOrderInformation on the wire: the JSON request document read strictly, and the replies to it.

The request is `{"Request": {"Orders": [order, ...]}}`; an order is an object with an integer `id_sales_order` and
optional `address_billing` / `address_shipping` objects whose members are string address fields. Anything else
is E005; an empty `Orders` list is E030.
"""

import json
from collections.abc import Iterable
from datetime import datetime
from types import MappingProxyType

from sandbox.sellercenter.model import ADDRESS_FIELDS, ADDRESS_MEMBERS, ItemError, OrderInformationUpdate
from sandbox.sellercenter.oms_api import empty_request, format_response_timestamp, invalid_request_format

ACTION = "UpdateOrderInformation"
SOME_ELEMENTS_NOT_PROCESSED = "Some elements were not processed"
_ORDER_MEMBERS = frozenset({"id_sales_order", *ADDRESS_MEMBERS})


def read_order_information_updates(body: bytes) -> tuple[OrderInformationUpdate, ...]:
    """Read every order of the request document, in request order; refuse a malformed or empty request."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers both malformed JSON and bytes that are not UTF-8 (or UTF-16/32).
        raise invalid_request_format() from None
    orders = _member(_member(document, "Request", dict), "Orders", list)
    if not orders:
        raise empty_request()
    return tuple(_read_order(order) for order in orders)


def read_order_ids(body: bytes) -> tuple[str, ...]:
    """The id_sales_order of each order in the request document, best effort: none from a body that is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ()
    request = document.get("Request") if isinstance(document, dict) else None
    orders = request.get("Orders") if isinstance(request, dict) else None
    if not isinstance(orders, list):
        return ()
    return tuple(
        str(order["id_sales_order"])
        for order in orders
        if isinstance(order, dict) and isinstance(order.get("id_sales_order"), int | str)
    )


def _member(container: object, name: str, expected_type: type) -> object:
    """The one member `name` of a JSON object that has no other members, if it is of `expected_type`."""
    if not isinstance(container, dict) or container.keys() != {name}:
        raise invalid_request_format()
    value = container[name]
    if not isinstance(value, expected_type):
        raise invalid_request_format()
    return value


def _read_order(order: object) -> OrderInformationUpdate:
    """Read one order object: its id and the addresses it carries."""
    if not isinstance(order, dict) or not order.keys() <= _ORDER_MEMBERS:
        raise invalid_request_format()
    id_sales_order = order.get("id_sales_order")
    # JSON's true and false are Python ints, but not order ids.
    if type(id_sales_order) is not int:
        raise invalid_request_format()
    addresses = {member: _read_address(order[member]) for member in ADDRESS_MEMBERS if member in order}
    return OrderInformationUpdate(id_sales_order=id_sales_order, **addresses)


def _read_address(address: object) -> MappingProxyType:
    """Read an address object: known fields only, each a string; it may be empty."""
    if not isinstance(address, dict) or not address.keys() <= set(ADDRESS_FIELDS):
        raise invalid_request_format()
    if not all(isinstance(value, str) for value in address.values()):
        raise invalid_request_format()
    return MappingProxyType(dict(address))


def render_success_response(now: datetime) -> dict:
    """The SuccessResponse to a call whose every order was updated."""
    return {
        "SuccessResponse": {
            "Head": {
                "RequestId": "",
                "RequestAction": ACTION,
                "ResponseType": "",
                "Timestamp": format_response_timestamp(now),
            },
            "Body": [],
        }
    }


def render_item_errors_response(errors: Iterable[ItemError]) -> dict:
    """The ErrorResponse with ErrorCode "0" listing only the orders that were not processed, by Position."""
    return {
        "ErrorResponse": {
            "Head": {
                "RequestAction": ACTION,
                "ErrorType": "Sender",
                "ErrorCode": "0",
                "ErrorMessage": SOME_ELEMENTS_NOT_PROCESSED,
            },
            "Body": {
                ACTION: [
                    {"ErrorCode": None, "ErrorMessage": error.message, "Position": error.position} for error in errors
                ]
            },
        }
    }
