"""Callers: every endpoint but the webhook receiver and the docs needs `Authorization: Bearer <key>`; scopes and
connections restrict single, bulk and dry-run calls alike; a gateway nobody could call refuses to start."""

from __future__ import annotations

import logging

import pytest
from marshmallow import validate

from gateway import create_app
from gateway.config import SCOPES
from gateway.errors import ConfigError, Forbidden
from gateway.rest.auth import (
    ANONYMOUS,
    NOBODY,
    current_caller,
    require_connection,
    require_scope,
    scoped_connections,
)
from gateway.runtime import gateway_of
from tests.calls import RecordingTransport
from tests.conftest import ONGOING_SERVICE_PATH, ongoing_connection, speed4trade_connection
from tests.ongoing_timestamps import recent_timestamp
from tests.refusals import refusal

WRITER_KEYS = ["writer-key-0000000001", "writer-key-0000000002"]  # two keys: one being rotated out
READER_KEY = "reader-key-00000000001"
BASIC = {"auth": "basic", "username": "ongoing-webhooks", "password": "webhook-demo-password"}
WEBHOOK = {"webhookEventId": 1, "system": "sandbox", "timestamp": recent_timestamp(), "orderId": 1001,
           "orderNumber": "SO-1001", "webhookTemplate": "OrderCreated"}


def config(sandbox_url: str, **gateway) -> dict:
    return {
        "gateway": {"default_connection": "ongoing", "sandbox": True, **gateway},  # BASIC: the demo webhook password
        "connections": {
            "ongoing": {**ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH), "webhooks": BASIC},
            "speed4trade": speed4trade_connection("http://127.0.0.1:9/speed4trade/"),
        },
        "callers": {
            "erp": {"keys": WRITER_KEYS, "connections": ["*"],
                    "scopes": ["orders:write", "events:read", "events:redeliver"]},
            "reporting": {"key": READER_KEY, "connections": ["ongoing"], "scopes": ["orders:dry-run", "events:read"]},
        },
    }


@pytest.fixture
def client(make_gateway, sandbox_url):
    return make_gateway(config(sandbox_url)).test_client()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


ENDPOINTS = [
    ("PATCH", "/orders/SO-1001", {"status": "released"}),
    ("PATCH", "/orders", {"orders": [{"order_id": "SO-1001", "status": "released"}]}),
    ("GET", "/events", None),
    ("GET", "/events/evt_unknown", None),
    ("POST", "/events/evt_unknown/redeliver", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, bearer("not-a-configured-key-000"), {"Authorization": "Basic ZGVtbzpkZW1v"},
                                     {"Authorization": "Bearer "}, {"Authorization": "Bearer\u00e9x"}],
                         ids=["no-key", "unknown-key", "basic", "empty-bearer", "garbled"])
def test_without_a_known_key_every_api_endpoint_is_401(client, method, path, body, headers):
    reply = client.open(path, method=method, json=body, headers=headers)
    assert reply.status_code == 401, reply.get_json()
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="order gateway"'
    assert reply.mimetype == "application/problem+json"
    assert reply.get_json()["type"] == "urn:order-gateway:problem:unauthorized"


@pytest.mark.parametrize("key", WRITER_KEYS)
def test_every_key_of_a_caller_works_so_keys_rotate_without_downtime(client, sandbox_view, key):
    reply = client.patch("/orders/SO-1006", json={"status": "released"}, headers=bearer(key))
    assert reply.status_code == 200, reply.get_json()
    assert sandbox_view(1006)["status"] == 300


def test_a_dry_run_caller_may_dry_run_but_not_send(client, sandbox_view):
    dry = client.patch("/orders/SO-1007?dry_run=true", json={"status": "released"}, headers=bearer(READER_KEY))
    assert dry.status_code == 200, dry.get_json()
    real = client.patch("/orders/SO-1007", json={"status": "released"}, headers=bearer(READER_KEY))
    assert real.status_code == 403
    assert "orders:write" in real.get_json()["detail"] and "'reporting'" in real.get_json()["detail"]
    assert real.headers["WWW-Authenticate"] == ('Bearer realm="order gateway", error="insufficient_scope", '
                                               'scope="orders:write"')
    assert sandbox_view(1007)["status"] == 200


