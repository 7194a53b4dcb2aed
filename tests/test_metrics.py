"""GET /metrics: Prometheus figures of requests, backend calls, webhooks and Idempotency-Key replays, behind the
scope metrics:read (or open), summed over every gunicorn worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.processes import ROOT, start_gateway, start_sandbox, stop, wait_until_serving, write_sandbox_config_copy
from tests.servers import closed_port

READER_KEY = "metrics-reader-key-0001"
WRITER_KEY = "orders-writer-key-00001"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def gateway(make_gateway, sandbox_url):
    config = gateway_config(ongoing=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH))
    config["callers"] = {"prometheus": {"key": READER_KEY, "scopes": ["metrics:read"]},
                         "erp": {"key": WRITER_KEY, "scopes": ["orders:write"]}}
    return make_gateway(config).test_client()


def scrape(client) -> str:
    reply = client.get("/metrics", headers={"Authorization": f"Bearer {READER_KEY}"})
    assert reply.status_code == 200
    assert reply.mimetype == "text/plain"
    return reply.get_data(as_text=True)


def test_metrics_need_the_scope_metrics_read(gateway):
    assert gateway.get("/metrics").status_code == 401
    refused = gateway.get("/metrics", headers={"Authorization": f"Bearer {WRITER_KEY}"})
    assert refused.status_code == 403
    assert "metrics:read" in refused.get_json()["detail"]
    assert "order_gateway_http_requests_total" in scrape(gateway)


def test_open_metrics_serves_them_without_a_key(make_gateway, sandbox_url):
    config = gateway_config(ongoing=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH))
    config["gateway"]["open_metrics"] = True
    config["callers"] = {"erp": {"key": WRITER_KEY, "scopes": ["orders:write"]}}
    reply = make_gateway(config).test_client().get("/metrics")
    assert reply.status_code == 200
    assert "order_gateway_backend_calls_total" in reply.get_data(as_text=True)


def test_an_order_update_counts_its_request_and_its_backend_call_without_the_order_id(gateway):
    before = scrape(gateway)
    writer = {"Authorization": f"Bearer {WRITER_KEY}"}
    assert gateway.patch("/orders/SO-1006", json={"waybill": "WB-M1"}, headers=writer).status_code == 200
    assert gateway.patch("/orders/SO-1006", json={"status": "no-such-status"}, headers=writer).status_code == 422
    after = scrape(gateway)
    route = {"route": "/orders/<path:order_id>", "method": "PATCH"}
    assert value(after, "order_gateway_http_requests_total", **route, status="200") == \
        value(before, "order_gateway_http_requests_total", **route, status="200") + 1
    assert value(after, "order_gateway_http_requests_total", **route, status="422") == \
        value(before, "order_gateway_http_requests_total", **route, status="422") + 1
    assert value(after, "order_gateway_http_request_duration_seconds_count", **route) == \
        value(before, "order_gateway_http_request_duration_seconds_count", **route) + 2
    call = {"connection": "ongoing", "backend": "ongoing", "operation": "UpdateOrder"}
    assert value(after, "order_gateway_backend_calls_total", **call, outcome="ok") == \
        value(before, "order_gateway_backend_calls_total", **call, outcome="ok") + 1
    assert value(after, "order_gateway_backend_call_duration_seconds_count", **call) == \
        value(before, "order_gateway_backend_call_duration_seconds_count", **call) + 1
    assert "SO-1006" not in after


def test_paths_no_route_serves_share_one_label(gateway):
    before = scrape(gateway)
    for number in range(3):
        assert gateway.get(f"/no-such-path-{number}").status_code == 404
    after = scrape(gateway)
    assert "no-such-path" not in after
    assert value(after, "order_gateway_http_requests_total", route="unmatched", method="GET", status="404") == \
        value(before, "order_gateway_http_requests_total", route="unmatched", method="GET", status="404") + 3


def test_webhooks_for_unknown_receivers_share_one_label(gateway):
    before = scrape(gateway)
    assert gateway.post("/webhooks/ongoing/made-up-name", json={}).status_code == 404
    after = scrape(gateway)
    assert "made-up-name" not in after
    assert value(after, "order_gateway_webhooks_received_total", connection="unknown", result="not_found") == \
        value(before, "order_gateway_webhooks_received_total", connection="unknown", result="not_found") + 1


def test_idempotency_replays_are_counted(gateway):
    writer = {"Authorization": f"Bearer {WRITER_KEY}", "Idempotency-Key": "metrics-replay-1"}
    before = scrape(gateway)
    first = gateway.patch("/orders/SO-1006", json={"waybill": "WB-M2"}, headers=writer)
    again = gateway.patch("/orders/SO-1006", json={"waybill": "WB-M2"}, headers=writer)
    assert first.status_code == again.status_code == 200
    assert value(scrape(gateway), "order_gateway_idempotency_replays_total") == \
        value(before, "order_gateway_idempotency_replays_total") + 1


def test_metrics_are_summed_over_every_gunicorn_worker(tmp_path):
    """Under two workers, the count of N requests is N whichever worker serves the scrape."""
    sandbox_port, gateway_port = closed_port(), closed_port()
    sandbox_url, gateway_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{gateway_port}"
    config = Path(write_sandbox_config_copy(tmp_path))
    config.write_text(config.read_text().replace("[gateway]\n", "[gateway]\nopen_metrics = true\n", 1))
    env = {key: item for key, item in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"GATEWAY_CONFIG": str(config), "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx",
                "SPEED4TRADE_URL": f"{sandbox_url}/speed4trade/",
                "SELLERCENTER_URL": f"{sandbox_url}/sellercenter/oms-api/",
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events"})
    sandbox = start_sandbox(sandbox_port, env)
    gateway = start_gateway(gateway_port, env, workers=2)
    try:
        wait_until_serving(f"{sandbox_url}/ongoing/orders/1", sandbox)
        wait_until_serving(f"{gateway_url}/livez", gateway)
        before = requests.get(f"{gateway_url}/metrics", timeout=10).text
        requests_made = 40
        for _ in range(requests_made):  # a new connection each: the kernel hands them to either worker
            assert requests.get(f"{gateway_url}/readyz", timeout=10, headers={"Connection": "close"}).status_code \
                in (200, 503)
        served = {requests.get(f"{gateway_url}/metrics", timeout=10, headers={"Connection": "close"}).text
                  for _ in range(4)}
        counts = {sum(value(text, "order_gateway_http_requests_total", route="/readyz", method="GET", status=status)
                      for status in ("200", "503")) for text in served}
        baseline = sum(value(before, "order_gateway_http_requests_total", route="/readyz", method="GET",
                             status=status) for status in ("200", "503"))
        assert counts == {baseline + requests_made}
        # each worker keeps its figures in files of its own under the master's directory
        figures = list((ROOT / "var" / "metrics" / str(gateway.pid)).glob("counter_*.db"))
        assert figures, "no multiprocess figures were written"
    finally:
        stop(gateway)
        stop(sandbox)
