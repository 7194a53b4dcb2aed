"""The deployment shape of `make run`: gunicorn serving the sandbox and a multi-worker gateway, over real HTTP."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.processes import (
    BIN,
    ROOT,
    child_pids,
    established_connections,
    listening_sockets,
    start_gateway,
    start_sandbox,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
from tests.servers import closed_port

GUNICORN = str(BIN / "gunicorn")


class Deployment(tuple):
    """(gateway URL, sandbox URL), with the gateway's gunicorn master process as `gateway`."""

    def __new__(cls, gateway_url: str, sandbox_url: str, gateway: subprocess.Popen) -> Deployment:
        made = super().__new__(cls, (gateway_url, sandbox_url))
        made.gateway = gateway
        return made


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    sandbox_port, gateway_port = closed_port(), closed_port()
    env = {
        **os.environ,
        "ONGOING_URL": f"http://127.0.0.1:{sandbox_port}/ongoing/Service.asmx",
        "SPEED4TRADE_URL": f"http://127.0.0.1:{sandbox_port}/speed4trade/",
        "SELLERCENTER_URL": f"http://127.0.0.1:{sandbox_port}/sellercenter/oms-api/",
    }
    env["GATEWAY_CONFIG"] = write_sandbox_config_copy(tmp_path_factory.mktemp("deployment"))
    sandbox = start_sandbox(sandbox_port, env)
    gateway = start_gateway(gateway_port, env, workers=3)
    try:
        wait_until_serving(f"http://127.0.0.1:{sandbox_port}/ongoing/orders", sandbox)
        wait_until_serving(f"http://127.0.0.1:{gateway_port}/", gateway)
        yield Deployment(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{sandbox_port}", gateway)
    finally:
        stop(gateway)
        stop(sandbox)


def test_the_readme_example_works_through_gunicorn(deployment):
    gateway_url, sandbox_url = deployment
    reply = requests.patch(f"{gateway_url}/orders/SO-1002", json={"status": "allocated"}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert body["backend_order_id"] == "1002" and body["connection"] == "ongoing-demo"
    assert body["request_id"] == reply.headers["X-Request-ID"]
    assert requests.get(f"{sandbox_url}/ongoing/orders/1002", timeout=5).json()["status"] == 320


def test_speed4trade_next_to_ongoing_through_gunicorn(deployment):
    gateway_url, sandbox_url = deployment
    reply = requests.patch(f"{gateway_url}/orders/10001", timeout=10, json={
        "connection": "speed4trade-demo", "status": "shipped",
        "shipments": [{"tracking_number": "00340434161094042557", "carrier": "DHL"}],
    })
    assert reply.status_code == 200, reply.text
    assert reply.json()["backend"] == "speed4trade"
    order = requests.get(f"{sandbox_url}/speed4trade/orders/10001", timeout=5).json()
    assert order["status"] == "SHIPPED"
    assert order["shipping_informations"][0]["tracking_number"] == "00340434161094042557"


@pytest.mark.parametrize(
    ("connection", "items", "view"),
    [
        ("ongoing-demo", [{"order_id": "SO-1008", "waybill": "BULK-8"}, {"order_id": "SO-1009", "waybill": "BULK-9"}],
         ("ongoing/orders/1008", "waybill", "BULK-8")),
        ("speed4trade-demo", [{"order_id": "10005", "status": "paid", "payment": {"status": "paid"}},
                              {"order_id": "10006", "status": "fetched"}],
         ("speed4trade/orders/10005", "status", "PAID")),
        ("sellercenter-demo", [{"order_id": 300004, "shipping_address": {"city": "Leipzig"}},
                               {"order_id": 300005, "billing_address": {"phone": "0341 1"}}],
         ("sellercenter/orders/300004", "address_shipping", {"city": "Leipzig"})),
    ],
)
def test_the_readme_bulk_calls_work_through_gunicorn(deployment, connection, items, view):
    gateway_url, sandbox_url = deployment
    reply = requests.patch(f"{gateway_url}/orders", json={"connection": connection, "orders": items}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["succeeded"] == len(items)
    path, key, value = view
    actual = requests.get(f"{sandbox_url}/{path}", timeout=5).json()[key]
    assert ({name: actual[name] for name in value} if isinstance(value, dict) else actual) == value


def test_many_workers_serve_concurrent_requests(deployment):
    gateway_url, sandbox_url = deployment
    orders = [f"SO-{n}" for n in range(1006, 1011)] * 4

    def patch(order: str) -> int:
        return requests.patch(f"{gateway_url}/orders/{order}", json={"picking_priority": 9}, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(patch, orders))
    assert statuses == [200] * len(orders)
    for system_id in range(1006, 1011):
        assert requests.get(f"{sandbox_url}/ongoing/orders/{system_id}", timeout=5).json()["picking_priority"] == 9


def test_errors_through_gunicorn_are_problem_documents(deployment):
    gateway_url, _ = deployment
    reply = requests.patch(f"{gateway_url}/orders/SO-1001", data="{", timeout=10,
                           headers={"Content-Type": "application/json"})
    assert reply.status_code == 400
    assert reply.headers["Content-Type"] == "application/problem+json"


def test_a_broken_configuration_stops_start_up_with_a_clear_message(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text('[connections.wh]\nbackend = "ongoing"\nurl = "http://127.0.0.1:9/"\n'
                      'goods_owner_code = "A"\nusername = "u"\npassword = "${TEST_NEVER_SET_PASSWORD}"\n')
    env = {**os.environ, "GATEWAY_CONFIG": str(config)}
    env.pop("TEST_NEVER_SET_PASSWORD", None)
    result = subprocess.run(
        [GUNICORN, "--config", "config/gunicorn.py", "--bind", f"127.0.0.1:{closed_port()}", "wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, timeout=30, check=False,
    )
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert (f"order gateway: configuration error: {config}: connections.wh.password: "
            "environment variable TEST_NEVER_SET_PASSWORD is not set") in stderr
    assert "Traceback" not in stderr


def test_each_worker_listens_on_a_socket_of_its_own_and_connections_spread_over_them(deployment):
    """reuse_port: the kernel spreads new connections over the workers' own sockets, so a burst of kept-alive
    connections is not all taken by the one worker that woke first."""
    gateway_url, _ = deployment
    port = int(gateway_url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the three workers boot one after another
        workers = child_pids(deployment.gateway.pid)
        listening = listening_sockets([deployment.gateway.pid, *workers], port)
        if len(workers) == 3 and sum(listening.values()) >= 3:
            break
        time.sleep(0.1)
    assert listening == {deployment.gateway.pid: 0, **{worker: 1 for worker in workers}}
    sessions = [requests.Session() for _ in range(24)]
    try:
        for session in sessions:
            assert session.get(f"{gateway_url}/livez", timeout=10).status_code == 200
        held = established_connections(workers, port)
    finally:
        for session in sessions:
            session.close()
    assert len(held) == 3 and sum(held.values()) == 24, held
    # 24 connections hashed over 3 sockets: a worker with none would happen about once in 10,000 runs
    assert min(held.values()) >= 1, held


def refused_start(bind: str, folder: Path) -> subprocess.CompletedProcess:
    """gunicorn started with the project's settings on `bind`, its event databases in `folder`."""
    env = {**os.environ, "GATEWAY_CONFIG": write_sandbox_config_copy(folder)}
    return subprocess.run([GUNICORN, "--config", "config/gunicorn.py", "--bind", bind, "wsgi:app"], cwd=ROOT, env=env,
                          capture_output=True, timeout=30, check=False)


def test_a_port_another_server_listens_on_stops_start_up_with_a_clear_message(deployment, tmp_path):
    gateway_url, _ = deployment
    port = gateway_url.rsplit(":", 1)[1]
    # the running gateway's own workers listen there with SO_REUSEPORT, which a second gateway could share
    result = refused_start(f"127.0.0.1:{port}", tmp_path)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    # the gateway's own line, with the reason as the OS words it, and nothing after it: no worker was started
    refusal = f"cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)} (another server listens there)"
    assert refusal in output.splitlines()[-1], output
    assert "Traceback" not in output


def test_port_0_stops_start_up_with_a_clear_message(tmp_path):
    result = refused_start("127.0.0.1:0", tmp_path)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert "cannot listen on 127.0.0.1:0: each worker would listen on a port of its own" in output


def test_a_server_told_to_stop_does_not_wait_for_a_hand_over_to_workers_stopping_with_it(tmp_path):
    """SIGTERM to the master stops every worker at once: an older worker has no newer one to hand its listening
    socket to (they stop too), so the server is gone within seconds, not after the hand-over's 10 s wait."""
    port = closed_port()
    env = {**os.environ, "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path),
           "GATEWAY_METRICS_DIR": str(tmp_path / "metrics")}
    gateway = start_gateway(port, env, workers=3)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/livez", gateway)
        deadline = time.monotonic() + 20
        while len(listening_sockets(child_pids(gateway.pid), port)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(listening_sockets(child_pids(gateway.pid), port)) == 3, "every worker listens on its own socket"
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        stop(gateway)

    assert gateway.returncode == 0
    assert took < 6, f"the server took {took:.1f} s to stop"
