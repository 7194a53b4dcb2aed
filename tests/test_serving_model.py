"""The serving model under gunicorn with the project's settings (config/gunicorn.py): clients that send their
headers a byte at a time and a backend that never answers leave the gateway answering everyone else, and callers'
connections are kept alive (docs/architecture.md says why this worker model was chosen over the others measured)."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.hostile.conftest import MisbehavingServer
from tests.processes import start_gateway, start_sandbox, stop, wait_until_serving, write_sandbox_config_copy
from tests.servers import closed_port

SLOW_CLIENTS = 64
HANGING_REQUESTS = 16
ANSWERED_WITHIN = 2.0  # seconds


@pytest.fixture(scope="module")
def hanging_backend() -> Iterator[MisbehavingServer]:
    """Speed4Trade's stand-in: reads every request and never answers (until it is closed)."""
    server = MisbehavingServer("hang")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory, hanging_backend) -> Iterator[str]:
    """The gateway under gunicorn (2 workers, config/gunicorn.py): Ongoing and SellerCenter at a sandbox,
    Speed4Trade at the hanging backend."""
    sandbox_port, gateway_port = closed_port(), closed_port()
    env = {
        **os.environ,
        "ONGOING_URL": f"http://127.0.0.1:{sandbox_port}/ongoing/Service.asmx",
        "SPEED4TRADE_URL": f"http://127.0.0.1:{hanging_backend.port}/speed4trade/",
        "SELLERCENTER_URL": f"http://127.0.0.1:{sandbox_port}/sellercenter/oms-api/",
        "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path_factory.mktemp("serving-model")),
    }
    sandbox = start_sandbox(sandbox_port, env)
    gateway = start_gateway(gateway_port, env, workers=2)
    try:
        wait_until_serving(f"http://127.0.0.1:{sandbox_port}/ongoing/orders", sandbox)
        wait_until_serving(f"http://127.0.0.1:{gateway_port}/", gateway)
        yield f"http://127.0.0.1:{gateway_port}"
    finally:
        stop(gateway)
        stop(sandbox)


@contextmanager
def slow_clients(port: int, count: int, interval: float = 0.5) -> Iterator[list[int]]:
    """`count` connections that send a request's headers one byte every `interval`, never finishing them; yields
    how many bytes each has sent. Every socket is closed on the way out."""
    header = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 8000
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    sent = [0] * count
    done = threading.Event()

    def trickle() -> None:
        while not done.is_set():
            for index, client in enumerate(sockets):
                try:
                    client.send(header[sent[index]:sent[index] + 1])
                    sent[index] += 1
                except OSError:
                    pass
            done.wait(interval)

    thread = threading.Thread(target=trickle, name="slow-clients", daemon=True)
    try:
        thread.start()
        yield sent
    finally:
        done.set()
        thread.join(timeout=5)
        for client in sockets:
            client.close()


def timed(send) -> tuple[requests.Response, float]:
    """The reply and the seconds it took."""
    started = time.monotonic()
    reply = send()
    return reply, time.monotonic() - started


def test_slow_clients_sending_headers_byte_by_byte_do_not_stall_other_callers(gateway_url):
    port = int(gateway_url.rsplit(":", 1)[1])
    with slow_clients(port, SLOW_CLIENTS) as sent:
        time.sleep(1.2)  # every slow client is connected and a few bytes into its headers
        assert min(sent) >= 2
        for _ in range(3):
            reply, seconds = timed(lambda: requests.get(f"{gateway_url}/events?limit=1", timeout=10))
            assert reply.status_code == 200, reply.text
            assert seconds < ANSWERED_WITHIN, f"answered after {seconds:.2f} s beside {SLOW_CLIENTS} slow clients"


def test_requests_hanging_on_one_backend_do_not_stall_another_connection(gateway_url, hanging_backend):
    statuses: list[int] = []

    def hang() -> None:
        reply = requests.patch(f"{gateway_url}/orders/10001", timeout=60,
                               json={"connection": "speed4trade-demo", "status": "fetched"})
        statuses.append(reply.status_code)

    hanging = [threading.Thread(target=hang, name=f"hanging-{n}") for n in range(HANGING_REQUESTS)]
    try:
        for thread in hanging:
            thread.start()
        deadline = time.monotonic() + 5
        while hanging_backend.requests_read < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hanging_backend.requests_read >= 8, "the updates did not reach the hanging backend"
        reply, seconds = timed(lambda: requests.patch(f"{gateway_url}/orders/SO-1006", timeout=10,
                                                      json={"picking_priority": 7}))
        assert reply.status_code == 200, reply.text
        assert reply.json()["connection"] == "ongoing-demo"
        assert seconds < ANSWERED_WITHIN, f"answered after {seconds:.2f} s beside {HANGING_REQUESTS} hanging requests"
    finally:
        hanging_backend.close()  # the held connections close: the hanging updates end (502, or 503 if queued)
        for thread in hanging:
            thread.join(timeout=30)
    assert len(statuses) == HANGING_REQUESTS and set(statuses) <= {502, 503}, statuses


def test_callers_connections_are_kept_alive(gateway_url):
    host, port = gateway_url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sockets = []
        for path in ("/events?limit=1", "/orders/SO-1001?dry_run=true", "/events?limit=1", "/openapi.json"):
            if path.startswith("/orders"):
                connection.request("PATCH", path, body=b'{"picking_priority": 5}',
                                   headers={"Content-Type": "application/json"})
            else:
                connection.request("GET", path)
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200, path
            assert (reply.getheader("Connection") or "").lower() != "close", path
            assert connection.sock is not None, f"the gateway closed the connection after {path}"
            sockets.append((connection.sock, connection.sock.getsockname()))
        assert len(set(sockets)) == 1, sockets
    finally:
        connection.close()
