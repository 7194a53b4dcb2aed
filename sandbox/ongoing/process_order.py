"""Reading Ongoing's ProcessOrder request element as .NET's XmlSerializer reads it, and writing its response.

Ongoing's service is ASMX, and ASMX reads a request with XmlSerializer, which is lenient where an XSD validator is
strict. Ongoing's own example request relies on it: it sends GoodsOwnerOrderNumber before OrderOperation and leaves
out DeliveryDate, CustomerId and IsVisible, which the WSDL requires. So this reader, like XmlSerializer:

- matches the children of a complex type by name, in any order; of two children with one name the first counts;
- gives an element that was left out .NET's default: null for strings, objects and nillable values, 0 for numbers,
  false, DateTime.MinValue, and an enumeration's first value (the .NET enum's 0);
- ignores elements it does not know, by name or by namespace;
- but answers the Client fault "Server was unable to read request. There is an error in XML document ..." naming
  the element, for an enumeration value the WSDL does not list and for a number, boolean or dateTime that does not
  parse.

The element types come from process_order.xsd, the WSDL's own definitions. The reader also bounds what it takes
from outside, which XmlSerializer does not: elements in all, nesting depth, string length and list length.
"""

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

from lxml import etree

from sandbox.ongoing.model import (
    PROCESS_ORDER_IDENTIFICATION_TYPES,
    Customer,
    CustomerOrder,
    CustomerOrderLine,
    OrderIdentification,
    ProcessOrderRequest,
    ProcessOrderResult,
)
from sandbox.ongoing.update_order import WSI_NS
from sandbox.soap11 import XSI_NS, SoapFault, check_operation_element

PROCESS_ORDER_SOAP_ACTION = f"{WSI_NS}/ProcessOrder"
PROCESS_ORDER_TAG = f"{{{WSI_NS}}}ProcessOrder"
PROCESS_ORDER_XSD = Path(__file__).with_name("process_order.xsd")

MAX_ELEMENTS = 50_000
MAX_DEPTH = 16
MAX_STRING_LENGTH = 4000
MAX_LIST_LENGTH = 1000  # CustomerOrderLine elements in CustomerOrderLines, and the like

DATETIME_MIN_VALUE = "0001-01-01T00:00:00"
# System.Decimal holds a 96-bit integer scaled by a power of ten.
_DECIMAL_MAX = Decimal(2**96 - 1)
_INT_RANGE = range(-(2**31), 2**31)

_XS_NS = "http://www.w3.org/2001/XMLSchema"
_XSI_NIL = f"{{{XSI_NS}}}nil"
# XmlConvert trims the XML whitespace characters around a number or a boolean, and no others.
_XML_WHITESPACE = " \t\r\n"
_INT = re.compile(r"[+-]?[0-9]{1,20}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})")
_DATE_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.[0-9]{1,7})?)?"
    r"(?:Z|(?P<offset>[+-][0-9]{2}:[0-9]{2}))?"
)


def _wsi(local_name: str) -> str:
    """Qualify a local name with Ongoing's namespace."""
    return f"{{{WSI_NS}}}{local_name}"


def _xs(local_name: str) -> str:
    """Qualify a local name with the XML Schema namespace."""
    return f"{{{_XS_NS}}}{local_name}"


def _parse_int(text: str) -> int | None:
    """An xs:int as XmlConvert.ToInt32 reads it, or None if it is not one."""
    text = text.strip(_XML_WHITESPACE)
    if not _INT.fullmatch(text) or int(text) not in _INT_RANGE:
        return None
    return int(text)


def _parse_decimal(text: str) -> Decimal | None:
    """An xs:decimal as XmlConvert.ToDecimal reads it (no exponent, no thousands), or None if it is not one."""
    text = text.strip(_XML_WHITESPACE)
    if not _DECIMAL.fullmatch(text) or abs(Decimal(text)) > _DECIMAL_MAX:
        return None
    return Decimal(text)


def _parse_boolean(text: str) -> bool | None:
    """An xs:boolean as XmlConvert.ToBoolean reads it, or None if it is not one."""
    return {"true": True, "1": True, "false": False, "0": False}.get(text.strip(_XML_WHITESPACE))


def _parse_date_time(text: str) -> str | None:
    """An xs:dateTime (or xs:date) as sent, without surrounding whitespace, or None if it is not one."""
    text = text.strip(_XML_WHITESPACE)
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        return None
    try:
        date.fromisoformat(match["date"])
        if match["time"] is not None:
            datetime.strptime(match["time"], "%H:%M:%S")
        if match["offset"] is not None:
            datetime.strptime(match["offset"][1:], "%H:%M")
    except ValueError:
        return None
    return text


# The built-in XML Schema types the WSDL uses: how to read each, and .NET's default when the element is missing.
_BUILTIN_TYPES: Mapping[str, tuple[Callable[[str], object] | None, object]] = MappingProxyType(
    {
        "string": (None, None),
        "int": (_parse_int, 0),
        "decimal": (_parse_decimal, Decimal(0)),
        "boolean": (_parse_boolean, False),
        "dateTime": (_parse_date_time, DATETIME_MIN_VALUE),
    }
)


