"""PATCH /orders: bulk updates per backend, with per-item outcomes, over real HTTP to the sandboxes."""

from __future__ import annotations

import pytest
import requests

import sandbox
from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_SERVICE_PATH,
    SPEED4TRADE_SERVICE_PATH,
    gateway_config,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)
from tests.servers import RecordingMiddleware, serve_wsgi


@pytest.fixture
def recorded():
    """A fresh sandbox behind a recorder; yields (recorder, base URL)."""
    recorder = RecordingMiddleware(sandbox.create_app())
    with serve_wsgi(recorder) as url:
        yield recorder, url


def connection_for(kind: str, url: str, **overrides) -> dict:
    makers = {
        "ongoing": (ongoing_connection, ONGOING_SERVICE_PATH),
        "speed4trade": (speed4trade_connection, SPEED4TRADE_SERVICE_PATH),
        "sellercenter": (sellercenter_connection, SELLERCENTER_SERVICE_PATH),
    }
    make, path = makers[kind]
    return make(url + path, **overrides)


def view(url: str, kind: str, order_id: str) -> dict:
    reply = requests.get(f"{url}/{kind}/orders/{order_id}", timeout=5)
    assert reply.status_code == 200
    return reply.json()


# Per backend: items in request order, each with the HTTP-style status it must end with, and what must hold
# in the sandbox afterwards: (order id in the view, key, expected value).
MIXED_BATCHES = {
    "ongoing": [
        ({"order_id": "SO-1001", "status": "released"}, 200, ("1001", "status", 300)),
        ({"order_id": "SO-1002", "status": "teleported"}, 422, ("1002", "status", 300)),
        ({"order_id": "SO-1003", "status": "picked"}, 409, ("1003", "status", 320)),
        ({"order_id": "SO-1006", "waybill": "WB-6", "colour": "red"}, 422, ("1006", "waybill", None)),
        ({"order_id": "SO-4040", "status": "released"}, 404, None),
        ({"order_id": "SO-1007", "waybill": "WB-7"}, 200, ("1007", "waybill", "WB-7")),
    ],
    "speed4trade": [
        ({"order_id": "10001", "status": "paid", "payment": {"status_id": 2}}, 200, ("10001", "status", "PAID")),
        ({"order_id": "10002", "status": "paid", "shipments": [{"tracking_number": "T", "carrier": "DHL"}]}, 422,
         ("10002", "status", "NEW")),
        ({"order_id": "10009", "status": "fetched"}, 409, ("10009", "status", "CANCELED")),
        ({"order_id": "99999", "status": "fetched"}, 404, None),
        ({"order_id": "EXT1-10003", "id_type": "external_order_number_1", "status": "fetched"}, 200,
         ("10003", "status", "FETCHED")),
        ({"order_id": "10004"}, 422, ("10004", "status", "NEW")),
    ],
    "sellercenter": [
        ({"order_id": 300001, "billing_address": {"city": "Hamburg"}}, 200,
         ("300001", "address_billing", {"city": "Hamburg"})),
        ({"order_id": "300002", "billing_address": {}}, 422, None),
        ({"order_id": "300010", "shipping_address": {"city": "Bonn"}}, 409, ("300010", "status", "shipped")),
        ({"order_id": "399999", "shipping_address": {"city": "Bonn"}}, 404, None),
        ({"order_id": "300003", "shipping_address": {"postcode": "20095"}}, 200,
         ("300003", "address_shipping", {"postcode": "20095"})),
        ({"order_id": "not-a-number", "shipping_address": {"city": "Bonn"}}, 422, None),
    ],
}


@pytest.mark.parametrize("kind", sorted(MIXED_BATCHES))
def test_a_mixed_batch_reports_every_item_and_sends_only_valid_ones(make_gateway, recorded, kind):
    recorder, url = recorded
    batch = MIXED_BATCHES[kind]
    client = make_gateway(gateway_config(**{kind: connection_for(kind, url)})).test_client()
    reply = client.patch("/orders", json={"orders": [item for item, _, _ in batch]},
                         headers={"X-Request-ID": "bulk-1"})
    assert reply.status_code == 207
    body = reply.get_json()
    assert (body["connection"], body["backend"], body["request_id"]) == (kind, kind, "bulk-1")
    expected_statuses = [status for _, status, _ in batch]
    assert [result["status"] for result in body["results"]] == expected_statuses
    assert [result["position"] for result in body["results"]] == list(range(len(batch)))
    assert [result["order_id"] for result in body["results"]] == [str(item["order_id"]) for item, _, _ in batch]
    assert body["succeeded"] == expected_statuses.count(200)
    assert body["failed"] == len(batch) - expected_statuses.count(200)

    for (item, status, check), result in zip(batch, body["results"], strict=True):
        if status == 200:
            assert result["body"]["backend"] == kind and result["body"]["message"]
        else:
            assert result["body"]["status"] == status and result["body"]["type"].startswith("urn:order-gateway:")
        if status == 422 and "backend" not in result["body"]:
            # refused by the gateway itself: the order must never have reached the backend
            assert not recorder.sent(str(item["order_id"])), item
        if check is not None:
            order_id, key, value = check
            actual = view(url, kind, order_id)[key]
            if isinstance(value, dict):
                assert {name: actual[name] for name in value} == value
            else:
                assert actual == value


