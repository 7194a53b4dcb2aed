"""Reading CONNECT's updateOrderStatus call (a request document as text) and writing its response, from the spec."""

import threading
from pathlib import Path
from types import MappingProxyType

from lxml import etree

from sandbox.speed4trade.model import (
    KEY_ELEMENTS,
    OrderReport,
    OrderStatusUpdate,
    PaymentInformation,
    ShippingInformation,
)
from sandbox.speed4trade.soap import FaultCode, SoapFault
from sandbox.untrusted_xml import UntrustedXmlError, parse_untrusted_xml

OPERATION = "updateOrderStatus"
REQUEST_DATA_PARAMETER = "argRequestData"
RESPONSE_FIELD = "return"
DOCUMENT_VERSION = "1.0.0"
UPDATE_ORDER_STATUS_XSD = Path(__file__).with_name("update_order_status.xsd")


class UpdateOrderStatusSchema:
    """The sandbox's own XSD of the updateOrderStatus request document, compiled once, validated under a lock."""

    def __init__(self, xsd_path: Path = UPDATE_ORDER_STATUS_XSD):
        self._schema = etree.XMLSchema(etree.parse(str(xsd_path)))
        # An XMLSchema keeps the error log of its last run, so runs must not overlap.
        self._lock = threading.Lock()

    def find_problems(self, document: etree._Element) -> list[str]:
        """Return what is wrong with the request document (empty if valid)."""
        with self._lock:
            if self._schema.validate(document):
                return []
            return [error.message for error in self._schema.error_log]


def read_request_data(operation: etree._Element, namespace: str) -> str:
    """Check that the Body holds updateOrderStatus in `namespace` and return the text of its argRequestData."""
    name = etree.QName(operation)
    if operation.tag != f"{{{namespace}}}{OPERATION}":
        raise SoapFault(
            FaultCode.SENDER,
            f"Procedure '{name.localname}' in namespace '{name.namespace or ''}' not present: "
            f"this service offers {OPERATION} in namespace '{namespace}'.",
        )
    # The parameter is unqualified, as a WSDL-generated client sends it, or qualified in the service namespace.
    parameter_tags = (REQUEST_DATA_PARAMETER, f"{{{namespace}}}{REQUEST_DATA_PARAMETER}")
    parameters = [child for child in operation if isinstance(child.tag, str)]
    for parameter in parameters:
        if parameter.tag not in parameter_tags:
            raise SoapFault(
                FaultCode.SENDER,
                f"{OPERATION} takes one parameter, {REQUEST_DATA_PARAMETER}; "
                f"'{etree.QName(parameter).localname}' is not expected.",
            )
    if len(parameters) != 1:
        raise SoapFault(FaultCode.SENDER, f"{OPERATION} needs exactly one {REQUEST_DATA_PARAMETER} parameter.")
    (parameter,) = parameters
    if any(isinstance(child.tag, str) for child in parameter):
        raise SoapFault(
            FaultCode.SENDER,
            f"{REQUEST_DATA_PARAMETER} must carry the request document as escaped text, not as XML elements.",
        )
    text = (parameter.text or "").strip()
    if not text:
        raise SoapFault(FaultCode.SENDER, f"{REQUEST_DATA_PARAMETER} is empty; it must carry the request document.")
    return text


def parse_request_document(text: str, schema: UpdateOrderStatusSchema) -> etree._Element:
    """Parse the request document with the hardened parser and validate it against the sandbox's XSD."""
    try:
        document = parse_untrusted_xml(text.encode("utf-8"))
    except UntrustedXmlError as error:
        raise SoapFault(
            FaultCode.SENDER, f"The request document in {REQUEST_DATA_PARAMETER} was refused. {error}"
        ) from error
    problems = schema.find_problems(document)
    if problems:
        raise SoapFault(
            FaultCode.SENDER,
            f"The request document in {REQUEST_DATA_PARAMETER} is not valid: " + " ".join(problems),
        )
    return document


def read_significant_key_values(text: str) -> tuple[str, ...]:
    """Each `<order>`'s significant key value as the request document names it (the prefix and number for
    order_number_and_prefix), best effort: nothing for a document that does not parse, none for an order without."""
    try:
        document = parse_untrusted_xml(text.encode("utf-8"))
    except UntrustedXmlError:
        return ()
    values = []
    for order in document.iterfind("order"):
        key = order.get("significant_key") or "order_number"
        if key == "order_number_and_prefix":
            value = order.findtext("order_number_prefix", "").strip() + order.findtext("order_number", "").strip()
        else:
            value = order.findtext(key, "").strip() if key in KEY_ELEMENTS else ""
        if value:
            values.append(value)
    return tuple(values)


def _optional_text(element: etree._Element, name: str) -> str | None:
    """The text of an optional child element; None when it is absent or empty."""
    return element.findtext(name) or None


def read_order_status_updates(document: etree._Element) -> tuple[OrderStatusUpdate, ...]:
    """Read every `<order>` of a schema-valid request document, in document order."""
    return tuple(_read_order_status_update(order) for order in document.iterfind("order"))


def _read_order_status_update(order: etree._Element) -> OrderStatusUpdate:
    """Read one `<order>`: its key, identifying elements, status and information blocks."""
    return OrderStatusUpdate(
        significant_key=order.get("significant_key"),
        mandator_id=int(order.findtext("mandator_id")),
        status=order.findtext("status"),
        keys=MappingProxyType({name: order.findtext(name) for name in KEY_ELEMENTS if order.find(name) is not None}),
        shipping_informations=tuple(
            _read_shipping_information(shipping)
            for shipping in order.iterfind("shipping_informations/shipping_information")
        ),
        payment_informations=tuple(
            _read_payment_information(payment) for payment in order.iterfind("payment_informations/payment_information")
        ),
        export_times=tuple(
            export_time.text.strip()
            for export_time in order.iterfind("acknowledgement_informations/acknowledgement_information/export_time")
        ),
    )


def _read_shipping_information(shipping: etree._Element) -> ShippingInformation:
    """Read one `<shipping_information>` (a package)."""
    return ShippingInformation(
        tracking_number=shipping.findtext("tracking_number"),
        shipping_provider_identifier=_optional_text(shipping, "shipping_provider_identifier"),
        shipping_provider_external_id=_optional_text(shipping, "shipping_provider_external_id"),
    )


def _read_payment_information(payment: etree._Element) -> PaymentInformation:
    """Read one `<payment_information>`, whichever of its two variants it uses."""
    status_id = payment.findtext("payment_status_id")
    return PaymentInformation(
        payment_status_id=None if status_id is None else int(status_id),
        payment_status_identifier=_optional_text(payment, "payment_status_identifier"),
    )


def render_response_document(reports: list[OrderReport]) -> str:
    """Write the `<response>` document with one `<report>` per order, as the text that travels in `return`."""
    response = etree.Element("response", {"method": OPERATION, "version": DOCUMENT_VERSION})
    for report in reports:
        report_element = etree.SubElement(response, "report", {"return_code": str(report.return_code)})
        if report.error_description is not None:
            etree.SubElement(report_element, "error_description").text = report.error_description
    return etree.tostring(response, xml_declaration=True, encoding="UTF-8").decode("utf-8")


def render_update_order_status_response(body: etree._Element, namespace: str, response_document: str) -> None:
    """Write updateOrderStatusResponse, its `return` field holding the response document, into a reply Body."""
    operation_response = etree.SubElement(body, f"{{{namespace}}}{OPERATION}Response", nsmap={"ns": namespace})
    etree.SubElement(operation_response, RESPONSE_FIELD).text = response_document