@dataclass(frozen=True)
class MemberType:
    """One element a complex type declares: its name, its type's name, and whether it repeats or may be nil."""

    name: str
    type_name: str
    repeated: bool
    nillable: bool


class ProcessOrderTypes:
    """The complex types and enumerations of process_order.xsd, read once; a type's name is its local name."""

    def __init__(self, xsd_path: Path = PROCESS_ORDER_XSD):
        schema = etree.parse(str(xsd_path)).getroot()
        complex_types: dict[str, tuple[MemberType, ...]] = {}
        enumerations: dict[str, tuple[str, ...]] = {}
        for definition in schema.iterchildren(_xs("complexType"), _xs("simpleType"), _xs("element")):
            name = definition.get("name")
            if definition.tag == _xs("simpleType"):
                enumerations[name] = tuple(value.get("value") for value in definition.iter(_xs("enumeration")))
            elif definition.tag == _xs("complexType"):
                complex_types[name] = self._read_members(definition)
            else:
                # The operation elements declare their complex type inline; it takes the element's name.
                complex_types[name] = self._read_members(definition.find(_xs("complexType")))
        self.complex_types: Mapping[str, tuple[MemberType, ...]] = MappingProxyType(complex_types)
        self.enumerations: Mapping[str, tuple[str, ...]] = MappingProxyType(enumerations)
        unknown = (
            {member.type_name for members in complex_types.values() for member in members}
            - set(complex_types)
            - set(enumerations)
            - set(_BUILTIN_TYPES)
        )
        if unknown:
            raise ValueError(f"{xsd_path} uses types it does not define: {', '.join(sorted(unknown))}.")

    @staticmethod
    def _read_members(complex_type: etree._Element) -> tuple[MemberType, ...]:
        """The elements of a complex type's sequence, with their types' local names."""
        members = []
        for element in complex_type.iter(_xs("element")):
            prefix, _, local_name = element.get("type").rpartition(":")
            namespace = element.nsmap.get(prefix or None)
            if namespace not in (_XS_NS, WSI_NS):
                raise ValueError(f"Type {element.get('type')} of {element.get('name')} is in no known namespace.")
            members.append(
                MemberType(
                    name=element.get("name"),
                    type_name=local_name,
                    repeated=element.get("maxOccurs") == "unbounded",
                    nillable=element.get("nillable") == "true",
                )
            )
        return tuple(members)

    def is_list(self, type_name: str) -> bool:
        """Whether a complex type is an ArrayOf... wrapper: one element, repeated; XmlSerializer reads it as a list."""
        members = self.complex_types[type_name]
        return len(members) == 1 and members[0].repeated


def _quoted(text: str) -> str:
    """Text from the request, quoted and cut short for a fault message."""
    return f"'{text}'" if len(text) <= 60 else f"'{text[:60]}...'"


def _unreadable(element: etree._Element, path: str, problem: str) -> SoapFault:
    """The Client fault for an element XmlSerializer cannot read, with its line as .NET gives its position."""
    return SoapFault(
        "Client",
        f"Server was unable to read request. There is an error in XML document (line {element.sourceline}): "
        f"{path}: {problem}",
    )


class _XmlSerializerReader:
    """Reads an element into plain values by its declared type: dicts for objects, lists for ArrayOf... types."""

    def __init__(self, types: ProcessOrderTypes):
        self._types = types

    def read_object(self, element: etree._Element, type_name: str, path: str, depth: int) -> dict | list:
        """Read a complex-typed element: every declared member, missing ones at their defaults."""
        if depth > MAX_DEPTH:
            raise _unreadable(element, path, "the elements are nested too deeply.")
        members = {member.name: member for member in self._types.complex_types[type_name]}
        values: dict[str, object] = {
            name: [] if member.repeated else self._default(member) for name, member in members.items()
        }
        seen: set[str] = set()
        for child in element.iterchildren(tag=etree.Element):
            qname = etree.QName(child)
            member = members.get(qname.localname) if qname.namespace == WSI_NS else None
            if member is None:
                continue  # unknown to the type: XmlSerializer skips it
            child_path = f"{path}/{member.name}"
            if member.repeated:
                if len(values[member.name]) == MAX_LIST_LENGTH:
                    raise _unreadable(child, path, f"more than {MAX_LIST_LENGTH} {member.name} elements.")
                values[member.name].append(self._read_member(child, member, child_path, depth))
            elif member.name not in seen:
                # XmlSerializer reads each member once and skips a second element of the same name.
                seen.add(member.name)
                values[member.name] = self._read_member(child, member, child_path, depth)
        if self._types.is_list(type_name):
            (items,) = values.values()
            return items
        return values

    def _read_member(self, element: etree._Element, member: MemberType, path: str, depth: int) -> object:
        """Read one member element: nil, an object, an enumeration value or a built-in value."""
        if element.get(_XSI_NIL) in ("true", "1"):
            return None if member.repeated else self._default(member)
        if member.type_name in self._types.complex_types:
            return self.read_object(element, member.type_name, path, depth + 1)
        if len(element):
            raise _unreadable(element, path, "text was expected, not elements.")
        text = element.text or ""
        if len(text) > MAX_STRING_LENGTH:
            raise _unreadable(element, path, f"the text is longer than {MAX_STRING_LENGTH} characters.")
        enumeration = self._types.enumerations.get(member.type_name)
        if enumeration is not None:
            # XmlSerializer compares an enumeration value exactly, without trimming it.
            if text not in enumeration:
                raise _unreadable(element, path, f"{_quoted(text)} is not a valid value for {member.type_name}.")
            return text
        parse, _ = _BUILTIN_TYPES[member.type_name]
        if parse is None:
            return text
        value = parse(text)
        if value is None:
            raise _unreadable(element, path, f"{_quoted(text)} is not a valid {member.type_name}.")
        return value

    def _default(self, member: MemberType) -> object:
        """What .NET leaves in a member whose element is missing."""
        if member.nillable or member.type_name in self._types.complex_types:
            return None
        enumeration = self._types.enumerations.get(member.type_name)
        if enumeration is not None:
            return enumeration[0]
        return _BUILTIN_TYPES[member.type_name][1]


