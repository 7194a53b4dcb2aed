"""The one hardened XML parser for everything from outside, and XSDs compiled once.

External documents never get entities resolved, DTDs loaded, the network touched, or a huge tree built; a
document that carries a DOCTYPE at all is refused, because no backend reply needs one and entity bombs do.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from lxml import etree

from gateway.errors import TranslationError

XSD_DIR = Path(__file__).resolve().parent.parent / "xsd"


class UnsafeXML(ValueError):
    """The document is not well-formed XML, or carries a DOCTYPE."""


def _hardened_parser() -> etree.XMLParser:
    """A parser that resolves nothing and loads nothing."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


# lxml parsers are not thread-safe, so every thread gets its own.
_parsers = threading.local()


def hardened_parser() -> etree.XMLParser:
    """This thread's hardened parser."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = _hardened_parser()
    return parser


def parse_untrusted_xml(data: bytes) -> etree._Element:
    """Parse bytes from outside; raises UnsafeXML for malformed documents and for any DOCTYPE."""
    if not data or data.isspace():
        raise UnsafeXML("the document is empty")
    try:
        root = etree.fromstring(data, parser=hardened_parser())
    except etree.XMLSyntaxError as error:
        raise UnsafeXML(f"not well-formed XML: {error.msg}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise UnsafeXML("the document carries a DOCTYPE, which is refused")
    return root


def parse_trusted_template(path: str | os.PathLike) -> etree._Element:
    """Parse one of the gateway's own templates, dropping the whitespace between elements."""
    parser = etree.XMLParser(
        remove_blank_text=True, resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True
    )
    return etree.parse(str(path), parser).getroot()


@functools.cache
def load_xsd(relative_path: str) -> etree.XMLSchema:
    """Compile an XSD from xsd/ once per process (imports resolve to local files only)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.parse(str(XSD_DIR / relative_path), parser))


def check_rendered_document(document: etree._Element, relative_path: str, what: str) -> None:
    """Raise TranslationError unless the gateway's own rendering passes its XSD (a gateway bug, never sent)."""
    schema = load_xsd(relative_path)
    if not schema.validate(document):
        error = schema.error_log.last_error
        raise TranslationError(f"The rendered {what} failed xsd/{relative_path} (line {error.line}): {error.message}")
