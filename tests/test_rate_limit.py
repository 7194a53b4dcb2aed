"""The outbound rate limit (a connection's max_calls_per_second): calls within it go at once, a call over it waits
for its token, one that cannot wait that long within the request's budget is a 503 `rate-limited` with Retry-After
and nothing sent; the limit is shared by every gateway that shares the stores (an SQLite file, or Redis)."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY

from gateway import create_app
from gateway.runtime import gateway_of
from gateway.transport import BackendReply, OutboundRequest
from tests.conftest import ongoing_connection, speed4trade_connection
from tests.redis_server import run_redis_server
from tests.test_resilience import ONGOING_OK, S4T_OK

REFUSALS = "order_gateway_guard_refusals_total"


class CountingTransport:
    """Answers every call with one reply (an UpdateOrder success), and counts the calls that reached it."""

    def __init__(self, reply: BackendReply = ONGOING_OK) -> None:
        self.reply = reply
        self.sent: list[OutboundRequest] = []
        self._lock = threading.Lock()

    def send(self, request: OutboundRequest, deadline=None) -> BackendReply:
        with self._lock:
            self.sent.append(request)
        return self.reply

    def close(self) -> None:
        pass


@pytest.fixture(params=["sqlite", "redis"])
def events(request, tmp_path) -> dict:
    """The `[events]` table of gateways sharing their stores: one folder's SQLite files, or one Redis."""
    table = {"database": str(tmp_path / "events.sqlite3"), "queue_database": str(tmp_path / "queue.sqlite3")}
    if request.param == "redis":
        table["redis_url"] = request.getfixturevalue("redis_url")
    return table


@pytest.fixture
def make_app(tmp_path):
    """Build gateway apps with one Ongoing connection "o" over a CountingTransport, closing them afterwards."""
    apps = []

    def make(transport: CountingTransport, *, events: dict | None = None, request_timeout: float = 60.0,
             **connection) -> object:
        connection.setdefault("call_timeout", min(request_timeout, 30.0))
        events = events or {"database": str(tmp_path / "events.sqlite3"),
                            "queue_database": str(tmp_path / "queue.sqlite3")}
        app = create_app({"gateway": {"allow_anonymous": True, "request_timeout": request_timeout},
                          "connections": {"o": ongoing_connection("http://127.0.0.1:9/", **connection)},
                          "events": dict(events)}, transports={"o": transport})
        apps.append(app)
        return app

    yield make
    for app in apps:
        gateway_of(app).close()


def patch_order(app, order_id: str = "1001", status: str = "released") -> tuple[object, float]:
    """PATCH one order's status; the reply and how long it took."""
    started = time.monotonic()
    reply = app.test_client().patch(f"/orders/{order_id}", json={"status": status})
    return reply, time.monotonic() - started


def refusals(guard: str = "rate_limit") -> float:
    return REGISTRY.get_sample_value(REFUSALS, {"connection": "o", "guard": guard}) or 0.0


def test_the_rate_limit_is_a_guard_only_where_it_is_set(make_app):
    unlimited = gateway_of(make_app(CountingTransport())).connections.resolve("o")
    limited = gateway_of(make_app(CountingTransport(), max_calls_per_second=2.5)).connections.resolve("o")

    assert [guard.name for guard in unlimited.guards] == ["breaker", "bulkhead", "call_lock"]
    assert [guard.name for guard in limited.guards] == ["breaker", "bulkhead", "call_lock", "rate_limit"]


def test_calls_within_the_limit_go_at_once(make_app):
    transport = CountingTransport()
    app = make_app(transport, max_calls_per_second=0.5)  # one call every 2 s

    first, first_took = patch_order(app)
    time.sleep(2.1)  # the bucket is full again
    second, second_took = patch_order(app)

    assert first.status_code == second.status_code == 200, (first.get_json(), second.get_json())
    assert first_took < 1.0 and second_took < 1.0, "a wait for the token would have been about 2 s"
    assert len(transport.sent) == 2