def read_process_order(operation: etree._Element, types: ProcessOrderTypes) -> ProcessOrderRequest:
    """Read a ProcessOrder element (default namespace or any prefix) leniently, as Ongoing's service does."""
    check_operation_element(operation, PROCESS_ORDER_TAG, PROCESS_ORDER_SOAP_ACTION)
    if sum(1 for _ in itertools.islice(operation.iter(), MAX_ELEMENTS + 1)) > MAX_ELEMENTS:
        raise SoapFault(
            "Client", f"Server was unable to read request. ProcessOrder holds more than {MAX_ELEMENTS} elements."
        )
    values = _XmlSerializerReader(types).read_object(operation, "ProcessOrder", "ProcessOrder", depth=0)
    return ProcessOrderRequest(
        goods_owner_code=values["GoodsOwnerCode"],
        user_name=values["UserName"],
        password=values["Password"],
        order=_read_customer_order(values["co"]),
    )


def _read_customer_order(co: dict | None) -> CustomerOrder | None:
    """What the sandbox keeps of `co`; None if it or its OrderInfo is missing."""
    order_info = None if co is None else co["OrderInfo"]
    if order_info is None:
        return None
    identification_type = order_info["OrderIdentification"]
    _, value_element = PROCESS_ORDER_IDENTIFICATION_TYPES[identification_type]
    lines = co["CustomerOrderLines"]
    return CustomerOrder(
        operation=order_info["OrderOperation"],
        identification=OrderIdentification(
            identification_type=identification_type,
            value="" if value_element is None else order_info[value_element],
        ),
        order_number=order_info["GoodsOwnerOrderNumber"],
        order_id=order_info["GoodsOwnerOrderId"],
        status_created=order_info["OrderStatusCreated"],
        customer=_read_customer(co["Customer"]),
        # A nil CustomerOrderLine is no line at all.
        lines=None if lines is None else tuple(_read_line(line) for line in lines if line is not None),
    )


def _read_customer(customer: dict | None) -> Customer | None:
    """The customer's number and address, None if no Customer was sent."""
    if customer is None:
        return None
    return Customer(
        customer_number=customer["CustomerNumber"],
        name=customer["Name"],
        address=customer["Address"],
        address2=customer["Address2"],
        address3=customer["Address3"],
        post_code=customer["PostCode"],
        city=customer["City"],
        country_code=customer["CountryCode"],
    )


def _read_line(line: dict) -> CustomerOrderLine:
    """The line's code, article and quantity."""
    return CustomerOrderLine(
        external_order_line_code=line["ExternalOrderLineCode"],
        article_number=line["ArticleNumber"],
        number_of_items=line["NumberOfItems"],
    )


def render_process_order_response(body: etree._Element, result: ProcessOrderResult) -> None:
    """Write ProcessOrderResponse/ProcessOrderResult (a FileResultClass) into a response Body, in the WSDL's order."""
    response = etree.SubElement(body, _wsi("ProcessOrderResponse"), nsmap={None: WSI_NS})
    result_element = etree.SubElement(response, _wsi("ProcessOrderResult"))
    if not result.success:
        etree.SubElement(result_element, _wsi("ErrorMessage")).text = result.error_message
    if result.order_number is not None:
        etree.SubElement(result_element, _wsi("GoodsOwnerOrderNumber")).text = result.order_number
    etree.SubElement(result_element, _wsi("OrderId")).text = str(result.order_id)
    etree.SubElement(result_element, _wsi("InOrderId")).text = "0"
    etree.SubElement(result_element, _wsi("ArticleDefId")).set(_XSI_NIL, "true")
    etree.SubElement(result_element, _wsi("Success")).text = "true" if result.success else "false"
