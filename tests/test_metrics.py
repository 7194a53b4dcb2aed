"""GET /metrics: Prometheus figures of requests, backend calls, webhooks, Idempotency-Key replays and the event
worker's deliveries, behind the scope metrics:read (or open), summed over every gunicorn worker and the event
worker; pending deliveries and breaker states read at each scrape."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.ongoing_timestamps import recent_timestamp
from tests.processes import (
    ROOT,
    start_gateway,
    start_sandbox,
    start_worker,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
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
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events",
                "GATEWAY_METRICS_DIR": str(tmp_path / "metrics")})
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
        figures = list((tmp_path / "metrics" / str(gateway.pid)).glob("counter_*.db"))
        assert figures, "no multiprocess figures were written"
    finally:
        stop(gateway)
        stop(sandbox)


# --- the event worker's figures, and what the stores say at each scrape ------------------------------------------

SUBSCRIBER_SECRET = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")


def families(text: str) -> list[str]:
    """The metric family names of an exposition, in order (a name twice would be an invalid exposition)."""
    return [family.name for family in text_string_to_metric_families(text)]


def breaker(text: str, connection: str) -> dict[str, float]:
    return {state: value(text, "order_gateway_breaker_state", connection=connection, state=state)
            for state in ("closed", "open", "half_open")}


@pytest.fixture
def subscribed_gateway(make_gateway, sandbox_url):
    """An open /metrics, two connections and two subscribers (their URL is never called: nothing is queued)."""
    url = sandbox_url + ONGOING_SERVICE_PATH
    config = gateway_config(ongoing=ongoing_connection(url), spare=ongoing_connection(url))
    config["gateway"]["open_metrics"] = True
    config["subscribers"] = {name: {"url": f"{sandbox_url}/subscriber/events", "secret": SUBSCRIBER_SECRET}
                             for name in ("crm", "shop")}
    return make_gateway(config)


def store_event(store, number: int, subscribers: list[str]) -> None:
    event = {"id": f"evt_m{number}", "type": "order.status_changed", "occurred_at": f"2026-11-23T12:00:{number:02d}Z",
             "order": {"backend_order_id": str(number), "order_number": f"SO-{number}"}}
    store.add_event(event, dedupe_key=f"metrics:{number}", order_key=f"ongoing:DEMO:{number}",
                    subscribers=subscribers)


def test_pending_deliveries_and_breaker_states_are_read_at_each_scrape(subscribed_gateway):
    client = subscribed_gateway.test_client()
    store = gateway_of(subscribed_gateway).events.store
    store_event(store, 1, ["crm", "shop"])
    store_event(store, 2, ["crm"])
    store_event(store, 3, ["crm", "unconfigured"])
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "order_gateway_events_pending", subscriber="crm") == 3
    assert value(text, "order_gateway_events_pending", subscriber="shop") == 1
    assert "unconfigured" not in text  # only configured subscribers: a bounded label
    assert breaker(text, "ongoing") == breaker(text, "spare") == {"closed": 1, "open": 0, "half_open": 0}

    store.record_attempt("evt_m1", "crm", outcome="delivered")
    store.record_attempt("evt_m1", "shop", outcome="dead", error="gone")
    connections = gateway_of(subscribed_gateway).connections
    connections.resolve("spare").breaker.open()
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "order_gateway_events_pending", subscriber="crm") == 2
    assert value(text, "order_gateway_events_pending", subscriber="shop") == 0
    assert breaker(text, "spare") == {"closed": 0, "open": 1, "half_open": 0}
    assert breaker(text, "ongoing") == {"closed": 1, "open": 0, "half_open": 0}
    connections.resolve("spare").breaker.half_open()
    assert breaker(client.get("/metrics").get_data(as_text=True), "spare") == {"closed": 0, "open": 0,
                                                                                "half_open": 1}


def test_a_store_that_cannot_be_read_leaves_its_figure_out_of_a_scrape_that_succeeds(subscribed_gateway, monkeypatch,
                                                                                      caplog):
    client = subscribed_gateway.test_client()
    secret_url = "redis://:hunter2-password@10.0.0.7:6379/0"

    def unreachable(*args, **kwargs):
        raise redis.ConnectionError(f"Error 111 connecting to {secret_url}. Connection refused.")

    before = client.get("/metrics").get_data(as_text=True)
    monkeypatch.setattr(gateway_of(subscribed_gateway).events.store, "pending_counts", unreachable)
    monkeypatch.setattr(gateway_of(subscribed_gateway).connections.resolve("spare"), "breaker_state", unreachable)
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        reply = client.get("/metrics")
    assert reply.status_code == 200
    text = reply.get_data(as_text=True)
    assert "order_gateway_events_pending" not in families(text)
    assert breaker(text, "ongoing") == {"closed": 1, "open": 0, "half_open": 0}
    assert "spare" not in {sample.labels.get("connection") for family in text_string_to_metric_families(text)
                           if family.name == "order_gateway_breaker_state" for sample in family.samples}
    for figure in ("events_pending", "breaker_state"):
        assert value(text, "order_gateway_metrics_unreadable_total", figure=figure) == \
            value(before, "order_gateway_metrics_unreadable_total", figure=figure) + 1
    logged = [record.getMessage() for record in caplog.records if record.name == "gateway.metrics"]
    assert len(logged) == 2 and all("ConnectionError" in message for message in logged)
    assert not any("hunter2" in message or "10.0.0.7" in message for message in logged)
    assert "hunter2" not in text and "10.0.0.7" not in text


WRITE_FIGURES = """
import sys
from gateway import metrics
for _ in range(int(sys.argv[1])):
    metrics.event_deliveries.labels("demo", "delivered").inc()
    metrics.event_delivery_lag.labels("demo").observe(0.2)
