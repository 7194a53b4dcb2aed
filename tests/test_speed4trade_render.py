"""Speed4Trade updateOrderStatus: golden documents, the SOAP wrapping in both versions, the XSD gate, the
call's rules, and the mapping of reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from gateway.canonical import load_order_update
from gateway.errors import (
    BackendError,
    BackendFailure,
    BackendRejected,
    OrderNotFound,
    OrderStateConflict,
    TranslationError,
    ValidationFailed,
)
from gateway.safexml import load_xsd
from gateway.transport import BackendReply
from tests.calls import make_connection, parse_reply, render
from tests.conftest import SPEED4TRADE_NAMESPACE as NAMESPACE
from tests.conftest import speed4trade_connection
from tests.xmltrees import assert_nodes_equal, parse

GOLDEN = Path(__file__).parent / "fixtures" / "speed4trade"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


def s4t_connection(**overrides):
    return make_connection("s4t", speed4trade_connection("http://127.0.0.1:9/speed4trade/", **overrides))


@pytest.fixture
def connection():
    connection = s4t_connection()
    yield connection
    connection.close()


def inner_document(body: bytes) -> etree._Element:
    """The request document carried as text in argRequestData."""
    envelope = parse(body)
    parameter = envelope.find(f".//{{{NAMESPACE}}}updateOrderStatus/argRequestData")
    assert parameter is not None
    return parse(parameter.text.encode())


def render_body(connection, order_id: str, document: dict) -> bytes:
    return render(connection, [load_order_update(order_id, document)]).body


@pytest.mark.parametrize(
    ("golden", "order_id", "document"),
    [
        ("key_order_number", "10001", {"status": "fetched"}),
        ("key_order_number", "10001", {"status": "fetched", "id_type": "order_number"}),
        ("key_order_number_and_prefix", "10001",
         {"status": "fetched", "id_type": "order_number_and_prefix", "order_number_prefix": "T2-"}),
        *[(f"key_{key}", "K-10001", {"status": "fetched", "id_type": key}) for key in (
            "external_order_number_1", "external_order_number_2", "marketplace_order_id_1",
            "marketplace_order_id_2", "transaction_id_1", "transaction_id_2")],
        ("mandator_override", "20001", {"status": "canceled", "mandator_id": 2}),
        ("shipped_with_shipments", "10001", {"status": "shipped", "shipments": [
            {"tracking_number": "32123461123", "carrier": "DHL", "carrier_external_id": "dhl_ext"},
            {"tracking_number": "32123461124", "carrier_external_id": "dhl_ext"},
        ]}),
        ("paid_with_status_id", "10001", {"status": "paid", "payment": {"status_id": 1}}),
        ("paid_with_identifier", "10001", {"status": "paid", "payment": {"status": "unpaid"}}),
        ("acknowledged_with_time", "10001", {"status": "acknowledged", "acknowledged_at": "2026-11-23T10:00:00+01:00"}),
        ("acknowledged_with_date", "10001", {"status": "acknowledged", "acknowledged_at": "2026-11-23"}),
        ("acknowledged_plain", "10001", {"status": "acknowledged"}),
        ("canceled", "10001", {"status": "canceled"}),
    ],
)
def test_rendered_document_matches_golden(connection, golden, order_id, document):
    rendered = inner_document(render_body(connection, order_id, document))
    assert_nodes_equal(parse((GOLDEN / f"{golden}.xml").read_bytes()), rendered)


@pytest.mark.parametrize(
    ("version", "golden", "content_type", "soap_action"),
    [
        ("1.1", "envelope_soap11.xml", "text/xml; charset=utf-8", '"urn:s4t#updateOrderStatus"'),
        ("1.2", "envelope_soap12.xml", 'application/soap+xml; charset=utf-8; action="urn:s4t#updateOrderStatus"',
         None),
    ],
)
def test_the_document_travels_as_text_in_either_soap_version(version, golden, content_type, soap_action):
    connection = s4t_connection(soap_version=version, soap_action="urn:s4t#updateOrderStatus")
    try:
        request = render(connection, [load_order_update("10001", {"status": "fetched"})])
    finally:
        connection.close()
    assert request.headers["Content-Type"] == content_type
    assert request.headers.get("SOAPAction") == soap_action
    envelope = parse(request.body)
    parameter = envelope.find(f".//{{{NAMESPACE}}}updateOrderStatus/argRequestData")
    assert len(parameter) == 0, "the document must be escaped text, not child elements"
    assert_nodes_equal(parse((GOLDEN / "key_order_number.xml").read_bytes()), parse(parameter.text.encode()))
    parameter.text = "INNER"
    assert_nodes_equal(parse((GOLDEN / golden).read_bytes()), envelope)


def test_a_soap12_connection_without_action_sends_a_plain_media_type():
    connection = s4t_connection(soap_version="1.2")
    try:
        request = render(connection, [load_order_update("10001", {"status": "fetched"})])
    finally:
        connection.close()
    assert request.headers == {"Content-Type": "application/soap+xml; charset=utf-8"}


def test_hostile_text_is_escaped_twice_over(connection):
    body = render_body(connection, "</transaction_id_1><evil/>", {"status": "fetched", "id_type": "transaction_id_1"})
    document = inner_document(body)
    assert document.findtext("order/transaction_id_1") == "</transaction_id_1><evil/>"
    assert document.find(".//evil") is None


@pytest.mark.parametrize(
    ("order_id", "document", "path", "fragment"),
    [
        ("10001", {"payment": {"status_id": 1}}, "status", "Required by backend 'speed4trade'"),
        ("10001", {"status": "shipped", "payment": {"status_id": 1}}, "payment",
         "only be sent together with status 'paid'"),
        ("10001", {"status": "paid", "shipments": [{"tracking_number": "T", "carrier": "DHL"}]}, "shipments",
         "only be sent together with status 'shipped'"),
        ("10001", {"status": "shipped", "acknowledged_at": "2026-11-23"}, "acknowledged_at",
         "only be sent together with status 'acknowledged'"),
        ("10001", {"status": "shipped", "shipments": [{"tracking_number": "T"}]}, "shipments.0",
         "carrier or carrier_external_id"),
        ("A-1", {"status": "paid"}, "id", "integer order_number"),
        ("A-1", {"status": "paid", "id_type": "order_number_and_prefix", "order_number_prefix": "T2-"}, "id",
         "integer order_number"),
        ("10001", {"status": "paid", "id_type": "order_number_and_prefix"}, "order_number_prefix", "Required"),
        ("10001", {"status": "paid", "order_number_prefix": "T2-"}, "order_number_prefix", "Only used with"),
        ("10001", {"status": "released"}, "status", "Unknown status 'released'"),
        ("10001", {"status_code": 300}, "status_code", "Not supported by backend 'speed4trade'"),
        ("10001", {"status": "paid", "waybill": "W"}, "waybill", "Not supported by backend 'speed4trade'"),
        ("10001", {"status": "paid", "id_type": "system_id"}, "id_type", "one of: order_number, order_number_and"),
    ],
)
def test_the_calls_rules_are_enforced_before_sending(connection, order_id, document, path, fragment):
    with pytest.raises(ValidationFailed) as caught:
        render(connection, [load_order_update(order_id, document)])
    assert any(fragment in message for message in caught.value.errors[path]), caught.value.errors


def test_renamed_statuses_move_the_rules_with_them():
    connection = s4t_connection(status_map={"dispatched": "SHIPPED"})
    try:
        update = load_order_update("10001", {"status": "dispatched",
                                             "shipments": [{"tracking_number": "T", "carrier": "DHL"}]})
        assert b"SHIPPED" in render(connection, [update]).body
    finally:
        connection.close()


def test_the_xsd_rejects_broken_documents(connection):
    schema = load_xsd("speed4trade/update_order_status.xsd")
    good = etree.tostring(inner_document(render_body(connection, "10001", {"status": "fetched"})))
    assert schema.validate(parse(good))
    for broken in (
        good.replace(b"FETCHED", b"LOST"),
        good.replace(b'version="1.0.0"', b'version="2.0.0"'),
        good.replace(b"<mandator_id>1</mandator_id>", b""),
        good.replace(b"<order_number>10001</order_number>", b"<order_number>A1</order_number>"),
        good.replace(b'significant_key="order_number"', b'significant_key="sku"'),
        good.replace(b"<status>FETCHED</status>", b"") ,
    ):
        assert not schema.validate(parse(broken)), broken


def test_a_document_the_xsd_refuses_is_never_sent(connection):
    connection.backend.status_map["lost"] = "LOST"  # the settings check refuses this at start-up
    with pytest.raises(TranslationError, match=r"speed4trade/update_order_status\.xsd"):
        render(connection, [load_order_update("10001", {"status": "lost"})])


def parse_one(connection, reply: BackendReply):
    """Parse a reply to a one-order call, raising the order's error as update_order does."""
    (result,) = parse_reply(connection, reply, [load_order_update("10001", {"status": "fetched"})])
    if isinstance(result, BackendError):
        raise result
    return result


