"""The operator's endpoints over HTTP under a real two-worker gunicorn with its event worker: /livez, /readyz,
/exchanges and /metrics agree whichever worker serves them, and whichever worker made the calls."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import (
    start_gateway,
    start_sandbox,
    start_worker,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
from tests.servers import closed_port

KEY = {"Authorization": "Bearer demo-caller-key-0000"}
FRESH = {"Connection": "close"}  # a new connection each: the kernel hands them to either worker


@pytest.fixture
def deployment(tmp_path):
    sandbox_port, gateway_port = closed_port(), closed_port()
    sandbox_url, gateway_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{gateway_port}"
    env = {key: item for key, item in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path), "GATEWAY_METRICS_DIR": str(tmp_path / "metrics"),
                "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx", "SPEED4TRADE_URL": f"{sandbox_url}/speed4trade/",
                "SELLERCENTER_URL": f"{sandbox_url}/sellercenter/oms-api/",
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events"})
    sandbox = start_sandbox(sandbox_port, env)
    gateway = start_gateway(gateway_port, env, workers=2)
    worker = start_worker(env)
    try:
        wait_until_serving(f"{sandbox_url}/ongoing/orders/1", sandbox)
        wait_until_serving(f"{gateway_url}/livez", gateway)
        yield gateway_url, Path(tmp_path)
    finally:
        stop(worker)
        stop(gateway)
        stop(sandbox)


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(key) == item for key, item in labels.items()))


def test_health_journal_and_metrics_agree_across_workers(deployment):
    gateway_url, _ = deployment
    assert {requests.get(f"{gateway_url}/livez", headers=FRESH, timeout=5).json()["status"]
            for _ in range(10)} == {"pass"}

    deadline = time.monotonic() + 20  # the worker's first heartbeat
    while time.monotonic() < deadline:
        ready = requests.get(f"{gateway_url}/readyz", headers=FRESH, timeout=5)
        if ready.json()["status"] == "pass":
            break
        time.sleep(0.2)
    assert (ready.status_code, ready.headers["Content-Type"], ready.json()["status"]) == \
        (200, "application/health+json", "pass"), ready.text
    assert {"eventStore:responseTime", "deliveryQueue:responseTime", "idempotencyStore:responseTime"} <= \
        set(ready.json()["checks"])
    assert "demo-password" not in ready.text and "127.0.0.1" not in ready.text

    sent = [f"ops-{number}" for number in range(8)]
    for number, request_id in enumerate(sent):
        reply = requests.patch(f"{gateway_url}/orders/SO-1006", json={"waybill": f"OPS-{number}"}, timeout=10,
                               headers={**KEY, **FRESH, "X-Request-ID": request_id})
        assert reply.status_code == 200, reply.text

    found: dict[str, dict] = {}
    deadline = time.monotonic() + 10  # each worker writes its journal in the background
    while len(found) < len(sent) and time.monotonic() < deadline:
        listed = requests.get(f"{gateway_url}/exchanges?order_id=SO-1006&limit=100", headers={**KEY, **FRESH},
                              timeout=5).json()["exchanges"]
        found = {exchange["request_id"]: exchange for exchange in listed if exchange["request_id"] in sent}
        time.sleep(0.1)
    assert sorted(found) == sorted(sent)
    one = requests.get(f"{gateway_url}/exchanges/{found['ops-3']['id']}", headers={**KEY, **FRESH}, timeout=5).json()
    assert (one["outcome"], one["operation"], one["caller"], one["reply"]["status"]) == \
        ("ok", "UpdateOrder", "demo", 200)
    assert "OPS-3" in one["request"]["body"] and "demo-password" not in str(one)

    scrapes = {requests.get(f"{gateway_url}/metrics", headers={**KEY, **FRESH}, timeout=5).text for _ in range(4)}
    assert {_metric(text, "order_gateway_backend_calls_total", connection="ongoing-demo", operation="UpdateOrder",
                    outcome="ok") for text in scrapes} == {len(sent)}
    assert {_metric(text, "order_gateway_http_requests_total", route="/orders/<path:order_id>", method="PATCH",
                    status="200") for text in scrapes} == {len(sent)}