@pytest.mark.parametrize(
    ("kind", "items", "calls"),
    [
        ("ongoing", [{"order_id": f"SO-10{n:02d}", "picking_priority": n} for n in range(6, 11)], 5),
        ("speed4trade", [{"order_id": str(10001 + n), "status": "fetched"} for n in range(5)], 3),
        ("sellercenter", [{"order_id": str(300001 + n), "billing_address": {"phone": str(n)}} for n in range(5)], 3),
    ],
)
def test_an_all_good_batch_is_200_and_travels_as_the_backend_allows(make_gateway, recorded, kind, items, calls):
    recorder, url = recorded
    overrides = {} if kind == "ongoing" else {"max_orders_per_call": 2}
    client = make_gateway(gateway_config(**{kind: connection_for(kind, url, **overrides)})).test_client()
    reply = client.patch("/orders", json={"connection": kind, "orders": items})
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert (body["succeeded"], body["failed"]) == (len(items), 0)
    assert len(recorder.bodies) == calls


def test_a_failed_call_fails_exactly_its_own_items(make_gateway):
    # The second of three Speed4Trade calls (orders 10003 and 10004) meets a broken proxy.
    recorder = RecordingMiddleware(sandbox.create_app(), fail_when=lambda body: b"10003" in body)
    with serve_wsgi(recorder) as url:
        connection = connection_for("speed4trade", url, max_orders_per_call=2)
        client = make_gateway(gateway_config(s4t=connection)).test_client()
        items = [{"order_id": str(10001 + n), "status": "fetched"} for n in range(5)]
        reply = client.patch("/orders", json={"orders": items})
        statuses = [view(url, "speed4trade", str(10001 + n))["status"] for n in range(5)]
    assert reply.status_code == 207
    results = reply.get_json()["results"]
    assert [result["status"] for result in results] == [200, 200, 502, 502, 200]
    assert results[2]["body"]["type"].endswith(":backend-failure")
    assert statuses == ["FETCHED", "FETCHED", "NEW", "NEW", "FETCHED"]


def test_ongoing_goes_on_after_one_failed_call(make_gateway):
    recorder = RecordingMiddleware(sandbox.create_app(), fail_when=lambda body: b"SO-1007" in body)
    with serve_wsgi(recorder) as url:
        client = make_gateway(gateway_config(o=connection_for("ongoing", url))).test_client()
        items = [{"order_id": f"SO-100{n}", "waybill": f"W{n}"} for n in (6, 7, 8)]
        reply = client.patch("/orders", json={"orders": items})
        waybills = [view(url, "ongoing", f"100{n}")["waybill"] for n in (6, 7, 8)]
    assert [result["status"] for result in reply.get_json()["results"]] == [200, 502, 200]
    assert waybills == ["W6", None, "W8"]


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({}, 422, "orders"),
        ({"orders": []}, 422, "orders"),
        ({"orders": "SO-1001"}, 422, "orders"),
        ({"orders": [{"order_id": "SO-1001", "status": "open"}], "dry": True}, 422, "dry"),
        ({"connection": "nowhere", "orders": [{"order_id": "SO-1001", "status": "open"}]}, 422, "connection"),
        ([{"order_id": "SO-1001"}], 422, "body"),
    ],
)
def test_a_malformed_envelope_is_refused_whole(client, body, status, path):
    reply = client.patch("/orders", json=body)
    assert reply.status_code == status
    assert path in reply.get_json()["errors"]


def test_malformed_json_is_400(client):
    assert client.patch("/orders", data=b"[", content_type="application/json").status_code == 400


def test_items_that_are_not_objects_or_name_a_connection_fail_alone(client):
    reply = client.patch("/orders", json={"orders": ["SO-1001", {"order_id": "SO-1001", "connection": "x",
                                                                 "status": "open"},
                                                     {"order_id": "SO-1001", "status": "open"}]})
    assert reply.status_code == 207
    results = reply.get_json()["results"]
    assert [result["status"] for result in results] == [422, 422, 200]
    assert results[0]["order_id"] is None and "body" in results[0]["body"]["errors"]
    assert results[1]["body"]["errors"]["connection"] == ["Give the connection once, for the whole batch."]


def test_a_batch_over_the_limit_is_413(make_gateway, sandbox_url):
    config = gateway_config(o=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH))
    config["gateway"]["max_bulk_items"] = 3
    client = make_gateway(config).test_client()
    reply = client.patch("/orders", json={"orders": [{"order_id": "SO-1001", "status": "open"}] * 4})
    assert reply.status_code == 413
    assert reply.get_json()["type"].endswith(":payload-too-large")


def test_the_default_limit_is_500(client):
    reply = client.patch("/orders?dry_run=true", json={"orders": [{"order_id": "SO-1001", "status": "open"}] * 501})
    assert reply.status_code == 413
    assert "at most 500" in reply.get_json()["detail"]


def test_a_bulk_dry_run_shows_the_calls_and_sends_nothing(make_gateway, recorded):
    recorder, url = recorded
    client = make_gateway(gateway_config(sc=connection_for("sellercenter", url, max_orders_per_call=2))).test_client()
    items = [{"order_id": str(300001 + n), "shipping_address": {"city": "Kiel"}} for n in range(3)]
    reply = client.patch("/orders?dry_run=true", json={"orders": [*items, {"order_id": "x", "status": "open"}]})
    assert reply.status_code == 207
    body = reply.get_json()
    assert body["dry_run"] is True
    assert [result["status"] for result in body["results"]] == [200, 200, 200, 422]
    assert len(body["requests"]) == 2
    assert all("Signature=********" in request["url"] for request in body["requests"])
    assert recorder.bodies == []
