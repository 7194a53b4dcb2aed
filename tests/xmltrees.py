"""Compare XML documents as trees (tags, attributes, text), ignoring formatting whitespace and prefixes; and say
which element an XSD refused, by which of its rules, without reading libxml2's wording."""

from __future__ import annotations

from typing import NamedTuple

from lxml import etree


def _text(value: str | None) -> str:
    return (value or "").strip()


def assert_nodes_equal(expected: etree._Element, actual: etree._Element, path: str = "") -> None:
    """Fail with the path of the first difference between two element trees."""
    here = f"{path}/{etree.QName(expected).localname}"
    assert actual.tag == expected.tag, f"{here}: tag {actual.tag} != {expected.tag}"
    assert dict(actual.attrib) == dict(expected.attrib), f"{here}: attributes {dict(actual.attrib)}"
    assert _text(actual.text) == _text(expected.text), f"{here}: text {actual.text!r} != {expected.text!r}"
    expected_children = [child for child in expected if isinstance(child.tag, str)]
    actual_children = [child for child in actual if isinstance(child.tag, str)]
    assert [c.tag for c in actual_children] == [c.tag for c in expected_children], f"{here}: children differ"
    for expected_child, actual_child in zip(expected_children, actual_children, strict=True):
        assert_nodes_equal(expected_child, actual_child, here)


def parse(data: bytes) -> etree._Element:
    """Parse a document for comparison."""
    return etree.fromstring(data, etree.XMLParser(remove_blank_text=True, resolve_entities=False))


class XsdRefusal(NamedTuple):
    """One finding of an XSD validation, as libxml2 reports it."""

    element: str  # the local name of the element refused (or whose attribute or children were)
    check: str  # libxml2's error type, the rule that refused it: SCHEMAV_ELEMENT_CONTENT, ..._ENUMERATION_VALID
    message: str  # libxml2's wording: to compare with what a reply passes on, never with a literal


def xsd_refusals(schema: etree.XMLSchema, document: etree._Element) -> list[XsdRefusal]:
    """What `schema` refuses in `document`, in the order libxml2 reports it (empty if the document is valid)."""
    if schema.validate(document):
        return []
    tree = document.getroottree()
    elements = {tree.getpath(element): element for element in document.iter() if isinstance(element.tag, str)}
    return [XsdRefusal(etree.QName(elements[error.path]).localname, error.type_name, error.message)
            for error in schema.error_log]
