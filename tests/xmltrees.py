"""Compare XML documents as trees (tags, attributes, text), ignoring formatting whitespace and prefixes."""

from __future__ import annotations

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
