"""Scaled out: two gunicorn gateways (as on two machines) and a worker sharing one Redis, in front of one Ongoing
sandbox that refuses overlapping calls — the goods owner's call lock and the circuit breakers span both gateways."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from gateway.coordination.breakers import FallbackBreakerStorage
from tests.processes import (
    start_gateway,
    start_sandbox,
    start_worker,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
from tests.servers import closed_port

CALL_SECONDS = 0.2
#: a database of the test Redis of its own, emptied before and after, so nothing else's keys meet these
REDIS_DATABASE = 7


def broken_connection(port: int) -> str:
    """An Ongoing connection to a port where nothing listens, whose breaker opens after two failures."""
    return f"""
[connections.broken]
backend = "ongoing"
url = "http://127.0.0.1:{port}/ongoing/Service.asmx"
goods_owner_code = "DEMO"
username = "demo"
password = "demo-password"
connect_timeout = 1.0
read_timeout = 2.0
retry_attempts = 1
breaker_failures = 2
breaker_reset_seconds = 30
"""


def wait_until_answering(url: str, process, seconds: float = 20.0) -> None:
    """wait_until_serving, also while gunicorn has bound its port but its worker is still booting (the first
    request then waits longer than the poll's read timeout)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            wait_until_serving(url, process, max(deadline - time.monotonic(), 0.1))
            return
        except requests.ReadTimeout:
            if time.monotonic() > deadline:
                raise


class ScaledOut:
    """One sandbox, two gateway masters (two workers each) and one event worker, all sharing one Redis."""

    def __init__(self, folder: Path, redis_url: str) -> None:
        self.folder, self.redis_url = folder, redis_url
        self.sandbox_url = f"http://127.0.0.1:{closed_port()}"
        self.gateway_ports = [closed_port(), closed_port()]
        self.gateway_urls = [f"http://127.0.0.1:{port}" for port in self.gateway_ports]
        unreachable = closed_port()
        common = {
            **os.environ,
            "ONGOING_URL": f"{self.sandbox_url}/ongoing/Service.asmx",
            "SPEED4TRADE_URL": f"{self.sandbox_url}/speed4trade/",
            "SELLERCENTER_URL": f"{self.sandbox_url}/sellercenter/oms-api/",
            "DEMO_SUBSCRIBER_URL": f"{self.sandbox_url}/subscriber/events",
            "SANDBOX_ONGOING_CALL_SECONDS": str(CALL_SECONDS),
            "SANDBOX_ONGOING_OVERLAP_DELAY_SECONDS": "0.5",
        }
        # A folder of its own per gateway, as on two machines: only Redis can make them exclude each other.
        self.envs = [{**common, "GATEWAY_CONFIG": self.write_config(folder / machine, unreachable)}
                     for machine in ("machine-a", "machine-b")]
        self.processes = []

    def write_config(self, folder: Path, unreachable: int) -> str:
        """The shipped configuration with its files in `folder`, Redis set, and the connection `broken` added."""
        folder.mkdir()
        config = Path(write_sandbox_config_copy(folder))
        text = config.read_text().replace('# redis_url = "redis://127.0.0.1:6379/0"',
                                          f'redis_url = "{self.redis_url}"')
        assert self.redis_url in text
        config.write_text(text + broken_connection(unreachable))
        return str(config)

    def start(self) -> None:
        port = int(self.sandbox_url.rsplit(":", 1)[1])
        sandbox = start_sandbox(port, self.envs[0], self.folder / "sandbox.log")
        self.processes.append(sandbox)
        # Serving before the gateways start loading: their start-up work would slow its worker's boot.
        wait_until_answering(f"{self.sandbox_url}/ongoing/concurrency", sandbox)
        gateways = [start_gateway(port, env, workers=2, log=self.folder / f"gateway-{n}.log")
                    for n, (port, env) in enumerate(zip(self.gateway_ports, self.envs, strict=True))]
        self.processes += gateways
        self.worker = start_worker(self.envs[0], self.folder / "worker.log")
        self.processes.append(self.worker)
        for url, gateway in zip(self.gateway_urls, gateways, strict=True):
            wait_until_answering(f"{url}/events", gateway)

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)

    def demo_calls(self) -> dict:
        reply = requests.get(f"{self.sandbox_url}/ongoing/concurrency", timeout=5)
        assert reply.status_code == 200
        return reply.json()["goods_owners"].get("DEMO", {"calls": 0, "overlaps": 0, "max_in_progress": 0})


