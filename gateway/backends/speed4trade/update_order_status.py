"""Speed4Trade CONNECT's updateOrderStatus (basic call): a request document carried inside SOAP.

How calls travel (reference/speed4trade/NOTES.md): the `<request method="updateOrderStatus">` document is
escaped text in the string parameter `argRequestData` of the SOAP operation `updateOrderStatus`; the reply's
string `return` holds a `<response>` document with one `<report return_code="N">` per order.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

from lxml import etree

from gateway.backends.base import Backend, Credentials, Operation
from gateway.canonical import OrderUpdate, Payment, Shipment, UpdateOutcome
from gateway.errors import BackendError, BackendFailure
from gateway.safejson import parse_ascii_int
from gateway.safexml import UnsafeXML, check_rendered_document, load_xsd, parse_trusted_template, parse_untrusted_xml
from gateway.soap import soap_request_headers, wrap_in_envelope
from gateway.transport import OutboundRequest

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "update_order_status.xml"
XSD_PATH = "speed4trade/update_order_status.xsd"
OPERATION = "updateOrderStatus"
PARAMETER = "argRequestData"
NUMERIC_KEYS = frozenset({"order_number", "order_number_and_prefix"})

#: backend status that must accompany each kind of status-specific information, and the canonical field
STATUS_OF_INFORMATION = {
    "shipments": ("SHIPPED", "Shipments", "shipping information"),
    "payment": ("PAID", "A payment", "payment information"),
    "acknowledged_at": ("ACKNOWLEDGED", "acknowledged_at", "the acknowledgement time"),
}


@functools.cache
def _request_template() -> etree._Element:
    return parse_trusted_template(TEMPLATE_PATH)


def _fill_repeated(wrapper: etree._Element, items: Sequence[Any], fill: Any) -> None:
    """Repeat the wrapper's single template child once per item, filled by `fill(child, item)`."""
    template = wrapper[0]
    wrapper.remove(template)
    for item in items:
        child = copy.deepcopy(template)
        fill(child, item)
        for element in list(child):
            if element.text is None:
                child.remove(element)
        wrapper.append(child)


# The template fixes each information element's children and their order, so they are unpacked, not searched for.


def _fill_shipment(element: etree._Element, shipment: Shipment) -> None:
    tracking_number, provider_identifier, provider_external_id = element
    tracking_number.text = shipment.tracking_number
    provider_identifier.text = shipment.carrier
    provider_external_id.text = shipment.carrier_external_id


def _fill_payment(element: etree._Element, payment: Payment) -> None:
    status_id, status_identifier = element
    status_id.text = None if payment.status_id is None else str(payment.status_id)
    status_identifier.text = payment.status


def _fill_acknowledgement(element: etree._Element, export_time: date) -> None:
    (time_element,) = element
    time_element.text = export_time.isoformat()


