"""The hardened lxml parsers for every XML document that reaches the sandbox from outside.

`parse_untrusted_xml` lets the document say how it is encoded (its BOM or its XML declaration), as a file would.
`parse_untrusted_utf8_xml` is for a body whose encoding the transport has already fixed as UTF-8, as SOAP 1.1's
`text/xml; charset=utf-8` does: the bytes must be UTF-8, and an `encoding` in the XML declaration plays no part.
"""

from lxml import etree

_HARDENING = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": True,
}
HARDENED_PARSER = etree.XMLParser(**_HARDENING)
# An encoding given to the parser overrides whatever the XML declaration says.
HARDENED_UTF8_PARSER = etree.XMLParser(encoding="utf-8", **_HARDENING)


class UntrustedXmlError(ValueError):
    """The document is not well-formed XML, or carries a document type declaration."""


def parse_untrusted_xml(data: bytes) -> etree._Element:
    """Parse `data` with the hardened parser and refuse any document that declares a DOCTYPE."""
    return _parse_hardened(data, HARDENED_PARSER)


def parse_untrusted_utf8_xml(data: bytes) -> etree._Element:
    """Parse `data` as UTF-8 whatever its XML declaration says, and refuse invalid UTF-8 and any DOCTYPE."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UntrustedXmlError(
            f"The request is not well-formed XML in UTF-8, the charset of its Content-Type: byte "
            f"0x{data[error.start]:02X} at offset {error.start} is not valid UTF-8."
        ) from error
    return _parse_hardened(data, HARDENED_UTF8_PARSER)


def _parse_hardened(data: bytes, parser: etree.XMLParser) -> etree._Element:
    """Parse `data` with one of the hardened parsers and refuse any document that declares a DOCTYPE."""
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as error:
        raise UntrustedXmlError(f"The request is not well-formed XML: {error}") from error
    docinfo = root.getroottree().docinfo
    # Entities are never expanded by these parsers, but a DTD has no business in a SOAP message at all.
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise UntrustedXmlError("A document type declaration (DOCTYPE) is not allowed in a SOAP message.")
    return root
