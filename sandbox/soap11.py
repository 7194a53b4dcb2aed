"""SOAP 1.1 as an ASMX web service speaks it: request checks, response envelopes and faults.

The HTTP Content-Type's charset governs how a request is decoded, and only UTF-8 is accepted. An `encoding` in the
XML declaration that says otherwise is ignored: ASMX decodes the body with the HTTP charset and hands its XML
reader text, so the declaration's encoding plays no part. Ongoing's own example requests declare
`encoding="utf-16"` over UTF-8 text, and Ongoing serves them. A body that is not valid UTF-8 is a Client fault.
"""

from collections.abc import Collection

from lxml import etree

from sandbox.untrusted_xml import UntrustedXmlError, parse_untrusted_utf8_xml

SOAP11_ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
SOAP11_CONTENT_TYPE = "text/xml; charset=utf-8"

ENVELOPE_NSMAP = {"soap": SOAP11_ENVELOPE_NS, "xsi": XSI_NS, "xsd": XSD_NS}
_ENVELOPE = f"{{{SOAP11_ENVELOPE_NS}}}Envelope"
_HEADER = f"{{{SOAP11_ENVELOPE_NS}}}Header"
_BODY = f"{{{SOAP11_ENVELOPE_NS}}}Body"
_FAULT = f"{{{SOAP11_ENVELOPE_NS}}}Fault"
_MUST_UNDERSTAND = f"{{{SOAP11_ENVELOPE_NS}}}mustUnderstand"


class SoapFault(Exception):
    """A SOAP 1.1 fault to send back; `faultcode` is the local part (Client, Server, VersionMismatch, ...)."""

    def __init__(self, faultcode: str, faultstring: str, http_status: int = 500):
        super().__init__(faultstring)
        self.faultcode = faultcode
        self.faultstring = faultstring
        self.http_status = http_status


def check_soap11_content_type(mimetype: str, charset: str | None) -> None:
    """Refuse anything but `text/xml` in UTF-8, the only content type of a SOAP 1.1 request."""
    if mimetype != "text/xml" or (charset is not None and charset.lower() != "utf-8"):
        sent = mimetype + (f"; charset={charset}" if charset else "")
        raise SoapFault(
            "Client",
            f"Unsupported Content-Type '{sent}': this service speaks SOAP 1.1 and expects {SOAP11_CONTENT_TYPE}.",
            http_status=415,
        )


def read_soap_action(header_value: str | None, known_actions: Collection[str]) -> str:
    """The SOAPAction header without its quotes; a fault unless it is one of `known_actions`."""
    action = (header_value or "").strip()
    if len(action) >= 2 and action.startswith('"') and action.endswith('"'):
        action = action[1:-1]
    if action not in known_actions:
        raise SoapFault("Client", f"Server did not recognize the value of HTTP Header SOAPAction: {action}.")
    return action


def check_operation_element(operation: etree._Element, expected_tag: str, soap_action: str) -> None:
    """Refuse a Body whose operation element is not the one the SOAPAction names."""
    if operation.tag != expected_tag:
        raise SoapFault(
            "Client",
            f"Server was unable to read request. The body element {etree.QName(operation).localname} "
            f"in namespace '{etree.QName(operation).namespace or ''}' does not match the SOAPAction "
            f"{soap_action}.",
        )


def read_soap11_operation(data: bytes) -> etree._Element:
    """Parse a SOAP 1.1 request as UTF-8 and return the single operation element inside its Body."""
    try:
        envelope = parse_untrusted_utf8_xml(data)
    except UntrustedXmlError as error:
        raise SoapFault("Client", f"Server was unable to read request. {error}") from error
    if envelope.tag != _ENVELOPE:
        if etree.QName(envelope).localname == "Envelope":
            raise SoapFault(
                "VersionMismatch",
                f"Possible SOAP version mismatch: Envelope namespace {etree.QName(envelope).namespace} "
                f"was unexpected. Expecting {SOAP11_ENVELOPE_NS}.",
            )
        raise SoapFault("Client", "Server was unable to read request. The root element is not a SOAP Envelope.")
    parts = [child for child in envelope if isinstance(child.tag, str)]
    header = parts.pop(0) if parts and parts[0].tag == _HEADER else None
    if len(parts) != 1 or parts[0].tag != _BODY:
        raise SoapFault("Client", "Server was unable to read request. The Envelope must hold one Body.")
    if header is not None:
        _refuse_headers_to_understand(header)
    operations = [child for child in parts[0] if isinstance(child.tag, str)]
    if len(operations) != 1:
        raise SoapFault(
            "Client", "Server was unable to read request. The Body must hold exactly one operation element."
        )
    return operations[0]


def _refuse_headers_to_understand(header: etree._Element) -> None:
    """Fault on a header entry marked mustUnderstand, since this service understands none."""
    for entry in header:
        if isinstance(entry.tag, str) and entry.get(_MUST_UNDERSTAND) in ("1", "true"):
            raise SoapFault("MustUnderstand", f"SOAP header {etree.QName(entry).localname} was not understood.")


def new_soap11_envelope() -> tuple[etree._Element, etree._Element]:
    """Create an empty response Envelope with the soap/xsi/xsd prefixes, and return it with its Body."""
    envelope = etree.Element(_ENVELOPE, nsmap=ENVELOPE_NSMAP)
    return envelope, etree.SubElement(envelope, _BODY)


def serialize_soap11_envelope(envelope: etree._Element) -> bytes:
    """Serialize an Envelope as UTF-8 with an XML declaration."""
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def render_soap11_fault(fault: SoapFault) -> bytes:
    """Render `fault` as an ASMX service does: soap:Fault with faultcode, faultstring and an empty detail."""
    envelope, body = new_soap11_envelope()
    fault_element = etree.SubElement(body, _FAULT)
    etree.SubElement(fault_element, "faultcode").text = f"soap:{fault.faultcode}"
    etree.SubElement(fault_element, "faultstring").text = fault.faultstring
    etree.SubElement(fault_element, "detail")
    return serialize_soap11_envelope(envelope)
