"""SOAP 1.1 and 1.2 as a PHP SoapServer speaks them: version by content type, request envelopes, replies, faults."""

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lxml import etree

from sandbox.untrusted_xml import UntrustedXmlError, parse_untrusted_xml

SOAP11_ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENVELOPE_NS = "http://www.w3.org/2003/05/soap-envelope"
XML_NS = "http://www.w3.org/XML/1998/namespace"


class FaultCode(enum.Enum):
    """What went wrong, independent of the SOAP version that names it."""

    SENDER = "sender"
    VERSION_MISMATCH = "version_mismatch"
    MUST_UNDERSTAND = "must_understand"


@dataclass(frozen=True)
class SoapVersion:
    """Everything in which SOAP 1.1 and SOAP 1.2 differ for this service."""

    name: str
    envelope_ns: str
    media_type: str
    prefix: str
    fault_codes: Mapping[FaultCode, str]

    @property
    def content_type(self) -> str:
        """The Content-Type of a reply in this version."""
        return f"{self.media_type}; charset=utf-8"

    def qualify(self, local_name: str) -> str:
        """Qualify a local name with this version's envelope namespace."""
        return f"{{{self.envelope_ns}}}{local_name}"


SOAP11 = SoapVersion(
    name="1.1",
    envelope_ns=SOAP11_ENVELOPE_NS,
    media_type="text/xml",
    prefix="soap",
    fault_codes=MappingProxyType(
        {
            FaultCode.SENDER: "Client",
            FaultCode.VERSION_MISMATCH: "VersionMismatch",
            FaultCode.MUST_UNDERSTAND: "MustUnderstand",
        }
    ),
)
SOAP12 = SoapVersion(
    name="1.2",
    envelope_ns=SOAP12_ENVELOPE_NS,
    media_type="application/soap+xml",
    prefix="env",
    fault_codes=MappingProxyType(
        {
            FaultCode.SENDER: "Sender",
            FaultCode.VERSION_MISMATCH: "VersionMismatch",
            FaultCode.MUST_UNDERSTAND: "MustUnderstand",
        }
    ),
)
SOAP_VERSIONS = (SOAP11, SOAP12)


class SoapFault(Exception):
    """A fault to answer with, in the SOAP version of the request."""

    def __init__(self, code: FaultCode, text: str, http_status: int = 500):
        super().__init__(text)
        self.code = code
        self.text = text
        self.http_status = http_status


def find_soap_version(mimetype: str) -> SoapVersion | None:
    """The SOAP version whose media type a request's Content-Type names, if any."""
    for version in SOAP_VERSIONS:
        if mimetype == version.media_type:
            return version
    return None


def check_soap_content_type(version: SoapVersion | None, mimetype: str, charset: str | None) -> None:
    """Refuse, with HTTP 415, a Content-Type that names no SOAP version or a charset other than UTF-8."""
    if version is None:
        raise SoapFault(
            FaultCode.SENDER,
            f"Unsupported Content-Type '{mimetype}': this service expects {SOAP11.content_type} (SOAP 1.1) "
            f"or {SOAP12.content_type} (SOAP 1.2).",
            http_status=415,
        )
    if charset is not None and charset.lower() != "utf-8":
        raise SoapFault(
            FaultCode.SENDER,
            f"Unsupported charset '{charset}': this service expects {version.content_type}.",
            http_status=415,
        )


def read_soap_operation(version: SoapVersion, data: bytes) -> etree._Element:
    """Parse a request envelope of `version` and return the single operation element inside its Body."""
    try:
        envelope = parse_untrusted_xml(data)
    except UntrustedXmlError as error:
        raise SoapFault(FaultCode.SENDER, f"Bad Request. {error}") from error
    if envelope.tag != version.qualify("Envelope"):
        if etree.QName(envelope).localname == "Envelope":
            raise SoapFault(
                FaultCode.VERSION_MISMATCH,
                f"Wrong Version: the Content-Type names SOAP {version.name}, whose Envelope namespace is "
                f"{version.envelope_ns}, but the Envelope is in '{etree.QName(envelope).namespace or ''}'.",
            )
        raise SoapFault(FaultCode.SENDER, "Bad Request. The root element is not a SOAP Envelope.")
    parts = [child for child in envelope if isinstance(child.tag, str)]
    header = parts.pop(0) if parts and parts[0].tag == version.qualify("Header") else None
    if len(parts) != 1 or parts[0].tag != version.qualify("Body"):
        raise SoapFault(FaultCode.SENDER, "Bad Request. The Envelope must hold one Body.")
    if header is not None:
        _refuse_headers_to_understand(version, header)
    operations = [child for child in parts[0] if isinstance(child.tag, str)]
    if len(operations) != 1:
        raise SoapFault(FaultCode.SENDER, "Bad Request. The Body must hold exactly one operation element.")
    return operations[0]


def _refuse_headers_to_understand(version: SoapVersion, header: etree._Element) -> None:
    """Fault on a header entry marked mustUnderstand, since this service understands none."""
    for entry in header:
        if isinstance(entry.tag, str) and entry.get(version.qualify("mustUnderstand")) in ("1", "true"):
            raise SoapFault(FaultCode.MUST_UNDERSTAND, f"Header '{etree.QName(entry).localname}' was not understood.")


def new_soap_envelope(version: SoapVersion) -> tuple[etree._Element, etree._Element]:
    """Create an empty reply Envelope of `version`, and return it with its Body."""
    envelope = etree.Element(version.qualify("Envelope"), nsmap={version.prefix: version.envelope_ns})
    return envelope, etree.SubElement(envelope, version.qualify("Body"))


def serialize_soap_envelope(envelope: etree._Element) -> bytes:
    """Serialize an Envelope as UTF-8 with an XML declaration."""
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def render_soap_fault(version: SoapVersion, fault: SoapFault) -> bytes:
    """Render `fault` in `version`: faultcode/faultstring for SOAP 1.1, Code/Reason for SOAP 1.2."""
    envelope, body = new_soap_envelope(version)
    fault_element = etree.SubElement(body, version.qualify("Fault"))
    code = f"{version.prefix}:{version.fault_codes[fault.code]}"
    if version is SOAP11:
        etree.SubElement(fault_element, "faultcode").text = code
        etree.SubElement(fault_element, "faultstring").text = fault.text
    else:
        code_element = etree.SubElement(fault_element, version.qualify("Code"))
        etree.SubElement(code_element, version.qualify("Value")).text = code
        reason = etree.SubElement(fault_element, version.qualify("Reason"))
        text = etree.SubElement(reason, version.qualify("Text"))
        text.set(f"{{{XML_NS}}}lang", "en")
        text.text = fault.text
    return serialize_soap_envelope(envelope)
