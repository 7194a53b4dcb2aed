"""The one hardened lxml parser for every XML document that reaches the sandbox from outside."""

from lxml import etree

HARDENED_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_comments=True,
)


class UntrustedXmlError(ValueError):
    """The document is not well-formed XML, or carries a document type declaration."""


def parse_untrusted_xml(data: bytes) -> etree._Element:
    """Parse `data` with the hardened parser and refuse any document that declares a DOCTYPE."""
    try:
        root = etree.fromstring(data, HARDENED_PARSER)
    except etree.XMLSyntaxError as error:
        raise UntrustedXmlError(f"The request is not well-formed XML: {error}") from error
    docinfo = root.getroottree().docinfo
    # Entities are never expanded by this parser, but a DTD has no business in a SOAP message at all.
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise UntrustedXmlError("A document type declaration (DOCTYPE) is not allowed in a SOAP message.")
    return root