class UpdateOrderStatus(Operation):
    """updateOrderStatus: a status per order, with the shipping, payment or acknowledgement it needs."""

    name: ClassVar[str] = OPERATION
    carries: ClassVar = frozenset({"status", "shipments", "payment", "acknowledged_at"})
    # Not idempotent: shipping information sent twice may be stored twice.
    idempotent: ClassVar[bool] = False

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        options = self.settings.options
        # Compiled once per process, at start-up rather than on the first request.
        self.template = _request_template()
        load_xsd(XSD_PATH)
        self.soap_version = options["soap_version"]
        self.operation_tag = f"{{{options['namespace']}}}{OPERATION}"
        self.headers = soap_request_headers(self.soap_version, options["soap_action"])
        self.not_found_codes = frozenset(options["not_found_return_codes"])
        self.conflict_codes = frozenset(options["conflict_return_codes"])

    def check_update(self, update: OrderUpdate) -> dict[str, list[str]]:
        """The call's rules: status required, numeric order numbers, prefixes, status-specific information."""
        backend = self.backend
        errors: dict[str, list[str]] = {}
        id_type = backend.effective_id_type(update)
        status = backend.backend_status_code(update)
        if "status" not in update.changes:
            errors["status"] = ["Required by backend 'speed4trade': updateOrderStatus always sets a status."]
        if id_type in NUMERIC_KEYS and not (update.order_id.isascii() and update.order_id.isdigit()):
            errors["id"] = [f"With id_type {id_type} the order id must be Speed4Trade's integer order_number."]
        if id_type == "order_number_and_prefix" and "order_number_prefix" not in update.identification:
            errors["order_number_prefix"] = ["Required with id_type order_number_and_prefix."]
        if id_type != "order_number_and_prefix" and "order_number_prefix" in update.identification:
            errors["order_number_prefix"] = ["Only used with id_type order_number_and_prefix."]
        for name, (required_status, subject, information) in STATUS_OF_INFORMATION.items():
            if name in update.changes and status != required_status:
                canonical = next((key for key, code in backend.status_map.items() if code == required_status), "?")
                errors.setdefault(name, []).append(
                    f"{subject} can only be sent together with status {canonical!r}: Speed4Trade stores "
                    f"{information} only with the change to {required_status}."
                )
        for position, shipment in enumerate(update.changes.get("shipments", ())):
            if shipment.carrier is None and shipment.carrier_external_id is None:
                errors[f"shipments.{position}"] = [
                    "Give carrier or carrier_external_id: Speed4Trade needs one of them for package data."
                ]
        return errors

    def render_order_status_document(self, updates: Sequence[OrderUpdate]) -> etree._Element:
        """The `<request method="updateOrderStatus">` document with one `<order>` per update."""
        document = copy.deepcopy(self.template)
        order_template = document[0]
        document.remove(order_template)
        for update in updates:
            order = copy.deepcopy(order_template)
            id_type = self.backend.effective_id_type(update)
            order.set("significant_key", id_type)
            key_element = "order_number" if id_type == "order_number_and_prefix" else id_type
            children = {child.tag: child for child in order}  # one pass instead of a search per element
            children[key_element].text = update.order_id
            children["mandator_id"].text = str(
                update.identification.get("mandator_id", self.settings.options["mandator_id"])
            )
            children["order_number_prefix"].text = update.identification.get("order_number_prefix")
            children["status"].text = self.backend.backend_status_code(update)
            informations = {
                "shipping_informations": (update.changes.get("shipments"), _fill_shipment),
                "payment_informations": ([update.changes["payment"]] if "payment" in update.changes else None,
                                         _fill_payment),
                "acknowledgement_informations": (
                    [update.changes["acknowledged_at"]] if "acknowledged_at" in update.changes else None,
                    _fill_acknowledgement,
                ),
            }
            for element in list(order):
                if element.tag in informations:
                    items, fill = informations[element.tag]
                    if items:
                        _fill_repeated(element, items, fill)
                    else:
                        order.remove(element)
                elif element.text is None:
                    order.remove(element)
            document.append(order)
        check_rendered_document(document, XSD_PATH, OPERATION)
        return document

    def render(self, updates: Sequence[OrderUpdate], credentials: Credentials) -> OutboundRequest:
        """Render, validate, and wrap the document as the argRequestData string of a SOAP call.

        The credentials travel as HTTP Basic, added by the connection's transport, not in the document.
        """
        document = self.render_order_status_document(updates)
        operation = etree.Element(self.operation_tag, nsmap={"ns1": etree.QName(self.operation_tag).namespace})
        etree.SubElement(operation, PARAMETER).text = etree.tostring(document, encoding="unicode")
        envelope = wrap_in_envelope(operation, self.soap_version)
        return OutboundRequest(
            method="POST",
            url=self.settings.url,
            headers=self.headers,
            body=etree.tostring(envelope, xml_declaration=True, encoding="utf-8"),
        )

    def read_reports(self, payload: etree._Element) -> list[tuple[int, str | None]]:
        """The (return_code, error_description) of every report in the reply, in request order."""
        name = self.backend.name
        if etree.QName(payload).localname != f"{OPERATION}Response":
            raise BackendFailure(f"The backend's reply is not an {OPERATION}Response.", connection=name)
        returned = next((child for child in payload if etree.QName(child).localname == "return"), None)
        try:
            response = parse_untrusted_xml((returned.text or "").encode("utf-8") if returned is not None else b"")
        except UnsafeXML as error:
            raise BackendFailure(f"The backend's return value is not a usable response document: {error}.",
                                 connection=name) from None
        if response.tag != "response" or response.get("method") != OPERATION:
            raise BackendFailure(f"The backend's return value is not an {OPERATION} response document.",
                                 connection=name)
        reports = []
        for report in response.iter("report"):
            code = parse_ascii_int(report.get("return_code"), max_digits=9)
            if code is None:
                raise BackendFailure("The backend sent a report without an integer return_code.", connection=name)
            description = report.findtext("error_description")
            reports.append((code, description.strip() if description else None))
        return reports

    def outcome_of_report(self, code: int, description: str | None) -> UpdateOutcome | BackendError:
        """An UpdateOutcome for return code 0; the mapped BackendError for a refusal."""
        if code == 0:
            return UpdateOutcome(backend_order_id=None, message="Order status updated.")
        if code < 0:
            return self.backend.refusal(not_found=code in self.not_found_codes, conflict=code in self.conflict_codes,
                                        code=str(code), message=description)
        details = {"connection": self.backend.name, "code": str(code), "message": description}
        return BackendFailure(f"The backend sent an undocumented positive return code {code}.", **details)

    def parse(self, payload: etree._Element, updates: Sequence[OrderUpdate], *,
              retry_after: str | None = None) -> list[UpdateOutcome | BackendError]:
        """One report per order, matched by position; a reply with another number of reports fails the call."""
        reports = self.read_reports(payload)
        if len(reports) != len(updates):
            raise BackendFailure(f"The backend sent {len(reports)} reports for {len(updates)} orders.",
                                 connection=self.backend.name)
        return [self.outcome_of_report(code, description) for code, description in reports]