def reply_with(return_xml: str, version: str = SOAP11, status: int = 200) -> BackendReply:
    operation = etree.Element(f"{{{NAMESPACE}}}updateOrderStatusResponse")
    etree.SubElement(operation, "return").text = return_xml
    envelope = etree.Element(f"{{{version}}}Envelope")
    etree.SubElement(envelope, f"{{{version}}}Body").append(operation)
    content_type = "text/xml; charset=utf-8" if version == SOAP11 else "application/soap+xml; charset=utf-8"
    return BackendReply(status=status, headers={"Content-Type": content_type}, body=etree.tostring(envelope))


def report(code: int, description: str = "") -> str:
    text = f"<error_description>{description}</error_description>" if description else ""
    return (f'<response method="updateOrderStatus" version="1.0.0"><report return_code="{code}">{text}</report>'
            "</response>")


@pytest.mark.parametrize("version", [SOAP11, SOAP12])
def test_return_code_zero_is_success(connection, version):
    outcome = parse_one(connection, reply_with(report(0), version))
    assert outcome.message == "Order status updated."


@pytest.mark.parametrize(
    ("code", "error", "status"),
    [(-1, OrderNotFound, 404), (-2, OrderStateConflict, 409), (-3, BackendRejected, 422),
     (-99, BackendRejected, 422), (7, BackendFailure, 502)],
)
def test_refusals_map_by_return_code(connection, code, error, status):
    with pytest.raises(error) as caught:
        parse_one(connection, reply_with(report(code, "Beschreibung des Fehlers")))
    assert caught.value.status == status
    assert caught.value.backend_details() == {
        "connection": "s4t", "code": str(code), "message": "Beschreibung des Fehlers",
    }