metrics.http_requests.labels("/livez", "GET", "200").inc()
"""


def test_a_scrape_merges_the_servers_files_with_every_event_workers(tmp_path, monkeypatch):
    """Each family once, summed over the server's own directory and every worker-<pid> beside it; another
    server's directory is its own."""
    root = tmp_path / "metrics"
    written = {"4242": 1, "worker-4343": 3, "worker-4545": 2, "4646": 100}
    writers = []
    for name, deliveries in written.items():
        (root / name).mkdir(parents=True)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(root / name)}
        writers.append(subprocess.Popen([sys.executable, "-c", WRITE_FIGURES, str(deliveries)], cwd=ROOT, env=env))
    assert [writer.wait(timeout=30) for writer in writers] == [0] * len(writers)

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(root / "4242"))
    text = metrics.exposition()[0].decode()
    assert value(text, "order_gateway_event_deliveries_total", subscriber="demo", outcome="delivered") == 6
    assert value(text, "order_gateway_event_delivery_lag_seconds_count", subscriber="demo") == 6
    assert value(text, "order_gateway_event_delivery_lag_seconds_bucket", subscriber="demo", le="0.25") == 6
    assert value(text, "order_gateway_http_requests_total", route="/livez", method="GET", status="200") == 3
    names = families(text)
    assert len(names) == len(set(names))
    assert {"order_gateway_event_deliveries", "order_gateway_event_delivery_lag_seconds",
            "order_gateway_http_requests"} <= set(names)


def finished_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def test_a_worker_gets_a_fresh_directory_and_removes_only_those_of_workers_no_longer_running(tmp_path):
    root, dead, running = tmp_path / "metrics", finished_process_id(), os.getppid()
    for name in (f"worker-{dead}", f"worker-{running}", f"worker-{os.getpid()}", str(dead), "notes"):
        (root / name).mkdir(parents=True)
        (root / name / "counter_1.db").write_bytes(b"")
    made = metrics.prepare_worker_dir(root, os.getpid())
    assert made == (root / f"worker-{os.getpid()}").resolve()
    assert list(made.iterdir()) == []  # an earlier process's with this pid is gone
    assert sorted(path.name for path in root.iterdir()) == sorted(
        [f"worker-{running}", f"worker-{os.getpid()}", str(dead), "notes"])


