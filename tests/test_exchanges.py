"""The exchange journal over HTTP: every backend call recorded with its request and reply, credentials masked as
in dry runs, found by order, connection, outcome and the reply's request_id; behind the scope exchanges:read."""

from __future__ import annotations

import pytest

from gateway.runtime import gateway_of
from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_API_KEY,
    SELLERCENTER_SERVICE_PATH,
    SPEED4TRADE_SERVICE_PATH,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)
from tests.servers import closed_port

KEY, READER = "journal-key-000000001", "events-only-key-00001"


def config(sandbox_url: str, **journal) -> dict:
    return {
        "gateway": {"default_connection": "ongoing"},
        "connections": {
            "ongoing": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH),
            "speed4trade": speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH),
            "sellercenter": sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH),
            "nowhere": ongoing_connection(f"http://127.0.0.1:{closed_port()}/Service.asmx", retry_attempts=1),
        },
        "callers": {"ops": {"key": KEY, "scopes": ["orders:write", "exchanges:read"]},
                    "events": {"key": READER, "scopes": ["events:read"]}},
        "journal": journal,
    }


@pytest.fixture
def client(make_gateway, sandbox_url):
    return make_gateway(config(sandbox_url)).test_client()


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def exchanges_of(client, **filters) -> list[dict]:
    reply = client.get("/exchanges", query_string=filters, headers=auth())
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()["exchanges"]


def test_a_patch_is_found_by_its_request_id_with_the_request_and_reply_as_exchanged(client):
    reply = client.patch("/orders/SO-1001", json={"status": "released"}, headers=auth())
    assert reply.status_code == 200
    (exchange,) = exchanges_of(client, request_id=reply.get_json()["request_id"])
    assert (exchange["connection"], exchange["backend"], exchange["operation"]) == ("ongoing", "ongoing",
                                                                                    "UpdateOrder")
    assert exchange["caller"] == "ops" and exchange["order_ids"] == ["SO-1001"] and exchange["outcome"] == "ok"
    assert exchange["request"]["headers"]["SOAPAction"] == '"http://ongoingsystems.se/WSI/UpdateOrder"'
    assert "<Password>********</Password>" in exchange["request"]["body"]
    assert "demo-password" not in str(exchange)
    assert exchange["reply"]["status"] == 200 and "<Success>true</Success>" in exchange["reply"]["body"]
    assert exchange["duration_ms"] > 0
    assert client.get(f"/exchanges/{exchange['id']}", headers=auth()).get_json() == exchange


@pytest.mark.parametrize(("path", "body", "masked"), [
    ("/orders/10001", {"connection": "speed4trade", "status": "fetched"}, "Basic ********"),
    ("/orders/300001", {"connection": "sellercenter", "shipping_address": {"city": "Kiel"}}, "Signature=********"),
])
def test_transport_credentials_are_masked_as_in_dry_runs(client, path, body, masked):
    client.patch(path, json=body, headers=auth())
    (exchange,) = exchanges_of(client, connection=body["connection"])
    assert masked in str(exchange["request"])
    assert SELLERCENTER_API_KEY not in str(exchange) and "connect-password" not in str(exchange)


def test_refusals_and_unreachable_backends_are_recorded_with_their_outcome(client):
    assert client.patch("/orders/SO-9999", json={"status": "released"}, headers=auth()).status_code == 404
    assert client.patch("/orders/SO-1001", json={"connection": "nowhere", "status": "released"},
                        headers=auth()).status_code == 503
    (refused,) = exchanges_of(client, outcome="refused")
    assert refused["order_ids"] == ["SO-9999"] and "No order found" in refused["error"]
    (unreachable,) = exchanges_of(client, outcome="unreachable")
    assert unreachable["connection"] == "nowhere" and unreachable["reply"] is None
    assert [item["outcome"] for item in exchanges_of(client)] == ["unreachable", "refused"]  # newest first
    assert [item["order_ids"] for item in exchanges_of(client, order_id="SO-9999")] == [["SO-9999"]]


def test_dry_runs_make_no_exchange(client):
    client.patch("/orders/SO-1001?dry_run=true", json={"status": "released"}, headers=auth())
    assert exchanges_of(client) == []


def test_without_bodies_only_the_metadata_is_kept(make_gateway, sandbox_url):
    client = make_gateway(config(sandbox_url, record_bodies=False)).test_client()
    client.patch("/orders/SO-1002", json={"status": "released"}, headers=auth())
    (exchange,) = exchanges_of(client)
    assert exchange["request"]["body"] is None and exchange["reply"]["body"] is None
    assert exchange["reply"]["status"] == 200 and exchange["request"]["method"] == "POST"


def test_reading_the_journal_needs_its_scope(client):
    assert client.get("/exchanges").status_code == 401
    forbidden = client.get("/exchanges", headers=auth(READER))
    assert forbidden.status_code == 403 and "exchanges:read" in forbidden.get_json()["detail"]
    assert client.get("/exchanges/exc_unknown", headers=auth()).status_code == 404
    assert client.get("/exchanges?outcome=maybe", headers=auth()).status_code == 422


@pytest.mark.expected_traceback  # the failure is logged with its traceback, as it should be
def test_a_journal_that_fails_never_fails_the_request(client, monkeypatch):
    recorder = gateway_of(client.application).recorder

    def broken(exchanges):
        raise OSError("disk full")

    monkeypatch.setattr(recorder.journal, "record_many", broken)
    reply = client.patch("/orders/SO-1003", json={"waybill": "WB-3"}, headers=auth())
    assert reply.status_code == 200
    assert recorder.flush() and recorder.failed == 1


@pytest.mark.expected_traceback  # the failure is logged with its traceback, as it should be
def test_an_exchange_that_cannot_be_made_never_fails_the_request(client, monkeypatch):
    recorder = gateway_of(client.application).recorder
    connection = gateway_of(client.application).connections.resolve("ongoing")

    def broken(request):
        raise ValueError("cannot mask this")

    monkeypatch.setattr(connection.backend, "dry_run_view", broken)
    reply = client.patch("/orders/SO-1003", json={"waybill": "WB-3"}, headers=auth())
    assert reply.status_code == 200
    assert recorder.flush() and recorder.failed == 1 and recorder.recorded == 0


def test_the_exchange_is_masked_and_scrubbed_on_the_journals_thread_not_the_requests(client, monkeypatch):
    import threading

    connection = gateway_of(client.application).connections.resolve("ongoing")
    made_on = []
    view = connection.backend.dry_run_view

    def noting_thread(request):
        made_on.append(threading.current_thread().name)
        return view(request)

    monkeypatch.setattr(connection.backend, "dry_run_view", noting_thread)
    assert client.patch("/orders/SO-1003", json={"waybill": "WB-4"}, headers=auth()).status_code == 200
    assert gateway_of(client.application).recorder.flush()
    assert made_on == ["gateway-journal"]
    (exchange, *_) = exchanges_of(client)
    assert exchange["order_ids"] == ["SO-1003"] and "demo-password" not in str(exchange)
