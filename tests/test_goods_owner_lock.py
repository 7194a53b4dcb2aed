"""Ongoing's one call per goods owner at a time, kept by the gateway's call lock: concurrent updates through two
gateway apps sharing one lock folder reach a sandbox that refuses overlapping calls, over real HTTP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import sandbox
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.servers import RecordingMiddleware, serve_wsgi

CALL_SECONDS = 0.2
OVERLAP_DELAY_SECONDS = 0.5
OVERLAP_FAULT = "Another call for goods owner 'DEMO' was in progress"
ORDERS = [f"SO-10{n:02d}" for n in range(1, 11)]


class OngoingSandbox:
    """A sandbox that takes CALL_SECONDS per call and refuses overlaps, behind a recorder of every POST."""

    def __init__(self, url: str, recorder: RecordingMiddleware) -> None:
        self.url, self.recorder = url, recorder
        self.service_url = url + ONGOING_SERVICE_PATH

    def calls(self) -> dict:
        """DEMO's record: calls completed, calls refused as overlapping, most calls in progress at once."""
        reply = requests.get(f"{self.url}/ongoing/concurrency", timeout=5)
        assert reply.status_code == 200
        return reply.json()["goods_owners"].get("DEMO", {"calls": 0, "overlaps": 0, "max_in_progress": 0})

    def waybill(self, order_number: str) -> str | None:
        reply = requests.get(f"{self.url}/ongoing/orders/{order_number.removeprefix('SO-')}", timeout=5)
        assert reply.status_code == 200
        return reply.json()["waybill"]


@pytest.fixture
def ongoing():
    recorder = RecordingMiddleware(sandbox.create_app({"ONGOING_CALL_SECONDS": CALL_SECONDS,
                                                       "ONGOING_OVERLAP_DELAY_SECONDS": OVERLAP_DELAY_SECONDS}))
    with serve_wsgi(recorder) as url:
        yield OngoingSandbox(url, recorder)


def demo_config(ongoing: OngoingSandbox, **overrides) -> dict:
    """One Ongoing connection to the sandbox; the bulkhead's queue outlasts ten calls one after another."""
    return gateway_config(**{"ongoing-demo": ongoing_connection(ongoing.service_url, queue_timeout=10.0,
                                                                **overrides)})


@pytest.fixture
def two_gateways(make_gateway, ongoing):
    """Two gateway apps from one configuration: their events folder, and so their lock files, are the same."""
    return [make_gateway(demo_config(ongoing)) for _ in range(2)]


def concurrently(requests_to_send: list) -> list:
    """Run the callables at once (each released by one barrier) and return their results in order."""
    start = threading.Barrier(len(requests_to_send), timeout=10)

    def run(send):
        start.wait()
        return send()

    with ThreadPoolExecutor(len(requests_to_send)) as pool:
        return list(pool.map(run, requests_to_send))


def patch(app, order_id: str, document: dict):
    """A PATCH /orders/<id> through a test client of its own (one per thread)."""
    return lambda: app.test_client().patch(f"/orders/{order_id}", json=document)


def test_concurrent_updates_through_two_gateways_reach_ongoing_one_after_another(two_gateways, ongoing):
    replies = concurrently([patch(two_gateways[n % 2], order, {"waybill": f"WB-{n}"})
                            for n, order in enumerate(ORDERS)])
    assert [reply.status_code for reply in replies] == [200] * len(ORDERS), [r.get_json() for r in replies]
    assert ongoing.calls() == {"calls": len(ORDERS), "overlaps": 0, "max_in_progress": 1}
    assert [ongoing.waybill(order) for order in ORDERS] == [f"WB-{n}" for n in range(len(ORDERS))]


def test_without_a_shared_lock_the_sandbox_refuses_the_overlapping_call(make_gateway, ongoing):
    # Two connections to one Ongoing system whose URLs differ only by a query string: two lock names, no exclusion.
    app = make_gateway(gateway_config(
        first=ongoing_connection(ongoing.service_url),
        second=ongoing_connection(ongoing.service_url + "?copy=1"),
    ))
    connections = gateway_of(app).connections.by_name
    assert connections["first"].lock_name != connections["second"].lock_name
    replies = concurrently([patch(app, "SO-1001", {"connection": "first", "waybill": "WB-1"}),
                            patch(app, "SO-1002", {"connection": "second", "waybill": "WB-2"})])
    assert sorted(reply.status_code for reply in replies) == [200, 502], [r.get_json() for r in replies]
    (refused,) = [reply.get_json() for reply in replies if reply.status_code == 502]
    assert OVERLAP_FAULT in refused["backend"]["message"]
    assert ongoing.calls() == {"calls": 1, "overlaps": 1, "max_in_progress": 2}
    # the refused call changed nothing
    for reply, order, waybill in zip(replies, ["SO-1001", "SO-1002"], ["WB-1", "WB-2"], strict=True):
        assert ongoing.waybill(order) == (waybill if reply.status_code == 200 else None)


def test_a_lock_held_elsewhere_beyond_lock_timeout_is_503_and_nothing_is_sent(make_gateway, ongoing):
    app = make_gateway(demo_config(ongoing, lock_timeout=0.3))
    gateway = gateway_of(app).connections
    connection = gateway.by_name["ongoing-demo"]
    holding, done = threading.Event(), threading.Event()

    def hold_elsewhere() -> None:
        with gateway.coordination.locks.hold(connection.lock_name, 5.0):
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=hold_elsewhere)
    holder.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        reply = app.test_client().patch("/orders/SO-1001", json={"waybill": "WB-LOCKED"})
        waited = time.monotonic() - started
    finally:
        done.set()
        holder.join(timeout=10)
    assert reply.status_code == 503
    problem = reply.get_json()
    assert problem["type"].endswith(":backend-unavailable")
    assert problem["backend"]["code"] == "lock-timeout"
    assert problem["backend"]["connection"] == "ongoing-demo"
    assert "nothing was sent" in problem["detail"]
    assert int(reply.headers["Retry-After"]) >= 1
    assert 0.3 <= waited < 2.0
    assert ongoing.recorder.bodies == [], "the sandbox received a call while the lock was held elsewhere"
    assert ongoing.calls()["calls"] == 0
    assert ongoing.waybill("SO-1001") is None

    # once the lock is free the same update goes through
    assert app.test_client().patch("/orders/SO-1001", json={"waybill": "WB-FREE"}).status_code == 200
    assert ongoing.waybill("SO-1001") == "WB-FREE"


def test_bulk_items_and_single_updates_share_the_lock(two_gateways, ongoing):
    bulk_orders, single_orders = ORDERS[:5], ORDERS[5:]

    def bulk():
        return two_gateways[0].test_client().patch("/orders", json={
            "orders": [{"order_id": order, "waybill": f"BULK-{order}"} for order in bulk_orders]})

    replies = concurrently([bulk] + [patch(two_gateways[1], order, {"waybill": f"ONE-{order}"})
                                     for order in single_orders])
    assert [reply.status_code for reply in replies] == [200] * 6, [r.get_json() for r in replies]
    assert replies[0].get_json()["succeeded"] == len(bulk_orders)
    assert ongoing.calls() == {"calls": 10, "overlaps": 0, "max_in_progress": 1}
    assert [ongoing.waybill(order) for order in bulk_orders] == [f"BULK-{order}" for order in bulk_orders]
    assert [ongoing.waybill(order) for order in single_orders] == [f"ONE-{order}" for order in single_orders]
