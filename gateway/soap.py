"""SOAP envelopes: building requests in SOAP 1.1 or 1.2, and reading replies — the Body's payload, or a
fault, an HTML page or garbage turned into a BackendError.

Reading works for both versions and for faults written with any prefix or none, since backends differ.
"""

from __future__ import annotations

from lxml import etree

from gateway import ns
from gateway.errors import BackendFailure
from gateway.safexml import UnsafeXML, parse_untrusted_xml
from gateway.transport import BackendReply

ENVELOPE_NAMESPACES = frozenset({ns.SOAP11_ENVELOPE, ns.SOAP12_ENVELOPE})
SOAP_VERSIONS = {"1.1": ns.SOAP11_ENVELOPE, "1.2": ns.SOAP12_ENVELOPE}
XML_MEDIA_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
_EXCERPT = 200


def wrap_in_envelope(operation: etree._Element, version: str) -> etree._Element:
    """A soap:Envelope of the given version ("1.1" or "1.2") whose Body holds `operation`."""
    envelope_ns = SOAP_VERSIONS[version]
    envelope = etree.Element(f"{{{envelope_ns}}}Envelope", nsmap={"soap": envelope_ns})
    etree.SubElement(envelope, f"{{{envelope_ns}}}Body").append(operation)
    return envelope


def soap_request_headers(version: str, action: str) -> dict[str, str]:
    """The HTTP headers of a SOAP request: SOAPAction for 1.1, the action parameter of the media type for 1.2."""
    if version == "1.1":
        return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'}
    if not action:
        return {"Content-Type": "application/soap+xml; charset=utf-8"}
    return {"Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"'}


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _child(element: etree._Element, localname: str) -> etree._Element | None:
    for child in element:
        if isinstance(child.tag, str) and _local(child) == localname:
            return child
    return None


def _text_of(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return " ".join("".join(element.itertext()).split()) or None


def read_fault(fault: etree._Element) -> tuple[str | None, str]:
    """The (code, reason) of a SOAP 1.1 or 1.2 Fault element."""
    code = _text_of(_child(fault, "faultcode"))
    reason = _text_of(_child(fault, "faultstring"))
    if code is None:  # SOAP 1.2: Code/Value, Reason/Text
        code_element = _child(fault, "Code")
        code = _text_of(_child(code_element, "Value")) if code_element is not None else None
    if reason is None:
        reason_element = _child(fault, "Reason")
        reason = _text_of(_child(reason_element, "Text")) if reason_element is not None else None
    return code, reason or "no reason given"


def _describe_body(reply: BackendReply) -> str:
    kind = reply.content_type or "no content type"
    return f"HTTP {reply.status}, {kind}"


def unwrap_soap_reply(reply: BackendReply, connection: str) -> etree._Element:
    """The first element inside soap:Body of a successful reply; raises BackendFailure for anything else."""
    def failure(detail: str, code: str | None = None, message: str | None = None) -> BackendFailure:
        return BackendFailure(detail, connection=connection, code=code, message=message)

    if reply.status in (401, 403, 407):
        raise failure(f"The backend refused the gateway's credentials (HTTP {reply.status}).",
                      code=f"HTTP {reply.status}")
    if not reply.body.strip():
        raise failure(f"The backend sent an empty reply ({_describe_body(reply)}).", code=f"HTTP {reply.status}")
    if reply.content_type and reply.content_type not in XML_MEDIA_TYPES and not reply.content_type.endswith("+xml"):
        raise failure(f"The backend sent a reply that is not XML ({_describe_body(reply)}).",
                      code=f"HTTP {reply.status}")
    try:
        root = parse_untrusted_xml(reply.body)
    except UnsafeXML as error:
        raise failure(f"The backend sent an unusable reply ({_describe_body(reply)}): {error}.",
                      code=f"HTTP {reply.status}") from None

    if etree.QName(root).namespace not in ENVELOPE_NAMESPACES or _local(root) != "Envelope":
        raise failure(f"The backend's reply is not a SOAP envelope ({_describe_body(reply)}).",
                      code=f"HTTP {reply.status}")
    body = _child(root, "Body")
    payload = next((child for child in body if isinstance(child.tag, str)), None) if body is not None else None
    if payload is None:
        raise failure(f"The backend's SOAP reply has an empty Body ({_describe_body(reply)}).",
                      code=f"HTTP {reply.status}")
    if _local(payload) == "Fault" and etree.QName(payload).namespace in ENVELOPE_NAMESPACES:
        code, reason = read_fault(payload)
        raise failure(f"The backend answered with a SOAP fault: {reason[:_EXCERPT]}", code=code, message=reason)
    if reply.status != 200:
        raise failure(f"The backend answered HTTP {reply.status}.", code=f"HTTP {reply.status}")
    return payload