@pytest.mark.parametrize(("path", "body"), [
    ("/orders/10001?dry_run=true", {"connection": "speed4trade", "status": "fetched"}),
    ("/orders?dry_run=true", {"connection": "speed4trade", "orders": [{"order_id": "10001", "status": "fetched"}]}),
])
def test_a_connection_the_caller_may_not_use_is_403_naming_it(client, path, body):
    reply = client.patch(path, json=body, headers=bearer(READER_KEY))
    assert reply.status_code == 403, reply.get_json()
    assert "may not use connection 'speed4trade'" in reply.get_json()["detail"]


def test_a_forbidden_bulk_is_refused_whole_and_sends_nothing(make_gateway, sandbox_url, tmp_path):
    transport = RecordingTransport(None)
    settings = config(sandbox_url)
    settings["callers"]["ongoing-only"] = {"key": "ongoing-only-key-0001", "connections": ["ongoing"],
                                           "scopes": ["orders:write"]}
    settings["events"] = {"database": str(tmp_path / "e.sqlite3"), "queue_database": str(tmp_path / "q.sqlite3")}
    app = create_app(settings, transports={"speed4trade": transport})
    try:
        reply = app.test_client().patch("/orders", headers=bearer("ongoing-only-key-0001"), json={
            "connection": "speed4trade", "orders": [{"order_id": "10001", "status": "fetched"},
                                                    {"order_id": "10002", "status": "fetched"}]})
    finally:
        gateway_of(app).close()
    assert reply.status_code == 403
    assert transport.sent == []


def test_scopes_guard_reading_and_redelivering_events(client):
    assert client.get("/events", headers=bearer(READER_KEY)).status_code == 200
    assert client.get("/events", headers=bearer(WRITER_KEYS[0])).status_code == 200
    forbidden = client.post("/events/evt_unknown/redeliver", headers=bearer(READER_KEY))
    assert forbidden.status_code == 403 and "events:redeliver" in forbidden.get_json()["detail"]
    assert client.post("/events/evt_unknown/redeliver", headers=bearer(WRITER_KEYS[0])).status_code == 404


def test_a_redelivery_records_who_asked_for_it(client):
    stored = client.post("/webhooks/ongoing/ongoing", json=WEBHOOK, auth=("ongoing-webhooks",
                                                                          "webhook-demo-password"))
    assert stored.status_code == 202, stored.get_json()
    event_id = stored.get_json()["id"]
    reply = client.post(f"/events/{event_id}/redeliver", headers=bearer(WRITER_KEYS[1]))
    assert reply.status_code == 202 and reply.get_json()["requested_by"] == "erp"


def test_the_webhook_receiver_keeps_its_own_vendor_authentication(client):
    assert client.post("/webhooks/ongoing/ongoing", json=WEBHOOK).status_code == 401  # no Basic credentials
    assert client.post("/webhooks/ongoing/ongoing", json=WEBHOOK,
                       auth=("ongoing-webhooks", "webhook-demo-password")).status_code == 202


def test_the_docs_are_open_by_default_and_closed_on_request(make_gateway, sandbox_url):
    open_app = make_gateway(config(sandbox_url)).test_client()
    assert open_app.get("/openapi.json").status_code == 200
    assert open_app.get("/docs/").status_code == 200
    closed = make_gateway(config(sandbox_url, open_docs=False)).test_client()
    assert closed.get("/openapi.json").status_code == 401
    assert closed.get("/docs/").status_code == 401
    assert closed.get("/openapi.json", headers=bearer(READER_KEY)).status_code == 200


def test_the_openapi_document_declares_the_bearer_scheme(client):
    document = client.get("/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerAuth": []}]
    webhook = document["paths"]["/webhooks/{backend}/{connection}"]["post"]
    assert webhook["security"] == [{"webhookBasic": []}, {"webhookToken": []}]
    assert "401" in document["paths"]["/orders/{order_id}"]["patch"]["responses"]
    assert "403" in document["paths"]["/orders/{order_id}"]["patch"]["responses"]


