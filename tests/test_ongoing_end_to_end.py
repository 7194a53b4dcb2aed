"""PATCH /orders/<id> through the gateway to the Ongoing sandbox over real HTTP, checking the sandbox's state."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("document", "view_key", "expected"),
    [
        ({"status": "released"}, "status", 300),
        ({"status": "allocated"}, "status", 320),
        ({"status_code": 425}, "status", 425),
        ({"delivery_date": "2026-12-01T09:30:00+01:00"}, "delivery_date", "2026-12-01T09:30:00+01:00"),
        ({"new_order_number": "SO-1006-B"}, "order_number", "SO-1006-B"),
        ({"waybill": "00340434161094042557"}, "waybill", "00340434161094042557"),
        ({"transporter_order_number": "TON-77"}, "transporter_order_number", "TON-77"),
        ({"printed_at": "2026-11-23T10:15:00"}, "printed_time", "2026-11-23T10:15:00"),
        ({"shipped_at": "2026-11-24T08:00:00+00:00"}, "shipped_time", "2026-11-24T08:00:00+00:00"),
        ({"picking_priority": 7}, "picking_priority", 7),
        ({"warehouse_instruction": "Fragile & <heavy>"}, "warehouse_instruction", "Fragile & <heavy>"),
        ({"return_waybill": "RET-1"}, "return_waybill", "RET-1"),
        ({"service_point_code": "SP-42"}, "service_point_code", "SP-42"),
        ({"way_of_delivery": {"code": "POSTNORD"}}, "way_of_delivery_type",
         {"code": "POSTNORD", "name": "PostNord MyPack"}),
        ({"way_of_delivery": {"code": "BUDBEE", "name": "Budbee Home", "create_if_missing": True}},
         "way_of_delivery_type", {"code": "BUDBEE", "name": "Budbee Home"}),
    ],
)
def test_every_update_block_reaches_the_sandbox(client, sandbox_view, document, view_key, expected):
    before = sandbox_view(1006)
    assert before[view_key] != expected
    reply = client.patch("/orders/SO-1006", json=document)
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert body["order_id"] == "SO-1006"
    assert body["connection"] == "ongoing-demo"
    assert body["backend"] == "ongoing"
    assert body["backend_order_id"] == "1006"
    assert body["updated"] == document
    assert body["message"]
    assert sandbox_view(1006)[view_key] == expected


@pytest.mark.parametrize(
    ("order_id", "id_type"),
    [("SO-1007", None), ("SO-1007", "order_number"), ("EXT-1007", "order_id"), ("1007", "system_id")],
)
def test_every_identification_type_finds_the_order(client, sandbox_view, order_id, id_type):
    document = {"status": "released"} if id_type is None else {"status": "released", "id_type": id_type}
    reply = client.patch(f"/orders/{order_id}", json=document)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["backend_order_id"] == "1007"
    assert sandbox_view(1007)["status"] == 300


def test_all_blocks_in_one_request_change_everything(client, sandbox_view):
    reply = client.patch("/orders/SO-1004", json={
        "status": "picked",
        "delivery_date": "2026-12-02T00:00:00",
        "waybill": "WB-1004",
        "picking_priority": 3,
        "way_of_delivery": {"code": "DHL-PARCEL"},
    })
    assert reply.status_code == 200, reply.get_json()
    order = sandbox_view(1004)
    assert (order["status"], order["waybill"], order["picking_priority"]) == (400, "WB-1004", 3)
    assert order["delivery_date"] == "2026-12-02T00:00:00"
    assert order["way_of_delivery_type"]["code"] == "DHL-PARCEL"


def test_the_status_rule_refuses_with_409_and_changes_nothing(client, sandbox_view):
    reply = client.patch("/orders/SO-1003", json={"status": "picked", "waybill": "WB-X"})
    assert reply.status_code == 409
    problem = reply.get_json()
    assert problem["backend"]["connection"] == "ongoing-demo"
    assert "allocated but not picked" in problem["backend"]["message"]
    order = sandbox_view(1003)
    assert (order["status"], order["waybill"]) == (320, None)


def test_an_unknown_order_is_404(client):
    reply = client.patch("/orders/SO-404", json={"status": "released"})
    assert reply.status_code == 404
    assert reply.get_json()["backend"]["message"] == "No order found with GoodsOwnerOrderNumber 'SO-404'."


def test_another_goods_owners_order_is_not_found(client):
    reply = client.patch("/orders/OT-2001", json={"status": "released"})
    assert reply.status_code == 404


def test_a_taken_order_number_is_a_409(client, sandbox_view):
    reply = client.patch("/orders/SO-1008", json={"new_order_number": "SO-1009"})
    assert reply.status_code == 409
    assert sandbox_view(1008)["order_number"] == "SO-1008"


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"status_code": 999}, "Order status 999 does not exist."),
        ({"way_of_delivery": {"code": "NOPE"}}, "Way of delivery type 'NOPE' does not exist."),
    ],
)
def test_other_backend_refusals_are_422_with_the_backend_text(client, document, fragment):
    reply = client.patch("/orders/SO-1010", json=document)
    assert reply.status_code == 422
    problem = reply.get_json()
    assert problem["type"].endswith(":backend-rejected")
    assert problem["backend"] == {"connection": "ongoing-demo", "code": "Success=false", "message": fragment}


def test_dry_run_shows_the_document_and_sends_nothing(client, sandbox_view):
    reply = client.patch("/orders/SO-1001?dry_run=true", json={"status": "released", "waybill": "WB"})
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["dry_run"] is True
    assert body["request"]["method"] == "POST"
    assert body["request"]["url"].endswith("/ongoing/Service.asmx")
    assert body["request"]["headers"]["SOAPAction"] == '"http://ongoingsystems.se/WSI/UpdateOrder"'
    assert "<OrderStatus>300</OrderStatus>" in body["request"]["body"]
    assert "<Password>********</Password>" in body["request"]["body"]
    assert "demo-password" not in reply.get_data(as_text=True)
    order = sandbox_view(1001)
    assert (order["status"], order["waybill"]) == (200, None)


def test_dry_run_still_validates(client):
    reply = client.patch("/orders/SO-1001?dry_run=1", json={"status": "canceled", "waybill": "WB-1"})
    assert reply.status_code == 422
    assert "ProcessOrder" in reply.get_json()["errors"]["waybill"][0]


def test_request_id_is_echoed_or_made(client):
    given = client.patch("/orders/SO-1001", json={"status": "released"}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    assert given.get_json()["request_id"] == "abc-123"
    made = client.patch("/orders/SO-1001", json={"status": "released"}, headers={"X-Request-ID": "bad id\u2028"})
    assert made.headers["X-Request-ID"] != "bad id\u2028"
    assert len(made.headers["X-Request-ID"]) == 32
    assert made.get_json()["request_id"] == made.headers["X-Request-ID"]


def test_named_connection_and_unknown_connection(client):
    assert client.patch("/orders/SO-1001", json={"connection": "ongoing-demo", "status": "open"}).status_code == 200
    reply = client.patch("/orders/SO-1001", json={"connection": "nowhere", "status": "open"})
    assert reply.status_code == 422
    assert "Unknown connection 'nowhere'" in reply.get_json()["errors"]["connection"][0]