def test_a_burst_of_a_seconds_calls_goes_at_once(make_app):
    transport = CountingTransport()
    app = make_app(transport, max_calls_per_second=4)

    started = time.monotonic()
    replies = [patch_order(app, str(1001 + number))[0] for number in range(4)]
    took = time.monotonic() - started

    assert [reply.status_code for reply in replies] == [200] * 4
    assert len(transport.sent) == 4
    assert took < 2.0, "four calls within the bucket of four do not wait for tokens"


def test_a_call_over_the_limit_waits_for_its_token_then_goes_out(make_app):
    transport = CountingTransport()
    app = make_app(transport, max_calls_per_second=1)
    before = refusals()

    first, _ = patch_order(app)
    second, second_took = patch_order(app)

    assert first.status_code == second.status_code == 200, second.get_json()
    assert second_took > 0.6, "the second call waited for the token the first one spent"
    assert second_took < 10
    assert len(transport.sent) == 2
    assert refusals() == before


def test_a_wait_beyond_the_budget_is_a_503_rate_limited_with_retry_after_and_nothing_sent(make_app):
    transport = CountingTransport()
    app = make_app(transport, max_calls_per_second=0.05, request_timeout=2.0)  # one call every 20 s
    before = refusals()

    first, _ = patch_order(app)
    refused, took = patch_order(app, "1002")

    assert first.status_code == 200
    assert refused.status_code == 503
    problem = refused.get_json()
    assert problem["type"] == "urn:order-gateway:problem:backend-unavailable"
    assert problem["backend"]["code"] == "rate-limited"
    assert problem["backend"]["connection"] == "o"
    assert "nothing was sent" in problem["detail"]
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 20
    assert took < 1.5, "a wait that cannot fit the budget is refused at once, not waited out"
    assert len(transport.sent) == 1
    assert refusals() == before + 1
    journal = gateway_of(app).recorder.flushed_journal()
    assert [exchange.order_ids for exchange in journal.list(connection="o")] == [("1001",)], \
        "a refused call is journaled as the other guards' refusals are: not at all, since it never went out"


def test_gateways_sharing_the_stores_share_the_limit(make_app, events):
    one, other = CountingTransport(), CountingTransport()
    first_gateway = make_app(one, events=events, max_calls_per_second=0.05, request_timeout=2.0)
    second_gateway = make_app(other, events=events, max_calls_per_second=0.05, request_timeout=2.0)
    before = refusals()

    first, _ = patch_order(first_gateway)
    refused, _ = patch_order(second_gateway, "1002")

    assert first.status_code == 200, first.get_json()
    assert refused.status_code == 503 and refused.get_json()["backend"]["code"] == "rate-limited"
    assert (len(one.sent), len(other.sent)) == (1, 0)
    assert refusals() == before + 1


def test_a_rate_limit_store_that_cannot_be_used_is_a_fast_503_and_nothing_is_sent(tmp_path):
    transport = CountingTransport(S4T_OK)
    folder = tmp_path / "redis"
    folder.mkdir()
    with run_redis_server(folder) as url:
        app = create_app({"gateway": {"allow_anonymous": True},
                          "connections": {"o": speed4trade_connection("http://127.0.0.1:9/", max_calls_per_second=5)},
                          "events": {"database": str(tmp_path / "events.sqlite3"),
                                     "queue_database": str(tmp_path / "queue.sqlite3"), "redis_url": url},
                          "stores": {"redis_connect_timeout": 0.5, "redis_socket_timeout": 0.5}},
                         transports={"o": transport})
    try:
        before = refusals()
        refused, took = patch_order(app, status="fetched")
    finally:
        gateway_of(app).close()

    assert refused.status_code == 503, refused.get_json()
    problem = refused.get_json()
    assert problem["type"] == "urn:order-gateway:problem:store-unavailable"
    assert problem["store"] == "rate limits"
    assert "nothing was sent" in problem["detail"]
    assert took < 3.0
    assert transport.sent == []
    assert refusals() == before + 1