def test_keys_never_reach_a_reply_or_a_log_line(client, caplog):
    with caplog.at_level(logging.DEBUG):
        client.patch("/orders/SO-1008", json={"status": "released", "colour": WRITER_KEYS[0]},
                     headers=bearer(WRITER_KEYS[0]))
        # a dry run echoes the order id: here, the caller's own key
        reply = client.patch(f"/orders/{READER_KEY}?dry_run=true", json={"status": "released"},
                             headers=bearer(READER_KEY))
        logging.getLogger("gateway.test").warning("caller sent %s", READER_KEY)
    assert READER_KEY not in reply.get_data(as_text=True) and "********" in reply.get_data(as_text=True)
    assert WRITER_KEYS[0] not in caplog.text and READER_KEY not in caplog.text


def test_anonymous_callers_are_served_only_when_the_configuration_says_so(make_gateway, sandbox_url, tmp_path):
    settings = config(sandbox_url)
    del settings["callers"]
    settings["events"] = {"database": str(tmp_path / "e.sqlite3"), "queue_database": str(tmp_path / "q.sqlite3")}
    with pytest.raises(ConfigError, match=r"callers: no \[callers.<name>\] is configured"):
        create_app(settings)
    settings["gateway"]["allow_anonymous"] = True
    app = make_gateway(settings)
    reply = app.test_client().patch("/orders/SO-1009?dry_run=true", json={"status": "released"})
    assert reply.status_code == 200, reply.get_json()


@pytest.mark.parametrize(("caller", "key", "fragment"), [
    ({"key": "too-short", "scopes": ["events:read"]}, "callers.bad.keys", "at least 16 characters"),
    ({"scopes": ["events:read"]}, "callers.bad.keys", "Give the caller's API key"),
    # marshmallow's choice check, asked what it says (tests.refusals)
    ({"key": "long-enough-key-0001", "scopes": ["orders:delete"]}, "callers.bad.scopes.0",
     refusal(validate.OneOf(sorted(SCOPES)), "orders:delete")),
    ({"key": "long-enough-key-0001", "scopes": ["events:read"], "connections": ["nowhere"]},
     "callers.bad.connections", "names no configured connection: 'nowhere'"),
    ({"key": READER_KEY, "scopes": ["events:read"]}, "callers.bad.keys", "a key of caller 'reporting' too"),
])
def test_caller_settings_are_checked_at_start_up(sandbox_url, caller, key, fragment):
    from gateway.backends import BACKENDS
    from gateway.config import load_settings

    settings = config(sandbox_url)
    settings["callers"]["bad"] = caller
    with pytest.raises(ConfigError) as caught:
        load_settings(settings, "<test>", BACKENDS)
    assert caught.value.key == key and fragment in caught.value.problem, caught.value


def test_without_an_established_caller_there_is_nobody_with_no_scope_and_no_connection(client):
    app = client.application
    for path in ("/livez", "/webhooks/ongoing/ongoing", "/console/login"):
        with app.test_request_context(path, method="POST" if "webhooks" in path else "GET"):
            assert app.preprocess_request() is None
            caller = current_caller()
            assert caller is NOBODY and caller.scopes == frozenset(), path
            assert scoped_connections() == frozenset() and not caller.sees("ongoing") and not caller.sees(None)
            with pytest.raises(Forbidden):
                require_scope(*SCOPES)
            with pytest.raises(Forbidden):
                require_connection("ongoing")


def test_the_anonymous_caller_with_every_scope_serves_only_keyless_requests_and_only_when_allowed(
        make_gateway, sandbox_url, tmp_path):
    settings = config(sandbox_url, allow_anonymous=True)
    anonymous = make_gateway(settings)
    with anonymous.test_request_context("/events"):
        assert anonymous.preprocess_request() is None
        assert current_caller() is ANONYMOUS and current_caller().scopes == frozenset(SCOPES)
    with anonymous.test_request_context("/livez"):  # a route that needs no caller gets none
        assert anonymous.preprocess_request() is None
        assert current_caller() is NOBODY
    client = anonymous.test_client()
    assert client.get("/events").status_code == 200
    assert client.get("/events", headers=bearer("not-a-configured-key-000")).status_code == 401
    assert client.get("/events", headers=bearer(READER_KEY)).status_code == 200

    closed = make_gateway(config(sandbox_url)).test_client()
    assert closed.get("/events").status_code == 401

