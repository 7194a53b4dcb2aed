"""GET /livez and GET /readyz: application/health+json, no key, the components' states, no secret or URL."""

from __future__ import annotations

import time

from gateway.events.heartbeat import Heartbeat
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection

SECRET = "s3cret-ongoing-password"


def health_app(make_gateway, sandbox_url):
    config = gateway_config(ongoing=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH, password=SECRET,
                                                       breaker_failures=1))
    config["callers"] = {"ops": {"key": "ops-key-000000000001", "scopes": ["events:read"]}}
    return make_gateway(config)


def test_livez_passes_without_a_key(make_gateway, sandbox_url):
    reply = health_app(make_gateway, sandbox_url).test_client().get("/livez")
    assert reply.status_code == 200 and reply.mimetype == "application/health+json"
    assert reply.get_json()["status"] == "pass"


def test_readyz_lists_every_component_and_names_no_secret(make_gateway, sandbox_url):
    app = health_app(make_gateway, sandbox_url)
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 200 and reply.mimetype == "application/health+json"
    health = reply.get_json()
    assert health["status"] == "pass", health
    assert set(health["checks"]) == {"configuration:loaded", "eventStore:responseTime", "deliveryQueue:responseTime",
                                     "idempotencyStore:responseTime", "eventWorker:heartbeatAge", "connection:ongoing"}
    assert all(entries[0]["status"] == "pass" for entries in health["checks"].values())
    text = reply.get_data(as_text=True)
    assert SECRET not in text and sandbox_url not in text


def test_a_missing_or_stale_worker_and_an_open_breaker_warn(make_gateway, sandbox_url):
    app = health_app(make_gateway, sandbox_url)
    client = app.test_client()
    missing = client.get("/readyz").get_json()
    assert missing["status"] == "warn"
    assert missing["checks"]["eventWorker:heartbeatAge"][0]["status"] == "warn"
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat(now=time.time() - 300)
    stale = client.get("/readyz").get_json()["checks"]["eventWorker:heartbeatAge"][0]
    assert stale["status"] == "warn" and stale["observedValue"] >= 299
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()
    connection = app.extensions["order_gateway"].resolve("ongoing")
    connection.breaker.open()
    health = client.get("/readyz")
    assert health.status_code == 200
    entry = health.get_json()["checks"]["connection:ongoing"][0]
    assert (entry["status"], entry["observedValue"]) == ("warn", "open")
    assert "breaker open" in entry["output"]


def test_a_store_that_cannot_be_reached_fails_with_503(make_gateway, sandbox_url, monkeypatch):
    app = health_app(make_gateway, sandbox_url)
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()

    def unreachable(*args, **kwargs):
        raise ConnectionError("redis://user:pw@10.0.0.1 refused")

    monkeypatch.setattr(app.extensions["order_gateway_idempotency"], "ping", unreachable)
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    health = reply.get_json()
    assert health["status"] == "fail"
    assert health["checks"]["idempotencyStore:responseTime"][0]["output"] == "unreachable (ConnectionError)"
    assert "pw@" not in reply.get_data(as_text=True)
