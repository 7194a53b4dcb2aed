"""Shared fixtures: a fresh Ongoing sandbox over real HTTP, and the gateway app configured to use it."""

from __future__ import annotations

import itertools

import pytest
import redis

import sandbox
from gateway import create_app
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import SqliteEventStore
from gateway.runtime import gateway_of
from tests.log_lines import unchecked_problems
from tests.processes import SERVER_KINDS, SERVER_LOGS
from tests.redis_server import run_redis_server
from tests.servers import serve_wsgi

ONGOING_SERVICE_PATH = "/ongoing/Service.asmx"
SPEED4TRADE_SERVICE_PATH = "/speed4trade/"
SPEED4TRADE_NAMESPACE = "urn:order-gateway-sandbox:speed4trade"
SELLERCENTER_SERVICE_PATH = "/sellercenter/oms-api/"
SELLERCENTER_API_KEY = "sandbox-sellercenter-api-key"


TRACEBACK = "Traceback (most recent call last)"


def _log_sizes() -> dict:
    return {path: path.stat().st_size if path.exists() else 0 for path in SERVER_LOGS}


@pytest.fixture(autouse=True)
def no_unexpected_tracebacks(request, caplog):
    """Fail a test during which anything logged a traceback — in this process or in a server process's output —
    unless the test is marked `expected_traceback` (it provokes one on purpose)."""
    sizes = _log_sizes()
    yield
    if request.node.get_closest_marker("expected_traceback"):
        return
    found = [f"{record.name}: {record.getMessage()[:200]}"
             for when in ("setup", "call") for record in caplog.get_records(when)
             if record.exc_info or TRACEBACK in record.getMessage()]
    for path in list(SERVER_LOGS):
        if path.exists():
            with open(path, "rb") as log:
                log.seek(sizes.get(path, 0))
                text = log.read().decode("utf-8", "replace")
            if TRACEBACK in text:
                found.append(f"{path.name}: {text[text.index(TRACEBACK):][:1500]}")
    assert not found, "unexpected tracebacks were logged:\n" + "\n".join(found)


@pytest.fixture(autouse=True)
def server_logs_are_json_without_secrets():
    """Every line the gateway and worker processes of the suite print, checked after each test: a JSON object with
    time, level, logger and message, holding none of the secrets its configuration names."""
    yield
    problems = unchecked_problems(SERVER_KINDS)
    assert not problems, "server log lines that are not clean JSON:\n" + "\n".join(problems[:20])


def ongoing_connection(url: str, **overrides) -> dict:
    """A connection table for an Ongoing backend at `url` with the sandbox's demo credentials."""
    return {
        "backend": "ongoing",
        "url": url,
        "goods_owner_code": "DEMO",
        "username": "demo",
        "password": "demo-password",
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        **overrides,
    }


def speed4trade_connection(url: str, **overrides) -> dict:
    """A connection table for a Speed4Trade backend at `url` with the sandbox's demo credentials and mandator."""
    return {
        "backend": "speed4trade",
        "url": url,
        "username": "connect-demo",
        "password": "connect-password",
        "mandator_id": 1,
        "soap_version": "1.1",
        "namespace": SPEED4TRADE_NAMESPACE,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        **overrides,
    }


def sellercenter_connection(url: str, **overrides) -> dict:
    """A connection table for a SellerCenter OMS API at `url` with the sandbox's API key."""
    return {
        "backend": "sellercenter",
        "url": url,
        "api_key": SELLERCENTER_API_KEY,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        **overrides,
    }


def gateway_config(**connections: dict) -> dict:
    """A parsed configuration with these connections; the first is the default."""
    return {"gateway": {"default_connection": next(iter(connections))}, "connections": connections}


@pytest.fixture
def sandbox_app():
    """A fresh Ongoing sandbox app with the shipped demo data."""
    return sandbox.create_app()


@pytest.fixture
def sandbox_url(sandbox_app):
    """Base URL of a fresh sandbox served on 127.0.0.1."""
    with serve_wsgi(sandbox_app) as url:
        yield url


@pytest.fixture
def sandbox_view(sandbox_url):
    """Read an order from the sandbox's JSON view by SystemId."""
    import requests

    def view(system_id: int) -> dict:
        reply = requests.get(f"{sandbox_url}/ongoing/orders/{system_id}", timeout=5)
        assert reply.status_code == 200
        return reply.json()

    return view


@pytest.fixture
def make_gateway(tmp_path):
    """Build gateway apps from configurations (events kept in tmp_path unless given), closing them afterwards."""
    apps = []

    def make(config: dict):
        if "callers" not in config:  # tests of other things than callers serve without keys
            config.setdefault("gateway", {}).setdefault("allow_anonymous", True)
        # the tests' configurations talk to sandboxes with their public demo secrets
        config.setdefault("gateway", {}).setdefault("sandbox", True)
        events = config.setdefault("events", {})
        events.setdefault("database", str(tmp_path / "events.sqlite3"))
        events.setdefault("queue_database", str(tmp_path / "queue.sqlite3"))
        app = create_app(config)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        gateway_of(app).close()


@pytest.fixture
def app(make_gateway, sandbox_url):
    """The gateway configured with one Ongoing connection, `ongoing-demo`, pointing at the sandbox."""
    return make_gateway(gateway_config(**{"ongoing-demo": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH)}))


@pytest.fixture
def client(app):
    """A test client of the gateway app."""
    return app.test_client()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory):
    """One real redis-server for the whole run."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url):
    """The test Redis, emptied before each test that uses it."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushall()
    client.close()
    return redis_server_url


_store_prefixes = itertools.count()


@pytest.fixture(params=["sqlite", "redis"])
def event_store(request, tmp_path):
    """An empty event store of each kind."""
    if request.param == "sqlite":
        store = SqliteEventStore(tmp_path / "events.sqlite3")
    else:
        store = RedisEventStore(request.getfixturevalue("redis_url"), prefix=f"test:{next(_store_prefixes)}:")
    yield store
    store.close()