def test_gunicorns_settings_honour_the_metrics_root_and_remove_only_directories_of_dead_processes(tmp_path):
    root, dead, running = tmp_path / "metrics", finished_process_id(), os.getpid()
    kept = [str(running), f"worker-{running}", "notes"]
    for name in (*kept, str(dead), f"worker-{dead}"):
        (root / name).mkdir(parents=True)
    env = {key: item for key, item in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env["GATEWAY_METRICS_DIR"] = str(root)
    loaded = subprocess.run(
        [sys.executable, "-c", "import os, runpy; runpy.run_path('config/gunicorn.py');"
                               "print(os.getpid(), os.environ['PROMETHEUS_MULTIPROC_DIR'])"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=True)
    pid, directory = loaded.stdout.split()
    assert Path(directory) == (root / pid).resolve()
    assert sorted(path.name for path in root.iterdir()) == sorted([*kept, pid])


def ongoing_webhook(number: int) -> dict:
    return {"webhookEventId": number, "system": "metrics-test", "timestamp": recent_timestamp(number),
            "orderId": 7000 + number, "orderNumber": f"SO-{7000 + number}", "webhookTemplate": "OrderStatusChanged",
            "orderStatus": {"number": 300}}


def test_the_event_workers_deliveries_show_in_the_gateways_metrics(tmp_path):
    """Webhooks stored while no worker runs are pending; once the worker delivered them, the gateway's /metrics
    (any of its gunicorn workers) counts them with their lag, from the worker's own directory."""
    sandbox_port, gateway_port = closed_port(), closed_port()
    sandbox_url, gateway_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{gateway_port}"
    config = Path(write_sandbox_config_copy(tmp_path))
    config.write_text(config.read_text().replace("[gateway]\n", "[gateway]\nopen_metrics = true\n", 1))
    root = tmp_path / "metrics"
    env = {key: item for key, item in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"GATEWAY_CONFIG": str(config), "GATEWAY_METRICS_DIR": str(root),
                "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx",
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events"})
    sandbox = start_sandbox(sandbox_port, env)
    gateway = start_gateway(gateway_port, env, workers=2)
    worker = None
    delivered = {"subscriber": "demo", "outcome": "delivered"}
    try:
        wait_until_serving(f"{sandbox_url}/subscriber/events", sandbox)
        wait_until_serving(f"{gateway_url}/livez", gateway)
        webhooks = 3
        for number in range(1, webhooks + 1):
            reply = requests.post(f"{gateway_url}/webhooks/ongoing/ongoing-demo", auth=WEBHOOK_AUTH,
                                  json=ongoing_webhook(number), timeout=10)
            assert reply.status_code == 202, reply.text
        waiting = requests.get(f"{gateway_url}/metrics", timeout=10).text
        assert value(waiting, "order_gateway_events_pending", subscriber="demo") == webhooks
        assert value(waiting, "order_gateway_event_deliveries_total", **delivered) == 0

        worker = start_worker(env)
        deadline = time.monotonic() + 20
        while True:
            text = requests.get(f"{gateway_url}/metrics", timeout=10, headers={"Connection": "close"}).text
            if value(text, "order_gateway_event_deliveries_total", **delivered) >= webhooks:
                break
            assert time.monotonic() < deadline and worker.poll() is None, "the deliveries were not counted"
            time.sleep(0.1)
        assert value(text, "order_gateway_event_deliveries_total", **delivered) == webhooks
        assert value(text, "order_gateway_event_delivery_lag_seconds_count", subscriber="demo") == webhooks
        assert value(text, "order_gateway_event_delivery_lag_seconds_sum", subscriber="demo") > 0
        assert value(text, "order_gateway_events_pending", subscriber="demo") == 0
        assert value(text, "order_gateway_breaker_state", connection="ongoing-demo", state="closed") == 1
        received = requests.get(f"{sandbox_url}/subscriber/events", timeout=5).json()["received"]
        assert len(received) == webhooks
        # the worker's figures live in a directory of its own beside the server's
        assert list((root / f"worker-{worker.pid}").glob("counter_*.db"))
        assert (root / str(gateway.pid)).is_dir()
    finally:
        for process in (worker, gateway, sandbox):
            if process is not None:
                stop(process)


def test_a_metrics_child_is_looked_up_once_and_is_the_one_labels_gives():
    child = metrics.child(metrics.unreadable_figures, "child-lookup")
    assert metrics.child(metrics.unreadable_figures, "child-lookup") is child
    assert metrics.unreadable_figures.labels("child-lookup") is child
    assert metrics.child(metrics.unreadable_figures, "another-figure") is not child
