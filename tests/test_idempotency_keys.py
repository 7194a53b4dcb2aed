"""Idempotency-Key over HTTP: a retry with the key gets the first reply again and sends nothing; another request
with the key is 422, one while the first runs 409; replies that sent nothing are not kept; keys are the caller's."""

from __future__ import annotations

import threading
import time

import pytest
import requests

import sandbox
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, ongoing_connection
from tests.servers import serve_wsgi

KEYS = {"erp": "erp-key-000000000001", "shop": "shop-key-00000000001"}


def config(url: str, **gateway) -> dict:
    return {
        "gateway": {"default_connection": "ongoing", **gateway},
        "connections": {"ongoing": ongoing_connection(url + ONGOING_SERVICE_PATH, breaker_failures=2,
                                                      retry_attempts=1, read_timeout=5)},
        "callers": {name: {"key": key, "scopes": ["orders:write", "events:read", "events:redeliver"]}
                    for name, key in KEYS.items()},
    }


@pytest.fixture
def slow_sandbox():
    """An Ongoing sandbox whose calls take 0.4 s, so a second request can arrive while the first runs."""
    with serve_wsgi(sandbox.create_app({"ONGOING_CALL_SECONDS": 0.4, "ONGOING_OVERLAP_DELAY_SECONDS": 0.1})) as url:
        yield url


@pytest.fixture
def client(make_gateway, sandbox_url):
    return make_gateway(config(sandbox_url)).test_client()


def calls_seen(sandbox_url: str) -> int:
    owners = requests.get(f"{sandbox_url}/ongoing/concurrency", timeout=5).json()["goods_owners"]
    return owners.get("DEMO", {}).get("calls", 0) + owners.get("DEMO", {}).get("overlaps", 0)


