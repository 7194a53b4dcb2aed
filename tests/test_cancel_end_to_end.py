"""`{"status": "canceled"}` over real HTTP: the same PATCH cancels on Ongoing (ProcessOrder Remove) and on
Speed4Trade (updateOrderStatus CANCELED), is refused by SellerCenter, and Ongoing's cancel comes back as an
order.status_changed event through the sandbox's webhook."""

from __future__ import annotations

import time

import pytest
import requests

import sandbox
from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_SERVICE_PATH,
    SPEED4TRADE_SERVICE_PATH,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)
from tests.servers import serve_wsgi

WEBHOOKS = {"auth": "basic", "username": "ongoing-webhooks", "password": "webhook-demo-password"}
PICKING_BEGUN = "begun picking"


class LateBoundApp:
    """A WSGI app whose target is set once it exists, so two servers can know each other's URL."""

    target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


@pytest.fixture
def loop(make_gateway):
    """The gateway (over HTTP) with all three backends at a sandbox that fires Ongoing's webhooks at it."""
    gateway_slot = LateBoundApp()
    with serve_wsgi(gateway_slot) as gateway_url:
        sandbox_app = sandbox.create_app({
            "ONGOING_WEBHOOK_URL": f"{gateway_url}/webhooks/ongoing/ongoing",
            "ONGOING_WEBHOOK_AUTH": {"type": "basic", "username": WEBHOOKS["username"],
                                     "password": WEBHOOKS["password"]},
        })
        with serve_wsgi(sandbox_app) as sandbox_url:
            gateway_slot.target = make_gateway({"connections": {
                "ongoing": {**ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH), "webhooks": WEBHOOKS},
                "speed4trade": speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH),
                "sellercenter": sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH),
            }, "gateway": {"default_connection": "ongoing"}})
            yield gateway_url, sandbox_url
            sandbox_app.extensions["sandbox.ongoing"]["webhooks"].stop()


def patch(gateway_url: str, path: str, document: dict) -> requests.Response:
    return requests.patch(f"{gateway_url}{path}", json=document, timeout=10)


def ongoing_order(sandbox_url: str, system_id: int) -> dict:
    reply = requests.get(f"{sandbox_url}/ongoing/orders/{system_id}", timeout=5)
    assert reply.status_code == 200
    return reply.json()


def events_of(gateway_url: str, order_id: str) -> list[dict]:
    reply = requests.get(f"{gateway_url}/events", params={"order_id": order_id}, timeout=5)
    assert reply.status_code == 200
    return [stored["event"] for stored in reply.json()["events"]]