@pytest.fixture(scope="module")
def deployment(redis_server_url, tmp_path_factory):
    redis_url = redis_server_url.rsplit("/", 1)[0] + f"/{REDIS_DATABASE}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    scaled_out = ScaledOut(tmp_path_factory.mktemp("scale-out"), redis_url)
    try:
        scaled_out.start()
        yield scaled_out
    finally:
        scaled_out.stop()
        client.flushdb()
        client.close()


def test_concurrent_updates_through_both_gateways_reach_ongoing_one_after_another(deployment):
    assert requests.post(f"{deployment.sandbox_url}/ongoing/_reset", timeout=5).status_code == 204
    updates = [(deployment.gateway_urls[n % 2], f"SO-10{n % 10 + 1:02d}", f"WB-{n}") for n in range(12)]
    start = threading.Barrier(len(updates), timeout=10)

    def send(update: tuple[str, str, str]) -> requests.Response:
        gateway_url, order, waybill = update
        start.wait()
        return requests.patch(f"{gateway_url}/orders/{order}", json={"waybill": waybill}, timeout=30)

    with ThreadPoolExecutor(len(updates)) as pool:
        replies = list(pool.map(send, updates))
    assert [reply.status_code for reply in replies] == [200] * len(updates), [reply.text for reply in replies]
    assert deployment.demo_calls() == {"calls": len(updates), "overlaps": 0, "max_in_progress": 1}
    assert deployment.worker.poll() is None, "the event worker died"


def test_a_breaker_opened_through_one_gateway_is_open_in_the_other(deployment):
    first, second = deployment.gateway_urls
    update = {"connection": "broken", "waybill": "WB-NOWHERE"}
    for _ in range(2):
        reply = requests.patch(f"{first}/orders/SO-1001", json=update, timeout=10)
        assert reply.status_code == 503, reply.text
        problem = reply.json()
        assert "could not be reached" in problem["detail"]
        assert problem["backend"]["code"] != "breaker-open"
    # A process admits calls from its own copy of the breaker, read again from Redis when it is older than
    # REFRESH_SECONDS (its /readyz checks read it too): the other gateway's copy may be that old still.
    time.sleep(FallbackBreakerStorage.REFRESH_SECONDS + 0.05)

    reply = requests.patch(f"{second}/orders/SO-1001", json=update, timeout=10)
    assert reply.status_code == 503, reply.text
    problem = reply.json()
    assert problem["backend"]["code"] == "breaker-open"
    assert problem["backend"]["connection"] == "broken"
    assert 1 <= int(reply.headers["Retry-After"]) <= 30
    stored = redis.Redis.from_url(deployment.redis_url)
    assert stored.get("gateway:breakers:broken:pybreaker:state") == b"open"
    stored.close()
    # the other connections of that gateway are not affected
    reply = requests.patch(f"{second}/orders/SO-1002", json={"waybill": "WB-FINE"}, timeout=10)
    assert reply.status_code == 200, reply.text


def test_one_idempotency_key_sent_to_both_gateways_at_once_makes_one_backend_call(deployment):
    assert requests.post(f"{deployment.sandbox_url}/ongoing/_reset", timeout=5).status_code == 204
    start = threading.Barrier(2, timeout=10)
    headers = {"Authorization": "Bearer demo-caller-key-0000", "Idempotency-Key": '"scale-out-once"'}

    def send(gateway_url: str) -> requests.Response:
        start.wait()
        return requests.patch(f"{gateway_url}/orders/SO-1006", json={"waybill": "WB-ONCE"}, headers=headers,
                              timeout=30)

    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(send, deployment.gateway_urls))
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses in ([200, 200], [200, 409]), [reply.text for reply in replies]
    if statuses == [200, 200]:  # the second arrived after the first was answered: a replay
        assert any(reply.headers.get("Idempotent-Replayed") == "true" for reply in replies)
    assert deployment.demo_calls()["calls"] == 1
    # and afterwards, through either gateway, the kept reply
    later = requests.patch(f"{deployment.gateway_urls[1]}/orders/SO-1006", json={"waybill": "WB-ONCE"},
                           headers=headers, timeout=30)
    assert later.status_code == 200 and later.headers["Idempotent-Replayed"] == "true"
    assert deployment.demo_calls()["calls"] == 1
