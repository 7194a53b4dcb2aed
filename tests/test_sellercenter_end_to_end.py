"""PATCH /orders/<id> through the gateway to the SellerCenter sandbox over real HTTP, checking the sandbox's state."""

from __future__ import annotations

import pytest
import requests

import sandbox
from gateway.runtime import gateway_of
from tests.conftest import SELLERCENTER_SERVICE_PATH, gateway_config, sellercenter_connection
from tests.servers import serve_wsgi


@pytest.fixture
def sc_view(sandbox_url):
    def view(order_id: int) -> dict:
        reply = requests.get(f"{sandbox_url}/sellercenter/orders/{order_id}", timeout=5)
        assert reply.status_code == 200
        return reply.json()

    return view


@pytest.fixture
def sc_client(make_gateway, sandbox_url):
    connection = sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH)
    return make_gateway(gateway_config(sc=connection)).test_client()


def test_a_partial_billing_update_changes_only_the_given_fields(sc_client, sc_view):
    before = sc_view(300001)
    reply = sc_client.patch("/orders/300001", json={"billing_address": {"first_name": "Erika", "city": "Köln"}})
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert (body["backend"], body["message"]) == ("sellercenter", "Order information updated.")
    after = sc_view(300001)
    assert after["address_billing"] == {**before["address_billing"], "first_name": "Erika", "city": "Köln"}
    assert after["address_shipping"] == before["address_shipping"]


def test_both_addresses_at_once(sc_client, sc_view):
    reply = sc_client.patch("/orders/300002", json={"billing_address": {"postcode": "20095"},
                                                    "shipping_address": {"address1": "Hauptstraße 5", "phone": "1"}})
    assert reply.status_code == 200
    order = sc_view(300002)
    assert order["address_billing"]["postcode"] == "20095"
    assert (order["address_shipping"]["address1"], order["address_shipping"]["phone"]) == ("Hauptstraße 5", "1")


@pytest.mark.parametrize("order_id", [300009, 300010, 300011, 300012])
def test_orders_no_longer_pending_are_409_with_the_documented_message(sc_client, sc_view, order_id):
    before = sc_view(order_id)
    reply = sc_client.patch(f"/orders/{order_id}", json={"shipping_address": {"city": "Bonn"}})
    assert reply.status_code == 409
    message = reply.get_json()["backend"]["message"]
    assert message == (f"Address information cannot be changed since order with src_id: SRC-{order_id} "
                       "is not in pending status")
    assert sc_view(order_id) == before


def test_an_unknown_order_is_404(sc_client):
    reply = sc_client.patch("/orders/399999", json={"shipping_address": {"city": "Bonn"}})
    assert reply.status_code == 404


def test_a_wrong_api_key_is_a_502_saying_the_gateway_credentials_were_refused(make_gateway, sandbox_url):
    connection = sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH, api_key="not-the-key")
    reply = make_gateway(gateway_config(sc=connection)).test_client().patch(
        "/orders/300001", json={"billing_address": {"city": "X"}})
    assert reply.status_code == 502
    problem = reply.get_json()
    assert problem["backend"]["code"] == "E007"
    assert "gateway's own credentials" in problem["detail"]
    assert "not-the-key" not in reply.get_data(as_text=True)


def test_a_skewed_clock_is_a_502_about_the_timestamp(make_gateway, monkeypatch):
    app = sandbox.create_app({"SELLERCENTER_TIMESTAMP_WINDOW_SECONDS": 300})
    with serve_wsgi(app) as url:
        connection = sellercenter_connection(url + SELLERCENTER_SERVICE_PATH)
        gateway = make_gateway(gateway_config(sc=connection))
        signer = gateway_of(gateway).connections.resolve("sc").auth
        monkeypatch.setattr(signer, "clock", lambda: "2015-07-01T11:11:11+00:00")
        reply = gateway.test_client().patch("/orders/300001", json={"billing_address": {"city": "X"}})
    assert reply.status_code == 502
    problem = reply.get_json()
    assert problem["backend"]["code"] == "E003"
    assert "clock" in problem["detail"]


def test_the_rate_limit_is_a_503_with_retry_after(make_gateway):
    app = sandbox.create_app({"SELLERCENTER_RATE_LIMIT_PER_MINUTE": 1})
    with serve_wsgi(app) as url:
        client = make_gateway(gateway_config(sc=sellercenter_connection(url + SELLERCENTER_SERVICE_PATH))).test_client()
        first = client.patch("/orders/300001", json={"billing_address": {"city": "X"}})
        second = client.patch("/orders/300002", json={"billing_address": {"city": "Y"}})
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "60"
    assert second.get_json()["backend"]["code"] == "E429"


def test_a_user_id_is_signed_along(make_gateway, sandbox_url, sc_view):
    connection = sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH, user_id="oms@sandbox.example")
    reply = make_gateway(gateway_config(sc=connection)).test_client().patch(
        "/orders/300003", json={"shipping_address": {"address5": "Hof 2"}})
    assert reply.status_code == 200
    assert sc_view(300003)["address_shipping"]["address5"] == "Hof 2"