def wait_for_event(gateway_url: str, order_id: str, event_type: str, seconds: float = 10.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [event for event in events_of(gateway_url, order_id) if event["type"] == event_type]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {event_type} event for {order_id} within {seconds} s")


@pytest.mark.parametrize(("order_id", "id_type", "system_id"), [
    ("SO-1001", None, 1001), ("EXT-1002", "order_id", 1002), ("1006", "system_id", 1006)])
def test_an_ongoing_cancel_removes_the_order_and_comes_back_as_an_event(loop, order_id, id_type, system_id):
    gateway_url, sandbox_url = loop
    document = {"status": "canceled", **({"id_type": id_type} if id_type else {})}
    reply = patch(gateway_url, f"/orders/{order_id}", document)
    assert reply.status_code == 200, reply.json()
    body = reply.json()
    assert (body["backend"], body["operation"], body["backend_order_id"]) == ("ongoing", "ProcessOrder",
                                                                               str(system_id))
    assert body["updated"] == {"status": "canceled"}
    order = ongoing_order(sandbox_url, system_id)
    assert (order["status"], order["status_name"]) == (1000, "Cancelled")
    event = wait_for_event(gateway_url, order["order_number"], "order.status_changed")
    assert event["order"]["status"] == {"code": 1000, "name": "canceled"}
    assert event["order"]["backend_order_id"] == str(system_id)


@pytest.mark.parametrize(("order_number", "system_id"), [("SO-1003", 1003), ("SO-1004", 1004), ("SO-1005", 1005)])
def test_an_ongoing_order_whose_picking_has_begun_is_a_409_and_stays(loop, order_number, system_id):
    gateway_url, sandbox_url = loop
    before = ongoing_order(sandbox_url, system_id)
    reply = patch(gateway_url, f"/orders/{order_number}", {"status": "canceled"})
    assert reply.status_code == 409, reply.json()
    problem = reply.json()
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert problem["type"] == "urn:order-gateway:problem:order-state-conflict"
    assert PICKING_BEGUN in problem["backend"]["message"]
    assert ongoing_order(sandbox_url, system_id) == before


def test_an_unknown_ongoing_order_is_a_404(loop):
    gateway_url, _ = loop
    reply = patch(gateway_url, "/orders/SO-9999", {"status": "canceled"})
    assert reply.status_code == 404, reply.json()


def test_a_repeated_ongoing_cancel_succeeds_again(loop):
    gateway_url, sandbox_url = loop
    assert patch(gateway_url, "/orders/SO-1007", {"status": "canceled"}).status_code == 200
    again = patch(gateway_url, "/orders/SO-1007", {"status": "canceled"})
    assert again.status_code == 200, again.json()
    assert ongoing_order(sandbox_url, 1007)["status"] == 1000


def test_an_ongoing_dry_run_cancel_shows_process_order_and_sends_nothing(loop):
    gateway_url, sandbox_url = loop
    reply = patch(gateway_url, "/orders/SO-1008?dry_run=true", {"status": "canceled"})
    assert reply.status_code == 200, reply.json()
    body = reply.json()
    assert (body["operation"], body["dry_run"]) == ("ProcessOrder", True)
    request = body["request"]
    assert request["headers"]["SOAPAction"] == '"http://ongoingsystems.se/WSI/ProcessOrder"'
    assert "<OrderOperation>Remove</OrderOperation>" in request["body"]
    assert "demo-password" not in request["body"] and "<Password>********</Password>" in request["body"]
    assert ongoing_order(sandbox_url, 1008)["status"] == 200


def test_a_bulk_mixes_cancels_and_updates_each_with_its_operation(loop):
    gateway_url, sandbox_url = loop
    reply = requests.patch(f"{gateway_url}/orders", json={"connection": "ongoing", "orders": [
        {"order_id": "SO-1009", "status": "canceled"},
        {"order_id": "SO-1010", "status": "released"},
        {"order_id": "SO-1003", "status": "canceled"},
        {"order_id": "SO-1002", "status": "canceled", "waybill": "WB-1"},
    ]}, timeout=10)
    assert reply.status_code == 207, reply.json()
    results = reply.json()["results"]
    assert [result["status"] for result in results] == [200, 200, 409, 422]
    assert [result["body"].get("operation") for result in results[:2]] == ["ProcessOrder", "UpdateOrder"]
    assert "Cannot be combined with status 'canceled'" in results[3]["body"]["errors"]["waybill"][0]
    assert ongoing_order(sandbox_url, 1009)["status"] == 1000
    assert ongoing_order(sandbox_url, 1010)["status"] == 300
    assert ongoing_order(sandbox_url, 1002)["status"] == 300


def test_a_speed4trade_cancel_is_update_order_status_canceled(loop):
    gateway_url, sandbox_url = loop
    reply = patch(gateway_url, "/orders/10001", {"connection": "speed4trade", "status": "canceled"})
    assert reply.status_code == 200, reply.json()
    assert (reply.json()["backend"], reply.json()["operation"]) == ("speed4trade", "updateOrderStatus")
    order = requests.get(f"{sandbox_url}/speed4trade/orders/10001", timeout=5).json()
    assert order["status"] == "CANCELED"


def test_sellercenter_refuses_a_cancel_naming_the_backend_and_sends_nothing(loop):
    gateway_url, sandbox_url = loop
    before = requests.get(f"{sandbox_url}/sellercenter/orders/300001", timeout=5).json()
    reply = patch(gateway_url, "/orders/300001", {"connection": "sellercenter", "status": "canceled"})
    assert reply.status_code == 422, reply.json()
    (message,) = reply.json()["errors"]["status"]
    assert message.startswith("Not supported by backend 'sellercenter' (connection 'sellercenter')")
    assert "addresses only" in message
    assert requests.get(f"{sandbox_url}/sellercenter/orders/300001", timeout=5).json() == before
