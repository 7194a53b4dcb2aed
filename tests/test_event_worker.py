"""The whole event path with real processes: webhooks into a gunicorn gateway, the huey worker delivering
to the demo subscriber — with SQLite and with Redis storage, through a crash, and the loop from the sandbox."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.ongoing_timestamps import recent_timestamp
from tests.processes import (
    start_gateway,
    start_sandbox,
    start_worker,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
from tests.servers import closed_port

WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")


class Deployment:
    """A sandbox, a gateway and a worker as `make run` starts them, on free ports, with a given event storage."""

    def __init__(self, folder: Path, redis_url: str | None) -> None:
        self.folder = folder
        self.sandbox_port, self.gateway_port = closed_port(), closed_port()
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        config = write_sandbox_config_copy(folder)
        if redis_url:
            text = Path(config).read_text().replace('# redis_url = "redis://127.0.0.1:6379/0"',
                                                    f'redis_url = "{redis_url}"')
            Path(config).write_text(text)
        self.env = {
            **os.environ,
            "GATEWAY_CONFIG": config,
            "ONGOING_URL": f"{self.sandbox_url}/ongoing/Service.asmx",
            "DEMO_SUBSCRIBER_URL": f"{self.sandbox_url}/subscriber/events",
            "SANDBOX_ONGOING_WEBHOOK_URL": f"{self.gateway_url}/webhooks/ongoing/ongoing-demo",
            "SANDBOX_ONGOING_WEBHOOK_AUTH": '{"type": "basic", "username": "ongoing-webhooks", '
                                            '"password": "webhook-demo-password"}',
            "SANDBOX_ONGOING_WEBHOOK_RETRY_DELAYS": "[0.2, 0.5, 1, 2, 4]",
        }
        self.sandbox = self.gateway = self.worker = None

    def start_sandbox(self) -> None:
        self.sandbox = start_sandbox(self.sandbox_port, self.env, self.folder / "sandbox.log")
        wait_until_serving(f"{self.sandbox_url}/subscriber/events", self.sandbox)

    def start_gateway_and_worker(self) -> None:
        self.gateway = start_gateway(self.gateway_port, self.env, log=self.folder / "gateway.log")
        self.worker = start_worker(self.env, self.folder / "worker.log")
        wait_until_serving(f"{self.gateway_url}/events", self.gateway)

    def kill_gateway_and_worker(self) -> None:
        stop(self.gateway, signal.SIGKILL)
        stop(self.worker, signal.SIGKILL)

    def stop_all(self) -> None:
        for process in (self.worker, self.gateway, self.sandbox):
            if process is not None:
                stop(process)

    def subscriber(self) -> dict:
        return requests.get(f"{self.sandbox_url}/subscriber/events", timeout=5).json()

    def behave(self, mode: str) -> None:
        requests.post(f"{self.sandbox_url}/subscriber/_behaviour", json={"mode": mode}, timeout=5)

    def wait_for(self, predicate, seconds: float = 30.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        worker_log = (self.folder / "worker.log").read_text(errors="replace")[-4000:]
        seen = [record["webhook_id"] for record in self.subscriber()["received"]]
        raise AssertionError(f"gave up after {seconds} s; the subscriber saw {len(seen)} events; "
                             f"the worker's log ends with:\n{worker_log}")


@pytest.fixture(params=["sqlite", "redis"])
def deployment(request, tmp_path):
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    deployment = Deployment(tmp_path, redis_url)
    deployment.start_sandbox()
    try:
        yield deployment
    finally:
        deployment.stop_all()


def webhook(number: int, order: int, template: str = "OrderStatusChanged", status: int = 300) -> dict:
    return {"webhookEventId": number, "system": "crash-test", "timestamp": recent_timestamp(number % 60),
            "orderId": order, "orderNumber": f"SO-{order}", "webhookTemplate": template,
            "orderStatus": {"number": status}}


def test_the_loop_a_patch_to_picked_ends_as_a_signed_order_picked_event(deployment):
    deployment.start_gateway_and_worker()
    reply = requests.patch(f"{deployment.gateway_url}/orders/SO-1004", json={"status": "picked"}, timeout=10)
    assert reply.status_code == 200, reply.text

    def picked_event():
        return [r for r in deployment.subscriber()["received"] if r["event"]["type"] == "order.picked"]

    (record,) = deployment.wait_for(picked_event)
    assert record["verified"] is True
    event = record["event"]
    assert event["order"] == {"backend_order_id": "1004", "order_number": "SO-1004",
                              "status": {"code": 400, "name": "picked"}}
    assert event["source"]["backend"] == "ongoing" and event["source"]["template"] == "OrderPicked"
    changed = [r["event"] for r in deployment.subscriber()["received"] if r["event"]["type"] == "order.status_changed"]
    assert [e["order"]["backend_order_id"] for e in changed] == ["1004"]
    # the status change happened first and reached the subscriber first
    types = [r["event"]["type"] for r in deployment.subscriber()["received"]]
    assert types.index("order.status_changed") < types.index("order.picked")

    def shown_once_delivered():
        # the worker records a delivery after the subscriber's answer: on a busy machine a moment after it
        shown = requests.get(f"{deployment.gateway_url}/events?order_id=1004", timeout=5).json()["events"]
        return shown if all(d["state"] == "delivered" for e in shown for d in e["deliveries"]) else None

    shown = deployment.wait_for(shown_once_delivered, seconds=10)
    assert {e["event"]["type"] for e in shown} == {"order.status_changed", "order.picked"}
    assert all(d["state"] == "delivered" for e in shown for d in e["deliveries"])


def test_a_crash_right_after_accepting_loses_nothing_and_doubles_nothing(deployment):
    deployment.behave("down")  # nothing can be delivered before the crash
    deployment.start_gateway_and_worker()
    accepted = []
    for number in range(1, 31):
        reply = requests.post(f"{deployment.gateway_url}/webhooks/ongoing/ongoing-demo", auth=WEBHOOK_AUTH,
                              json=webhook(number, order=5000 + number % 3), timeout=10)
        assert reply.status_code == 202, reply.text
        accepted.append(reply.json()["id"])
    deployment.kill_gateway_and_worker()

    deployment.behave("up")
    deployment.start_gateway_and_worker()
    # A lease the killed worker held lapses after 2 x delivery_timeout + 5 s; allow for that and a loaded machine.
    deployment.wait_for(lambda: len(deployment.subscriber()["received"]) >= len(accepted), seconds=90)
    time.sleep(1.5)  # a late duplicate would arrive now
    records = deployment.subscriber()["received"]
    ids = [record["webhook_id"] for record in records]
    assert sorted(ids) == sorted(accepted), "every accepted event delivered exactly once"
    for order in (5000, 5001, 5002):
        numbers = [r["event"]["raw"]["webhookEventId"] for r in records if r["event"]["raw"]["orderId"] == order]
        assert numbers == sorted(numbers), f"order {order} delivered out of order: {numbers}"


def test_the_trace_a_webhook_came_in_with_reaches_the_subscriber(deployment):
    deployment.start_gateway_and_worker()
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    reply = requests.post(f"{deployment.gateway_url}/webhooks/ongoing/ongoing-demo", auth=WEBHOOK_AUTH, timeout=10,
                          json=webhook(901, order=6001), headers={"traceparent": f"00-{trace_id}-{caller_span}-01",
                                                                  "tracestate": "vendor=wms"})
    assert reply.status_code == 202, reply.text
    (record,) = deployment.wait_for(lambda: [r for r in deployment.subscriber()["received"]
                                             if r["webhook_id"] == reply.json()["id"]])
    version, sent_trace, parent, flags = record["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    assert parent not in (caller_span, "0" * 16)  # the delivery's own span
    assert record["tracestate"] == "vendor=wms"
