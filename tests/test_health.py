"""GET /livez and GET /readyz: application/health+json, no key, the components' states, no secret or URL."""

from __future__ import annotations

import dataclasses
import textwrap
import threading
import time

import pytest
import redis

from gateway import create_app
from gateway.events.heartbeat import Heartbeat
from gateway.runtime import gateway_of
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
                                     "idempotencyStore:responseTime", "authThrottle:responseTime",
                                     "consoleSessions:responseTime", "eventWorker:heartbeatAge", "connection:ongoing",
                                     "updateJobs:oldestQueuedAge", "dataFolder:freeSpace"}
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
    connection = gateway_of(app).connections.resolve("ongoing")
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

    monkeypatch.setattr(gateway_of(app).idempotency, "ping", unreachable)
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    health = reply.get_json()
    assert health["status"] == "fail"
    assert health["checks"]["idempotencyStore:responseTime"][0]["output"] == "unreachable (ConnectionError)"
    assert "pw@" not in reply.get_data(as_text=True)


@pytest.mark.parametrize(("check", "store"), [
    ("authThrottle:responseTime", lambda app: gateway_of(app).auth_throttle.store),
    ("consoleSessions:responseTime", lambda app: gateway_of(app).console_sessions),
])
def test_an_unreachable_throttle_or_session_store_fails_readiness(make_gateway, sandbox_url, monkeypatch, check,
                                                                   store):
    app = health_app(make_gateway, sandbox_url)

    def unreachable(*args, **kwargs):
        raise ConnectionError("redis://user:pw@10.0.0.1 refused")

    monkeypatch.setattr(store(app), "ping", unreachable)
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    assert reply.get_json()["checks"][check][0]["output"] == "unreachable (ConnectionError)"
    assert "pw@" not in reply.get_data(as_text=True)


def redis_health_app(make_gateway, sandbox_url, redis_url, **gateway):
    config = gateway_config(ongoing=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH, password=SECRET))
    config["gateway"].update(gateway)
    config["events"] = {"redis_url": redis_url}
    return make_gateway(config)


def test_readyz_warns_when_redis_does_not_persist_or_may_evict(make_gateway, sandbox_url, redis_url):
    app = redis_health_app(make_gateway, sandbox_url, redis_url)
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 200
    health = reply.get_json()
    assert "dataFolder:freeSpace" not in health["checks"]  # nothing of the gateway's is kept in files
    appendonly = health["checks"]["redis:appendonly"][0]  # the test Redis runs without its append-only file
    assert (health["status"], appendonly["status"], appendonly["observedValue"]) == ("warn", "warn", "no")
    assert "appendonly yes" in appendonly["output"]
    policy = health["checks"]["redis:maxmemoryPolicy"][0]
    assert (policy["status"], policy["observedValue"]) == ("pass", "noeviction")

    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        policy = app.test_client().get("/readyz").get_json()["checks"]["redis:maxmemoryPolicy"][0]
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()
    assert (policy["status"], policy["observedValue"]) == ("warn", "allkeys-lru")
    assert "noeviction" in policy["output"]


def test_readyz_says_unknown_when_redis_refuses_config_get(make_gateway, sandbox_url, redis_url):
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser("gateway-limited", enabled=True, passwords=["+limited-pass-8u"], keys=["*"], channels=["*"],
                      commands=["+@all", "-config"])
    try:
        limited = redis_url.replace("redis://", "redis://gateway-limited:limited-pass-8u@")
        reply = redis_health_app(make_gateway, sandbox_url, limited).test_client().get("/readyz")
    finally:
        admin.acl_deluser("gateway-limited")
        admin.close()
    health = reply.get_json()
    assert reply.status_code == 200, health
    for name in ("redis:appendonly", "redis:maxmemoryPolicy"):
        entry = health["checks"][name][0]
        assert (entry["status"], entry["observedValue"]) == ("warn", "unknown"), entry
    assert health["checks"]["eventStore:responseTime"][0]["status"] == "pass"
    assert "limited-pass-8u" not in reply.get_data(as_text=True)


def test_a_check_that_does_not_finish_fails_within_the_readiness_timeout(make_gateway, sandbox_url, monkeypatch):
    app = health_app(make_gateway, sandbox_url)
    app.config["GATEWAY_SETTINGS"] = dataclasses.replace(app.config["GATEWAY_SETTINGS"], readiness_timeout=0.5)
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()
    release = threading.Event()
    monkeypatch.setattr(gateway_of(app).idempotency, "ping", lambda: release.wait(30))
    try:
        started = time.monotonic()
        reply = app.test_client().get("/readyz")
        took = time.monotonic() - started
    finally:
        release.set()
    assert 0.4 <= took < 1.5
    assert reply.status_code == 503
    health = reply.get_json()
    entry = health["checks"]["idempotencyStore:responseTime"][0]
    assert entry["status"] == "fail" and "readiness_timeout" in entry["output"]
    assert health["checks"]["eventStore:responseTime"][0]["status"] == "pass"


def test_too_little_free_disk_space_fails(make_gateway, sandbox_url):
    app = health_app(make_gateway, sandbox_url)
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()
    entry = app.test_client().get("/readyz").get_json()["checks"]["dataFolder:freeSpace"][0]
    assert (entry["status"], entry["observedUnit"]) == ("pass", "MiB") and entry["observedValue"] > 0
    settings = app.config["GATEWAY_SETTINGS"]
    app.config["GATEWAY_SETTINGS"] = dataclasses.replace(
        settings, stores=dataclasses.replace(settings.stores, min_free_disk_mb=entry["observedValue"] + 10**9))
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    entry = reply.get_json()["checks"]["dataFolder:freeSpace"][0]
    assert entry["status"] == "fail" and "min_free_disk_mb" in entry["output"]


@pytest.mark.parametrize("sandbox", [False, True])
def test_readyz_says_the_configuration_is_loaded_and_never_where_its_file_is(tmp_path, monkeypatch, sandbox):
    folder = tmp_path / "private-config-folder"
    folder.mkdir()
    path = folder / "gateway-production.toml"
    path.write_text(textwrap.dedent(f"""
        [gateway]
        sandbox = {str(sandbox).lower()}

        [connections.ongoing]
        backend = "ongoing"
        url = "http://127.0.0.1:9{ONGOING_SERVICE_PATH}"
        goods_owner_code = "DEMO"
        username = "demo"
        password = "{SECRET}"

        [callers.ops]
        keys = ["ops-key-000000000001"]
        scopes = ["events:read"]
        """))
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    app = create_app()
    try:
        reply = app.test_client().get("/readyz")
    finally:
        gateway_of(app).close()
    entry = reply.get_json()["checks"]["configuration:loaded"][0]
    assert entry["status"] == "pass"
    assert entry["output"] == ("loaded: a sandbox configuration ([gateway] sandbox = true), which accepts the public "
                               "demo secrets" if sandbox else "loaded")
    text = reply.get_data(as_text=True)
    assert "gateway-production" not in text and "private-config-folder" not in text and SECRET not in text
