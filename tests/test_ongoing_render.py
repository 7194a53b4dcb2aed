"""Rendering UpdateOrder: golden documents per update block and id type, and the XSD gate before sending."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from gateway.backends import BACKENDS
from gateway.canonical import load_order_update
from gateway.config import load_settings
from gateway.errors import TranslationError, ValidationFailed
from gateway.safexml import load_xsd
from tests.conftest import gateway_config, ongoing_connection
from tests.xmltrees import assert_nodes_equal, parse

GOLDEN = Path(__file__).parent / "fixtures" / "ongoing"


@pytest.fixture
def backend():
    settings = load_settings(
        gateway_config(demo=ongoing_connection("http://127.0.0.1:9/Service.asmx", status_map={"packed": 425})),
        "<test>", BACKENDS,
    )
    backend = BACKENDS["ongoing"](settings.connections["demo"])
    yield backend
    backend.close()


def render(backend, order_id: str, document: dict, password: str = "demo-password") -> bytes:
    update = load_order_update(order_id, document)
    backend.check_update(update)
    return backend.render_request([update], password=password).body


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
def test_rendered_update_order_matches_golden_document(backend, golden, order_id, document):
    rendered = render(backend, order_id, document)
    assert_nodes_equal(parse((GOLDEN / f"{golden}.xml").read_bytes()), parse(rendered))


def test_the_request_carries_ongoing_soap_headers(backend):
    update = load_order_update("SO-1001", {"status": "released"})
    request = backend.render_request([update], password="demo-password")
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/Service.asmx"
    assert request.headers["SOAPAction"] == '"http://ongoingsystems.se/WSI/UpdateOrder"'
    assert request.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert request.body.startswith(b"<?xml version='1.0' encoding='utf-8'?>")


def test_escaping_is_done_by_lxml_not_by_hand(backend):
    body = render(backend, "SO-<1001>&", {"warehouse_instruction": "]]><evil/>"})
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
def test_xsd_rejects_broken_documents(backend, mutation, complaint):
    schema = load_xsd("ongoing/update_order.xsd")
    good = render(backend, "SO-1001", {"status": "released"})
    assert schema.validate(parse(good))
    assert not schema.validate(parse(mutation(good)))
    assert complaint in str(schema.error_log)


def test_a_document_the_xsd_refuses_is_a_translation_error_and_never_sent(backend):
    # A status map entry outside xs:int slips past the settings check only if someone bypasses it:
    backend.status_map["huge"] = 2**40
    update = load_order_update("SO-1001", {"status": "huge"})
    with pytest.raises(TranslationError, match=r"xsd/ongoing/update_order\.xsd"):
        backend.prepare_update(update)


def test_dry_run_rendering_masks_the_password(backend):
    update = load_order_update("SO-1001", {"status": "released"})
    request = backend.prepare_update(update, mask_credentials=True)
    assert b"demo-password" not in request.body
    assert b"<Password>********</Password>" in request.body


@pytest.mark.parametrize(
    ("order_id", "document", "path", "fragment"),
    [
        ("SO-1001", {"status": "canceled"}, "status", "must not cancel"),
        ("SO-1001", {"status_code": 1000}, "status_code", "must not cancel"),
        ("SO-1001", {"status": "teleported"}, "status", "Unknown status 'teleported'"),
        ("SO-1001", {"id_type": "reference", "status": "open"}, "id_type", "one of: order_number, order_id"),
        ("abc", {"id_type": "system_id", "status": "open"}, "id", "integer SystemId"),
        ("99999999999", {"id_type": "system_id", "status": "open"}, "id", "integer SystemId"),
        ("S" * 51, {"status": "open"}, "id", "at most 50 characters"),
    ],
)
def test_backend_rules_refuse_before_rendering(backend, order_id, document, path, fragment):
    with pytest.raises(ValidationFailed) as caught:
        backend.check_update(load_order_update(order_id, document))
    assert any(fragment in message for message in caught.value.errors[path]), caught.value.errors