def test_return_code_meanings_are_configurable():
    connection = s4t_connection(not_found_return_codes=[-10], conflict_return_codes=[-20, -21])
    try:
        with pytest.raises(OrderNotFound):
            parse_one(connection, reply_with(report(-10)))
        with pytest.raises(OrderStateConflict):
            parse_one(connection, reply_with(report(-21)))
        with pytest.raises(BackendRejected):
            parse_one(connection, reply_with(report(-1)))
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("return_xml", "fragment"),
    [
        ("", "document is empty"),
        ("not xml at all", "not well-formed"),
        ('<!DOCTYPE r [<!ENTITY a "aaaa">]><response method="updateOrderStatus"><report return_code="0"/></response>',
         "DOCTYPE"),
        ('<response method="fetchOrders" version="1.0.0"/>', "not an updateOrderStatus response"),
        ('<response method="updateOrderStatus" version="1.0.0"/>', "0 reports for 1 orders"),
        ('<response method="updateOrderStatus" version="1.0.0"><report return_code="0"/><report return_code="0"/>'
         "</response>", "2 reports for 1 orders"),
        ('<response method="updateOrderStatus" version="1.0.0"><report return_code="ok"/></response>',
         "integer return_code"),
    ],
)
def test_malformed_return_content_is_a_502(connection, return_xml, fragment):
    with pytest.raises(BackendFailure) as caught:
        parse_one(connection, reply_with(return_xml))
    assert fragment in caught.value.detail


def test_a_missing_return_element_is_a_502(connection):
    envelope = (f'<s:Envelope xmlns:s="{SOAP11}"><s:Body><n:updateOrderStatusResponse xmlns:n="{NAMESPACE}"/>'
                "</s:Body></s:Envelope>").encode()
    with pytest.raises(BackendFailure, match="usable response document"):
        parse_one(connection, BackendReply(200, {"Content-Type": "text/xml"}, envelope))
