"""PATCH /orders/<id> through the gateway to the Speed4Trade sandbox over real HTTP, checking the sandbox's state."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import SPEED4TRADE_SERVICE_PATH, gateway_config, speed4trade_connection


@pytest.fixture
def s4t_view(sandbox_url):
    def view(order_number: int) -> dict:
        reply = requests.get(f"{sandbox_url}/speed4trade/orders/{order_number}", timeout=5)
        assert reply.status_code == 200
        return reply.json()

    return view


@pytest.fixture(params=["1.1", "1.2"])
def s4t_client(request, make_gateway, sandbox_url):
    connection = speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH, soap_version=request.param)
    return make_gateway(gateway_config(s4t=connection)).test_client()


@pytest.mark.parametrize(
    ("order_id", "id_type", "extra"),
    [
        ("10002", None, {}),
        ("10002", "order_number", {}),
        ("10002", "order_number_and_prefix", {"order_number_prefix": "T2-"}),
        ("EXT1-10002", "external_order_number_1", {}),
        ("EXT2-10002", "external_order_number_2", {}),
        ("MP1-10002", "marketplace_order_id_1", {}),
        ("MP2-10002", "marketplace_order_id_2", {}),
        ("TX1-10002", "transaction_id_1", {}),
        ("TX2-10002", "transaction_id_2", {}),
    ],
)
def test_every_significant_key_finds_the_order(s4t_client, s4t_view, order_id, id_type, extra):
    document = {"status": "fetched", **extra, **({"id_type": id_type} if id_type else {})}
    reply = s4t_client.patch(f"/orders/{order_id}", json=document)
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert (body["backend"], body["connection"], body["message"]) == ("speed4trade", "s4t", "Order status updated.")
    assert body["updated"] == {"status": "fetched"}
    assert s4t_view(10002)["status"] == "FETCHED"


def test_shipped_with_shipments_stores_every_shipment(s4t_client, s4t_view):
    shipments = [
        {"tracking_number": "TRACK-1", "carrier": "DHL"},
        {"tracking_number": "TRACK-2", "carrier_external_id": "dhl_ext"},
    ]
    reply = s4t_client.patch("/orders/10003", json={"status": "shipped", "shipments": shipments})
    assert reply.status_code == 200, reply.get_json()
    order = s4t_view(10003)
    assert order["status"] == "SHIPPED"
    assert order["shipping_informations"] == [
        {"tracking_number": "TRACK-1", "shipping_provider_identifier": "DHL", "shipping_provider_external_id": None},
        {"tracking_number": "TRACK-2", "shipping_provider_identifier": None,
         "shipping_provider_external_id": "dhl_ext"},
    ]


def test_shipments_sent_when_already_shipped_are_ignored_as_the_spec_says(s4t_client, s4t_view):
    reply = s4t_client.patch("/orders/10011", json={
        "status": "shipped", "shipments": [{"tracking_number": "TRACK-NEW", "carrier": "UPS"}]})
    assert reply.status_code == 200
    assert [info["tracking_number"] for info in s4t_view(10011)["shipping_informations"]] == ["TRACK-OLD"]


def test_paid_with_payment_appends_it(s4t_client, s4t_view):
    reply = s4t_client.patch("/orders/10004", json={"status": "paid", "payment": {"status": "paid_in_full"}})
    assert reply.status_code == 200
    order = s4t_view(10004)
    assert order["status"] == "PAID"
    assert order["payment_informations"] == [{"payment_status_id": None, "payment_status_identifier": "paid_in_full"}]


def test_acknowledged_sets_the_export_flag_and_time(s4t_client, s4t_view):
    reply = s4t_client.patch("/orders/10005", json={"status": "acknowledged",
                                                    "acknowledged_at": "2026-11-23T10:00:00+01:00"})
    assert reply.status_code == 200
    order = s4t_view(10005)
    assert (order["status"], order["erp_exported"], order["export_time"]) == (
        "ACKNOWLEDGED", True, "2026-11-23T10:00:00+01:00")


def test_acknowledged_without_a_time_uses_now(s4t_client, s4t_view):
    assert s4t_client.patch("/orders/10006", json={"status": "acknowledged"}).status_code == 200
    order = s4t_view(10006)
    assert order["erp_exported"] is True and order["export_time"].startswith("20")


def test_the_mandator_can_be_chosen_per_request(s4t_client, s4t_view):
    assert s4t_client.patch("/orders/20001", json={"status": "fetched"}).status_code == 404
    reply = s4t_client.patch("/orders/20001", json={"status": "fetched", "mandator_id": 2})
    assert reply.status_code == 200
    assert s4t_view(20001)["status"] == "FETCHED"


@pytest.mark.parametrize(("order_number", "state"), [("10009", "CANCELED"), ("10010", "REGROUPED")])
def test_canceled_and_regrouped_orders_are_409(s4t_client, s4t_view, order_number, state):
    reply = s4t_client.patch(f"/orders/{order_number}", json={"status": "fetched"})
    assert reply.status_code == 409
    problem = reply.get_json()
    assert problem["backend"]["code"] == "-2"
    assert state in problem["backend"]["message"]
    assert s4t_view(int(order_number))["status"] == state


def test_an_unknown_order_is_404_with_the_backend_text(s4t_client):
    reply = s4t_client.patch("/orders/99999", json={"status": "fetched"})
    assert reply.status_code == 404
    assert reply.get_json()["backend"]["code"] == "-1"


def test_an_unknown_mandator_is_422_with_the_backend_code(s4t_client):
    reply = s4t_client.patch("/orders/10007", json={"status": "fetched", "mandator_id": 77})
    assert reply.status_code == 422
    problem = reply.get_json()
    assert problem["type"].endswith(":backend-rejected")
    assert problem["backend"]["code"] == "-4"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"status": "paid", "shipments": [{"tracking_number": "X", "carrier": "DHL"}]}, "shipments"),
        ({"status": "shipped", "payment": {"status_id": 1}}, "payment"),
        ({"status": "paid", "acknowledged_at": "2026-11-23"}, "acknowledged_at"),
        ({"status": "shipped", "shipments": [{"tracking_number": "X"}]}, "shipments.0"),
        ({"payment": {"status_id": 1}}, "status"),
        ({"status": "paid", "payment": {"status_id": 1, "status": "paid"}}, "payment"),
    ],
)
def test_rules_are_refused_before_anything_is_sent(make_gateway, sandbox_url, s4t_view, document, path):
    connection = speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH)
    client = make_gateway(gateway_config(s4t=connection)).test_client()
    before = s4t_view(10008)
    reply = client.patch("/orders/10008", json=document)
    assert reply.status_code == 422
    assert path in reply.get_json()["errors"], reply.get_json()
    assert s4t_view(10008) == before


def test_wrong_basic_credentials_are_a_502(make_gateway, sandbox_url):
    connection = speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH, password="not-it")
    reply = make_gateway(gateway_config(s4t=connection)).test_client().patch("/orders/10001", json={"status": "paid"})
    assert reply.status_code == 502
    assert "refused the gateway's credentials" in reply.get_json()["detail"]
    assert "not-it" not in reply.get_data(as_text=True)


def test_a_wrong_namespace_is_a_fault_and_a_502(make_gateway, sandbox_url):
    connection = speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH, namespace="urn:elsewhere")
    reply = make_gateway(gateway_config(s4t=connection)).test_client().patch("/orders/10001", json={"status": "paid"})
    assert reply.status_code == 502
    assert "SOAP fault" in reply.get_json()["detail"]


def test_dry_run_shows_the_soap_call_with_credentials_masked(s4t_client, s4t_view):
    reply = s4t_client.patch("/orders/10001?dry_run=true", json={"status": "paid", "payment": {"status_id": 3}})
    assert reply.status_code == 200
    request = reply.get_json()["request"]
    assert request["headers"]["Authorization"] == "Basic ********"
    assert "&lt;payment_status_id&gt;3&lt;/payment_status_id&gt;" in request["body"]
    assert "connect-password" not in reply.get_data(as_text=True)
    assert s4t_view(10001)["status"] == "NEW"
