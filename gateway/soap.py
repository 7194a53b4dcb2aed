"""SOAP envelopes: building requests in SOAP 1.1 or 1.2, and reading a Fault of either version.

Replies are classified (payload, fault, HTML page or garbage) in replies.py; faults are read here for any
prefix or none, since backends differ.
"""

from __future__ import annotations

from lxml import etree

from gateway import ns

SOAP_VERSIONS = {"1.1": ns.SOAP11_ENVELOPE, "1.2": ns.SOAP12_ENVELOPE}


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


def child_element(element: etree._Element, localname: str) -> etree._Element | None:
    """The first child element with this local name, in any namespace."""
    # lxml spells a tag "{namespace}localname" or "localname", and a parsed namespace name holds no "}" (libxml2
    # refuses it as no URI): the tag's end names the element without a QName made for every child.
    suffix = "}" + localname
    for child in element:
        tag = child.tag
        if isinstance(tag, str) and (tag == localname or tag.endswith(suffix)):
            return child
    return None


def _text_of(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return " ".join("".join(element.itertext()).split()) or None


def read_fault(fault: etree._Element) -> tuple[str | None, str]:
    """The (code, reason) of a SOAP 1.1 or 1.2 Fault element."""
    code = _text_of(child_element(fault, "faultcode"))
    reason = _text_of(child_element(fault, "faultstring"))
    if code is None:  # SOAP 1.2: Code/Value, Reason/Text
        code_element = child_element(fault, "Code")
        code = _text_of(child_element(code_element, "Value")) if code_element is not None else None
    if reason is None:
        reason_element = child_element(fault, "Reason")
        reason = _text_of(child_element(reason_element, "Text")) if reason_element is not None else None
    return code, reason or "no reason given"