def patch(client, path: str, body: dict, key: str | None = None, caller: str = "erp"):
    headers = {"Authorization": f"Bearer {KEYS[caller]}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.patch(path, json=body, headers=headers)


def test_a_retry_with_the_key_gets_the_first_reply_byte_for_byte_and_sends_nothing(client, sandbox_url):
    first = patch(client, "/orders/SO-1001", {"status": "released"}, '"order-1001-release"')
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = patch(client, "/orders/SO-1001", {"status": "released"}, '"order-1001-release"')
    assert again.status_code == 200
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert calls_seen(sandbox_url) == 1


def test_the_same_body_in_another_member_order_is_the_same_request(client, sandbox_url):
    patch(client, "/orders/SO-1002", {"status": "released", "waybill": "WB-1"}, "k-order")
    again = patch(client, "/orders/SO-1002", {"waybill": "WB-1", "status": "released"}, '"k-order"')
    assert again.headers.get("Idempotent-Replayed") == "true"  # a token and a string spell one key
    assert calls_seen(sandbox_url) == 1


def test_the_key_with_another_request_is_422(client, sandbox_url):
    patch(client, "/orders/SO-1006", {"status": "released"}, '"k-1"')
    for path, body in (("/orders/SO-1006", {"status": "allocated"}), ("/orders/SO-1007", {"status": "released"})):
        reply = patch(client, path, body, '"k-1"')
        assert reply.status_code == 422, reply.get_json()
        assert reply.get_json()["type"] == "urn:order-gateway:problem:idempotency-key-reused"
    assert calls_seen(sandbox_url) == 1


def test_a_repeat_while_the_first_is_running_is_409(make_gateway, slow_sandbox):
    client = make_gateway(config(slow_sandbox)).test_client()
    first: list = []
    running = threading.Thread(target=lambda: first.append(
        patch(client, "/orders/SO-1001", {"status": "released"}, '"k-slow"')))
    running.start()
    time.sleep(0.15)
    second = patch(client, "/orders/SO-1001", {"status": "released"}, '"k-slow"')
    running.join()
    assert second.status_code == 409, second.get_json()
    assert second.get_json()["type"] == "urn:order-gateway:problem:idempotency-key-in-use"
    assert second.headers["Retry-After"] == "1"
    assert first[0].status_code == 200
    assert calls_seen(slow_sandbox) == 1
    replay = patch(client, "/orders/SO-1001", {"status": "released"}, '"k-slow"')
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_data() == first[0].get_data()


def test_keys_are_each_callers_own(client, sandbox_url):
    assert patch(client, "/orders/SO-1008", {"status": "released"}, '"shared"', caller="erp").status_code == 200
    other = patch(client, "/orders/SO-1009", {"status": "released"}, '"shared"', caller="shop")
    assert other.status_code == 200 and "Idempotent-Replayed" not in other.headers
    assert calls_seen(sandbox_url) == 2


def test_a_reply_that_sent_nothing_is_not_kept(client, sandbox_url):
    invalid = patch(client, "/orders/SO-1010", {"status": "teleported"}, '"k-fix"')
    assert invalid.status_code == 422
    fixed = patch(client, "/orders/SO-1010", {"status": "released"}, '"k-fix"')
    assert fixed.status_code == 200 and "Idempotent-Replayed" not in fixed.headers
    assert calls_seen(sandbox_url) == 1


def test_a_refusal_after_a_call_is_kept_so_the_retry_sends_nothing(client, sandbox_url):
    first = patch(client, "/orders/SO-9999", {"status": "released"}, '"k-unknown"')
    assert first.status_code == 404
    again = patch(client, "/orders/SO-9999", {"status": "released"}, '"k-unknown"')
    assert again.status_code == 404 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert calls_seen(sandbox_url) == 1


def test_dry_runs_are_never_kept(client, sandbox_url):
    dry = patch(client, "/orders/SO-1001?dry_run=true", {"status": "released"}, '"k-dry"')
    assert dry.status_code == 200 and calls_seen(sandbox_url) == 0
    real = patch(client, "/orders/SO-1001", {"status": "released"}, '"k-dry"')
    assert real.status_code == 200 and "Idempotent-Replayed" not in real.headers
    assert calls_seen(sandbox_url) == 1


def test_a_bulk_with_the_key_is_replayed_whole(client, sandbox_url):
    body = {"orders": [{"order_id": "SO-1001", "status": "released"}, {"order_id": "SO-9999", "status": "open"}]}
    first = patch(client, "/orders", body, '"bulk-1"')
    assert first.status_code == 207
    again = patch(client, "/orders", body, '"bulk-1"')
    assert (again.status_code, again.get_data()) == (207, first.get_data())
    assert calls_seen(sandbox_url) == 2


@pytest.mark.parametrize(("value", "fragment"), [
    ('"' + "x" * 256 + '"', "1 to 255 characters"), ('""', "1 to 255 characters"),
    ('"unterminated', "structured-field string"), ("two words", "structured-field string"),
])
def test_a_malformed_key_is_422_naming_the_header(client, sandbox_url, value, fragment):
    reply = patch(client, "/orders/SO-1001", {"status": "released"}, value)
    assert reply.status_code == 422
    assert fragment in reply.get_json()["errors"]["Idempotency-Key"][0]
    assert calls_seen(sandbox_url) == 0


def test_a_kept_reply_expires(make_gateway, sandbox_url):
    client = make_gateway(config(sandbox_url, idempotency_ttl_seconds=1)).test_client()
    patch(client, "/orders/SO-1001", {"status": "released"}, '"k-ttl"')
    time.sleep(1.2)
    again = patch(client, "/orders/SO-1001", {"status": "released"}, '"k-ttl"')
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert calls_seen(sandbox_url) == 2


def test_a_double_clicked_redelivery_delivers_once(client):
    service = gateway_of(client.application).events
    event_id, _ = service.store.add_event({"id": "evt_click", "type": "order.created",
                                          "occurred_at": "2026-11-23T12:00:00Z"}, dedupe_key="click",
                                         order_key="o:1", subscribers=["crm"])
    headers = {"Authorization": f"Bearer {KEYS['erp']}", "Idempotency-Key": '"redeliver-evt-click"'}
    first = client.post(f"/events/{event_id}/redeliver", headers=headers)
    second = client.post(f"/events/{event_id}/redeliver", headers=headers)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.headers["Idempotent-Replayed"] == "true"
    history = service.store.get_event(event_id)["deliveries"][0]["history"]
    assert [entry["outcome"] for entry in history] == ["redeliver"]
