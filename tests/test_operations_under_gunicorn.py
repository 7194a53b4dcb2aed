"""The operator's endpoints over HTTP under a real two-worker gunicorn with its event worker: /livez, /readyz,
/exchanges and /metrics agree whichever worker serves them, and whichever worker made the calls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import (
    running_stack,
    write_sandbox_config_copy,
)

KEY = {"Authorization": "Bearer demo-caller-key-0000"}
FRESH = {"Connection": "close"}  # a new connection each: the kernel hands them to either worker


@pytest.fixture
def deployment(tmp_path):
    with running_stack(write_sandbox_config_copy(tmp_path), tmp_path) as (gateway_url, _):
        yield gateway_url, Path(tmp_path)


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
