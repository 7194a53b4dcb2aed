"""Rendering UpdateOrder: golden documents per update block and id type, and the XSD gate before sending."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from gateway.backends.ongoing.update_order import _update_order_shape
from gateway.canonical import load_order_update
from gateway.errors import (
    BackendFailure,
    BackendRejected,
    ConfigError,
    OrderNotFound,
    OrderStateConflict,
    TranslationError,
    ValidationFailed,
)
from gateway.safexml import load_xsd
from gateway.transport import BackendReply
from tests.calls import make_connection, parse_reply, render
from tests.conftest import ongoing_connection
from tests.xmltrees import assert_nodes_equal, parse, xsd_refusals

GOLDEN = Path(__file__).parent / "fixtures" / "ongoing"


@pytest.fixture
def connection():
    connection = make_connection("demo", ongoing_connection("http://127.0.0.1:9/Service.asmx",
                                                            status_map={"packed": 425}))
    yield connection
    connection.close()


def render_body(connection, order_id: str, document: dict) -> bytes:
    return render(connection, [load_order_update(order_id, document)]).body


@pytest.mark.parametrize(
    ("golden", "order_id", "document"),
    [
        ("status", "SO-1001", {"status": "released"}),
        ("status_code", "SO-1001", {"status_code": 425}),
        ("delivery_date", "SO-1001", {"delivery_date": "2026-12-01T09:30:00+01:00"}),
        ("new_order_number", "SO-1001", {"new_order_number": "SO-1001-B"}),
        ("waybill", "SO-1001", {"waybill": "00340434161094042557"}),
        ("transporter_order_number", "SO-1001", {"transporter_order_number": "TON-77"}),
        ("printed_at", "SO-1001", {"printed_at": "2026-11-23T10:15:00"}),
        ("shipped_at", "SO-1001", {"shipped_at": "2026-11-24T08:00:00Z"}),
        ("picking_priority", "SO-1001", {"picking_priority": 7}),
        ("warehouse_instruction", "SO-1001", {"warehouse_instruction": "Fragile & <heavy>"}),
        ("return_waybill", "SO-1001", {"return_waybill": "RET-1"}),
        ("service_point_code", "SO-1001", {"service_point_code": "SP-42"}),
        ("way_of_delivery", "SO-1001",
         {"way_of_delivery": {"code": "BUDBEE", "name": "Budbee Home", "create_if_missing": True}}),
        ("way_of_delivery_find", "SO-1001", {"way_of_delivery": {"code": "POSTNORD"}}),
        ("id_order_id", "EXT-1001", {"id_type": "order_id", "status": "released"}),
        ("id_system_id", "1001", {"id_type": "system_id", "status": "released"}),
        ("all_blocks", "SO-1001", {
            # given in an order unlike the wire order: the renderer must still emit the WSDL order
            "way_of_delivery": {"code": "DHL-PARCEL"},
            "service_point_code": "SP",
            "return_waybill": "RWB",
            "warehouse_instruction": "Handle with care",
            "picking_priority": 1,
            "shipped_at": "2026-11-23T11:00:00",
            "printed_at": "2026-11-23T10:00:00",
            "transporter_order_number": "TON",
            "waybill": "WB",
            "new_order_number": "SO-1001-B",
            "delivery_date": "2026-12-01",
            "status": "picked",
        }),
    ],
)
def test_rendered_update_order_matches_golden_document(connection, golden, order_id, document):
    rendered = render_body(connection, order_id, document)
    assert_nodes_equal(parse((GOLDEN / f"{golden}.xml").read_bytes()), parse(rendered))


def test_the_request_carries_ongoing_soap_headers(connection):
    update = load_order_update("SO-1001", {"status": "released"})
    request = render(connection, [update])
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/Service.asmx"
    assert request.headers["SOAPAction"] == '"http://ongoingsystems.se/WSI/UpdateOrder"'
    assert request.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert request.body.startswith(b"<?xml version='1.0' encoding='utf-8'?>")


def test_escaping_is_done_by_lxml_not_by_hand(connection):
    body = render_body(connection, "SO-<1001>&", {"warehouse_instruction": "]]><evil/>"})
    tree = parse(body)
    ns = {"o": "http://ongoingsystems.se/WSI"}
    assert tree.findtext(".//o:WarehouseInstruction", namespaces=ns) == "]]><evil/>"
    assert tree.findtext(".//o:OrderUpdateIdentification/o:GoodsOwnerOrderNumber", namespaces=ns) == "SO-<1001>&"
    assert tree.find(".//o:evil", namespaces=ns) is None


def test_xsd_accepts_ongoing_example_request_shape():
    example = Path(__file__).resolve().parents[2] / "shared/reference/ongoing/example-soap-request.UpdateOrder.xml"
    text = example.read_text().replace("{{GoodsOwnerCode}}", "DEMO").replace("{{Username}}", "demo")
    text = text.replace("{{Password}}", "pw").replace("{{GoodsOwnerOrderNumber}}", "SO-1001")
    document = parse(text.encode())
    # Ongoing's own example omits the nillable-but-required OrderId; our stricter XSD wants it present.
    assert not load_xsd("ongoing/update_order.xsd").validate(document)
    identification = document.find(".//{http://ongoingsystems.se/WSI}OrderUpdateIdentification")
    order_id = etree.SubElement(identification, "{http://ongoingsystems.se/WSI}OrderId")
    order_id.set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")
    assert load_xsd("ongoing/update_order.xsd").validate(document)


@pytest.mark.parametrize(
    ("mutation", "complaint"),
    [
        (lambda body: body.replace(b"<OrderStatus>300</OrderStatus>", b"<OrderStatus>open</OrderStatus>"),
         "OrderStatus"),
        (lambda body: body.replace(b"<UserName>demo</UserName>", b""), "UserName"),
        (lambda body: body.replace(b"SO-1001", b"S" * 51), "GoodsOwnerOrderNumber"),
        (lambda body: body.replace(b"GoodsOwnerOrderNumber</OrderIdentificationType>",
                                   b"ReferenceNumber</OrderIdentificationType>"), "OrderIdentificationType"),
        (lambda body: body.replace(b'xmlns="http://ongoingsystems.se/WSI"', b'xmlns="urn:other"'), "UpdateOrder"),
    ],
)
def test_xsd_rejects_broken_documents(connection, mutation, complaint):
    schema = load_xsd("ongoing/update_order.xsd")
    good = render_body(connection, "SO-1001", {"status": "released"})
    assert schema.validate(parse(good))
    assert not schema.validate(parse(mutation(good)))
    assert complaint in str(schema.error_log)


def test_a_document_the_xsd_refuses_is_a_translation_error_and_never_sent(connection):
    # A status map entry outside xs:int slips past the settings check only if someone bypasses it:
    connection.backend.status_map["huge"] = 2**40
    update = load_order_update("SO-1001", {"status": "huge"})
    with pytest.raises(TranslationError, match=r"xsd/ongoing/update_order\.xsd"):
        render(connection, [update])


def test_dry_run_rendering_masks_the_password(connection):
    update = load_order_update("SO-1001", {"status": "released"})
    request = render(connection, [update], masked=True)
    assert b"demo-password" not in request.body
    assert b"<Password>********</Password>" in request.body


@pytest.mark.parametrize(
    ("order_id", "document", "path", "fragment"),
    [
        ("SO-1001", {"status": "canceled", "waybill": "WB"}, "waybill", "Cannot be combined with status 'canceled'"),
        ("SO-1001", {"status_code": 1000, "picking_priority": 1}, "picking_priority", "ProcessOrder"),
        ("abc", {"id_type": "system_id", "status": "canceled"}, "id", "integer SystemId"),
        ("S" * 51, {"status": "canceled"}, "id", "at most 50 characters"),
        ("SO-1001", {"status": "teleported"}, "status", "Unknown status 'teleported'"),
        ("SO-1001", {"id_type": "reference", "status": "open"}, "id_type", "one of: order_number, order_id"),
        ("abc", {"id_type": "system_id", "status": "open"}, "id", "integer SystemId"),
        ("99999999999", {"id_type": "system_id", "status": "open"}, "id", "integer SystemId"),
        ("S" * 51, {"status": "open"}, "id", "at most 50 characters"),
    ],
)
def test_backend_rules_refuse_before_rendering(connection, order_id, document, path, fragment):
    with pytest.raises(ValidationFailed) as caught:
        connection.check(load_order_update(order_id, document))
    assert any(fragment in message for message in caught.value.errors[path]), caught.value.errors


# --- ProcessOrder: how Ongoing cancels ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("golden", "order_id", "document"),
    [
        ("process_order_order_number", "SO-1002", {"status": "canceled"}),
        ("process_order_order_id", "EXT-1002", {"id_type": "order_id", "status": "canceled"}),
        ("process_order_system_id", "1002", {"id_type": "system_id", "status": "canceled"}),
        # the warehouse's own code for canceled means the same
        ("process_order_order_number", "SO-1002", {"status_code": 1000}),
    ],
)
def test_a_cancel_renders_process_order_remove(connection, golden, order_id, document):
    update = load_order_update(order_id, document)
    assert connection.check(update).operation.name == "ProcessOrder"
    request = render(connection, [update])
    assert request.headers["SOAPAction"] == '"http://ongoingsystems.se/WSI/ProcessOrder"'
    assert request.headers["Content-Type"] == "text/xml; charset=utf-8"
    rendered = parse(request.body)
    assert_nodes_equal(parse((GOLDEN / f"{golden}.xml").read_bytes()), rendered)
    assert load_xsd("ongoing/process_order.xsd").validate(rendered)


def test_every_other_status_still_travels_as_update_order(connection):
    for status in ("open", "released", "allocated", "picked", "sent", "collected", "returned", "packed"):
        planned = connection.check(load_order_update("SO-1001", {"status": status}))
        assert planned.operation.name == "UpdateOrder", status


def test_the_cancel_delivery_date_is_a_setting():
    connection = make_connection("demo", ongoing_connection("http://127.0.0.1:9/Service.asmx",
                                                            cancel_delivery_date="2026-12-01T00:00:00Z"))
    try:
        body = render(connection, [load_order_update("SO-1002", {"status": "canceled"})]).body
    finally:
        connection.close()
    assert parse(body).findtext(".//{http://ongoingsystems.se/WSI}DeliveryDate") == "2026-12-01T00:00:00Z"


def test_a_cancel_delivery_date_that_is_no_xs_datetime_stops_start_up():
    with pytest.raises(ConfigError, match=r"connections\.demo\.cancel_delivery_date: Not an xs:dateTime"):
        make_connection("demo", ongoing_connection("http://127.0.0.1:9/Service.asmx", cancel_delivery_date="soon"))


def test_the_process_order_xsd_accepts_ongoing_example_shape_only_once_it_follows_the_wsdl():
    example = Path(__file__).resolve().parents[2] / "shared/reference/ongoing/example-soap-request.ProcessOrder.xml"
    text = example.read_text(encoding="utf-8")
    for placeholder, value in (("{{GoodsOwnerCode}}", "DEMO"), ("{{Username}}", "demo"), ("{{Password}}", "pw")):
        text = text.replace(placeholder, value)
    document = parse(text.replace('encoding="utf-16"', 'encoding="utf-8"').encode())
    schema = load_xsd("ongoing/process_order.xsd")
    # Ongoing's own example is out of the WSDL's sequence (GoodsOwnerOrderNumber before OrderOperation) and
    # leaves out required elements (DeliveryDate, Customer/CustomerId, ...): the gateway's XSD refuses it.
    assert not schema.validate(document)
    assert "OrderOperation" in str(schema.error_log) or "GoodsOwnerOrderNumber" in str(schema.error_log)


@pytest.mark.parametrize(
    ("mutation", "refused"),
    [
        (lambda body: body.replace(b"<OrderOperation>Remove</OrderOperation>",
                                   b"<OrderOperation>Delete</OrderOperation>"),
         ("OrderOperation", "SCHEMAV_CVC_ENUMERATION_VALID")),
        # OrderInfo lacks its required DeliveryDate
        (lambda body: body.replace(b"<DeliveryDate>0001-01-01T00:00:00</DeliveryDate>", b""),
         ("OrderInfo", "SCHEMAV_ELEMENT_CONTENT")),
        # Password comes where UserName must
        (lambda body: body.replace(b"<UserName>demo</UserName>", b""), ("Password", "SCHEMAV_ELEMENT_CONTENT")),
        (lambda body: body.replace(b"SystemId</OrderIdentification>", b"Number</OrderIdentification>"),
         ("OrderIdentification", "SCHEMAV_CVC_ENUMERATION_VALID")),
    ],
    ids=["unknown-operation", "delivery-date-missing", "user-name-missing", "unknown-identification"],
)
def test_the_process_order_xsd_rejects_broken_documents(connection, mutation, refused):
    """Which element the XSD refuses, by which of its rules (libxml2's error type), not libxml2's wording."""
    schema = load_xsd("ongoing/process_order.xsd")
    good = render(connection, [load_order_update("1002", {"id_type": "system_id", "status": "canceled"})]).body
    assert xsd_refusals(schema, parse(good)) == []
    assert [(refusal.element, refusal.check) for refusal in xsd_refusals(schema, parse(mutation(good)))] == [refused]


def process_order_reply(result: str) -> BackendReply:
    return BackendReply(200, {"Content-Type": "text/xml; charset=utf-8"}, (
        '<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soap:Body>'
        f'<ProcessOrderResponse xmlns="http://ongoingsystems.se/WSI"><ProcessOrderResult>{result}'
        '</ProcessOrderResult></ProcessOrderResponse></soap:Body></soap:Envelope>').encode())


CANCEL = [load_order_update("SO-1002", {"status": "canceled"})]


def test_a_process_order_result_is_normalized_like_update_order(connection):
    (outcome,) = parse_reply(connection, process_order_reply(
        "<GoodsOwnerOrderNumber>SO-1002</GoodsOwnerOrderNumber><OrderId>1002</OrderId><InOrderId>0</InOrderId>"
        '<ArticleDefId xsi:nil="true"/><Success>true</Success>'), CANCEL)
    assert (outcome.backend_order_id, outcome.message) == ("1002", "Order canceled.")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("The order cannot be changed by ProcessOrder: the warehouse has begun picking it.", OrderStateConflict),
        ("No order found with GoodsOwnerOrderNumber 'SO-1002'.", OrderNotFound),
        ("Something else went wrong.", BackendRejected),
    ],
)
def test_a_process_order_refusal_is_read_from_error_message(connection, message, error):
    (outcome,) = parse_reply(connection, process_order_reply(
        f"<ErrorMessage>{message}</ErrorMessage><OrderId>0</OrderId><InOrderId>0</InOrderId>"
        '<ArticleDefId xsi:nil="true"/><Success>false</Success>'), CANCEL)
    assert type(outcome) is error
    assert outcome.message == message and outcome.code == "Success=false"


def test_a_reply_of_the_other_operation_is_a_502(connection):
    reply = process_order_reply("<Success>true</Success>")
    reply = BackendReply(200, reply.headers, reply.body.replace(b"ProcessOrder", b"UpdateOrder"))
    with pytest.raises(BackendFailure, match="has no ProcessOrderResponse"):
        parse_reply(connection, reply, CANCEL)


def test_rendering_fills_a_copy_and_leaves_the_kept_envelope_empty(connection):
    """Envelopes are made once per shape and copied for every request: no request's values stay in them."""
    documents = [{"status": "released", "way_of_delivery": {"code": "BUDBEE", "name": "Budbee Home"}},
                 {"id_type": "system_id", "waybill": "WB-7"}]
    for document in documents:
        render_body(connection, "1234", document)
    for document in documents:
        update = load_order_update("1234", document)
        way = update.changes.get("way_of_delivery")
        shape, _ = _update_order_shape(connection.backend.effective_id_type(update), frozenset(update.changes),
                                       None if way is None else (way.create_if_missing, way.name is not None))
        kept = etree.tostring(shape)
        for value in (b"1234", b"BUDBEE", b"Budbee Home", b"WB-7", b"300", b"demo"):
            assert value not in kept
    assert render_body(connection, "SO-1", {"waybill": "A"}) != render_body(connection, "SO-2", {"waybill": "B"})
