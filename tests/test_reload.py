"""Reloading the configuration with `kill -HUP`: the gunicorn master forks workers serving with the new file while
the old ones finish, under a steady stream of requests none of which fails; a file that does not pass the check is
refused in one line and the configuration in force serves on; the event worker reloads on its own hang-up."""

from __future__ import annotations

import os
import signal
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.ongoing_timestamps import recent_timestamp
from tests.processes import child_pids, start_gateway, start_sandbox, start_worker, stop, wait_until_serving
from tests.servers import closed_port

OLD_KEY = "reload-test-old-key-0001"
NEW_KEY = "reload-test-new-key-0002"
#: the orders the client threads update, one each (unpicked in the sandbox's demo data)
ORDERS = ("SO-1006", "SO-1007", "SO-1008")
REFUSED = "configuration reload refused"
RELOADED = "configuration reloaded from"
#: what the event worker logs once huey's consumer runs
WORKER_READY = "Huey consumer started"
WEBHOOK_AUTH = ("ongoing-webhooks", "reload-test-webhook-password")


def write_config(path: Path, *, ongoing_url: str, key: str, subscriber_url: str = "http://127.0.0.1:9/") -> None:
    """The gateway's configuration: one Ongoing connection at `ongoing_url`, one caller with `key`, one subscriber.

    Written beside and renamed over the file, as an operator's deployment tool would, so that no process reads
    half of it."""
    folder = path.parent
    text = f"""
[gateway]
sandbox = true
default_connection = "warehouse"
request_timeout = 40.0
# the stream sends the key the configuration in force does not hold half of the time: no throttling of those
auth_failures_allowed = 100000

[connections.warehouse]
backend = "ongoing"
url = "{ongoing_url}"
goods_owner_code = "DEMO"
username = "demo"
password = "demo-password"
connect_timeout = 2.0
read_timeout = 10.0

[connections.warehouse.webhooks]
auth = "basic"
username = "{WEBHOOK_AUTH[0]}"
password = "{WEBHOOK_AUTH[1]}"
timezone = "UTC"

[callers.shop]
keys = ["{key}"]
connections = ["*"]
scopes = ["orders:write", "events:read"]

[events]
database = "{folder}/events.sqlite3"
queue_database = "{folder}/queue.sqlite3"
backoff_base_seconds = 0.2
backoff_max_seconds = 1.0

[subscribers.fulfilment]
url = "{subscriber_url}"
types = ["order.status_changed"]
secret = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"
"""
    write_atomically(path, text)


def write_atomically(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` in one rename."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


@dataclass
class Sandbox:
    """A sandbox process on a port of its own."""

    process: object
    url: str

    @property
    def ongoing(self) -> str:
        return f"{self.url}/ongoing/Service.asmx"

    @property
    def subscriber(self) -> str:
        return f"{self.url}/subscriber/events"

    def ongoing_calls(self) -> dict:
        """The Ongoing sandbox's count of the demo goods owner's calls: completed ones and refused overlaps."""
        owners = requests.get(f"{self.url}/ongoing/concurrency", timeout=5).json()["goods_owners"]
        return owners.get("DEMO", {"calls": 0, "overlaps": 0})

    def received(self) -> list[dict]:
        """The events the demo subscriber received."""
        return requests.get(self.subscriber, timeout=5).json()["received"]


@pytest.fixture
def sandboxes(tmp_path):
    """Two sandboxes on free ports: the backends and subscribers before and after a reload."""
    started = []
    try:
        for number in (1, 2):
            port = closed_port()
            process = start_sandbox(port, dict(os.environ), tmp_path / f"sandbox-{number}.log")
            started.append(Sandbox(process, f"http://127.0.0.1:{port}"))
            wait_until_serving(f"{started[-1].url}/ongoing/orders", process)
        yield started
    finally:
        for sandbox in started:
            stop(sandbox.process)


@pytest.fixture
def gateway_config(tmp_path, sandboxes):
    """The configuration file (first sandbox, old key) and the environment that names it."""
    path = tmp_path / "gateway.toml"
    write_config(path, ongoing_url=sandboxes[0].ongoing, key=OLD_KEY, subscriber_url=sandboxes[0].subscriber)
    return path, {**os.environ, "GATEWAY_CONFIG": str(path)}


@pytest.fixture
def gateway(tmp_path, gateway_config):
    """A gunicorn gateway with two workers serving the configuration; yields (master process, base URL)."""
    _, env = gateway_config
    port = closed_port()
    process = start_gateway(port, env, workers=2, log=tmp_path / "gateway.log")
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/livez", process)
        wait_until(lambda: len(child_pids(process.pid)) == 2, 20, "both workers forked")
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@dataclass
class Reply:
    """One request of the stream: when it started and ended (time.monotonic), the key it sent, and its status code
    or the exception it ended in."""

    started: float
    ended: float
    key: str
    outcome: int | str


class RequestStream:
    """Client threads, each on one kept-alive connection, updating an order over and over with each key in turn."""

    def __init__(self, gateway_url: str, keys: tuple[str, ...]) -> None:
        self.gateway_url, self.keys = gateway_url, keys
        self.replies: list[Reply] = []
        self._lock, self._stopping = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(order,), daemon=True) for order in ORDERS]

    def __enter__(self) -> RequestStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _send(self, order: str) -> None:
        with requests.Session() as session:
            priority = 0
            while not self._stopping.is_set():
                for key in self.keys:
                    priority = priority % 9 + 1
                    started = time.monotonic()
                    try:
                        outcome = session.patch(f"{self.gateway_url}/orders/{order}", timeout=30,
                                                json={"picking_priority": priority},
                                                headers={"Authorization": f"Bearer {key}"}).status_code
                    except requests.RequestException as error:
                        outcome = f"{type(error).__name__}: {error}"
                    with self._lock:
                        self.replies.append(Reply(started, time.monotonic(), key, outcome))

    def wait_for_replies(self, count: int, since: float = 0.0, seconds: float = 60.0) -> None:
        """Until `count` requests that started after `since` have their replies."""
        deadline = time.monotonic() + seconds
        while sum(reply.started > since for reply in list(self.replies)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} replies within {seconds} s"
            time.sleep(0.05)


def served_by_old(reply: Reply) -> bool:
    """Whether a reply shows the configuration before the switch: the old key accepted, the new one refused."""
    return reply.outcome == (200 if reply.key == OLD_KEY else 401)


def served_by_new(reply: Reply) -> bool:
    """Whether a reply shows the configuration after the switch: the new key accepted, the old one refused."""
    return reply.outcome == (200 if reply.key == NEW_KEY else 401)


def wait_until(predicate, seconds: float, what: str):
    """`predicate()`'s first true value, asked every 50 ms for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def wait_for_new_workers(master, replaced: set[int]) -> None:
    """Until the master's workers are two, none of them one of `replaced`."""
    def only_new() -> bool:
        workers = set(child_pids(master.pid))
        return len(workers) == 2 and workers.isdisjoint(replaced)

    wait_until(only_new, 90, "the old workers replaced by two new ones")


def log_lines(process, text: str) -> list[str]:
    """The lines of a server's output holding `text`."""
    return [line for line in process.log_path.read_text(errors="replace").splitlines() if text in line]


def patch_order(gateway_url: str, key: str) -> int:
    """The status of one update of SO-1009 (picking priority 3) sent with `key`."""
    return requests.patch(f"{gateway_url}/orders/SO-1009", json={"picking_priority": 3}, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_hang_up_switches_keys_and_backend_while_requests_keep_coming_and_none_fails(gateway_config, gateway,
                                                                                        sandboxes):
    path, _ = gateway_config
    master, gateway_url = gateway
    first, second = sandboxes
    old_workers = set(child_pids(master.pid))
    assert len(old_workers) == 2
    with RequestStream(gateway_url, (OLD_KEY, NEW_KEY)) as stream:
        stream.wait_for_replies(30)
        write_config(path, ongoing_url=second.ongoing, key=NEW_KEY)
        hung_up = time.monotonic()
        os.kill(master.pid, signal.SIGHUP)
        wait_for_new_workers(master, old_workers)
        switched = time.monotonic()
        stream.wait_for_replies(30, since=switched)
    replies = stream.replies

    failed = [reply for reply in replies if reply.outcome not in (200, 401)]
    assert not failed, f"{len(failed)} of {len(replies)} requests failed, e.g. {failed[:3]}"
    before, after = [r for r in replies if r.ended < hung_up], [r for r in replies if r.started > switched]
    assert before and all(served_by_old(reply) for reply in before)
    assert after and all(served_by_new(reply) for reply in after)
    # in between, each reply shows one whole configuration or the other: the caller's key and the backend together
    assert all(served_by_old(reply) or served_by_new(reply) for reply in replies)
    assert master.poll() is None
    assert len(log_lines(master, RELOADED)) == 1 and not log_lines(master, REFUSED)

    # each accepted update was one call, to the backend of the configuration that accepted its key
    old_calls = sum(reply.outcome == 200 and reply.key == OLD_KEY for reply in replies)
    new_calls = sum(reply.outcome == 200 and reply.key == NEW_KEY for reply in replies)
    assert old_calls and new_calls
    assert first.ongoing_calls() == {"calls": old_calls, "overlaps": 0, "max_in_progress": 1}
    assert second.ongoing_calls() == {"calls": new_calls, "overlaps": 0, "max_in_progress": 1}

    # afterwards: the new key works and its calls reach the new backend, the old key is refused
    assert patch_order(gateway_url, NEW_KEY) == 200
    assert patch_order(gateway_url, OLD_KEY) == 401
    assert second.ongoing_calls()["calls"] == new_calls + 1
    assert first.ongoing_calls()["calls"] == old_calls
    assert requests.get(f"{second.url}/ongoing/orders/1009", timeout=5).json()["picking_priority"] == 3


def test_a_file_that_fails_the_check_at_a_hang_up_is_refused_in_one_line_and_the_old_configuration_serves_on(
        gateway_config, gateway, sandboxes):
    path, _ = gateway_config
    master, gateway_url = gateway
    first, second = sandboxes
    good = path.read_text()
    with RequestStream(gateway_url, (OLD_KEY, NEW_KEY)) as stream:
        stream.wait_for_replies(30)
        write_atomically(path, good.replace(f'keys = ["{OLD_KEY}"]', f'keys = ["{NEW_KEY}"'))  # not TOML
        os.kill(master.pid, signal.SIGHUP)
        wait_until(lambda: log_lines(master, REFUSED), 60, "the refusal logged")
        refused = time.monotonic()
        stream.wait_for_replies(30, since=refused)
    write_atomically(path, good)  # the file as the gateway serves it, for the log checks after the test

    replies = stream.replies
    failed = [reply for reply in replies if not served_by_old(reply)]
    assert not failed, f"{len(failed)} of {len(replies)} requests failed or saw another configuration: {failed[:3]}"
    assert any(reply.started > refused and reply.outcome == 200 for reply in replies)
    (line,) = log_lines(master, REFUSED)
    assert "is not valid TOML" in line and str(path) in line
    assert not log_lines(master, RELOADED)
    assert master.poll() is None
    accepted = sum(reply.outcome == 200 for reply in replies)
    assert first.ongoing_calls()["calls"] == accepted
    assert second.ongoing_calls()["calls"] == 0
    assert patch_order(gateway_url, OLD_KEY) == 200


def test_connections_opened_while_the_workers_are_replaced_again_and_again_are_all_served(gateway):
    """Each worker listens on a socket of its own (reuse_port) and the kernel hands a new connection to any of them:
    a stopping worker hands its share over to the new workers instead of leaving connections queued on its socket
    until it closes it, which resets them."""
    master, gateway_url = gateway
    outcomes, stopping = [], threading.Event()

    def connect_again_and_again() -> None:
        while not stopping.is_set():
            try:
                outcomes.append(requests.get(f"{gateway_url}/livez", timeout=30,
                                             headers={"Connection": "close"}).status_code)
            except requests.RequestException as error:
                outcomes.append(f"{type(error).__name__}: {error}")

    clients = [threading.Thread(target=connect_again_and_again, daemon=True) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        for _ in range(4):
            replaced = set(child_pids(master.pid))
            os.kill(master.pid, signal.SIGHUP)
            wait_for_new_workers(master, replaced)
            time.sleep(0.5)
    finally:
        stopping.set()
        for client in clients:
            client.join(timeout=30)
    failed = [outcome for outcome in outcomes if outcome != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed, e.g. {failed[:3]}"
    assert len(outcomes) > 100
    assert len(log_lines(master, RELOADED)) == 4

def ongoing_webhook(number: int) -> dict:
    """An Ongoing OrderStatusChanged webhook of its own order."""
    return {"webhookEventId": number, "system": "reload-test", "timestamp": recent_timestamp(number),
            "orderId": 7000 + number, "orderNumber": f"SO-{7000 + number}", "webhookTemplate": "OrderStatusChanged",
            "orderStatus": {"number": 300}}


def test_the_event_worker_reloads_its_configuration_on_its_own_hang_up(gateway_config, make_gateway, sandboxes):
    path, env = gateway_config
    first, second = sandboxes
    # the webhooks come in through an app of the same configuration, storing events and queueing their deliveries
    # where the worker takes them
    intake = make_gateway(tomllib.loads(path.read_text())).test_client()

    def accept(number: int) -> str:
        reply = intake.post("/webhooks/ongoing/warehouse", json=ongoing_webhook(number), auth=WEBHOOK_AUTH)
        assert reply.status_code == 202, reply.text
        return reply.json["id"]

    def delivered(sandbox: Sandbox) -> list[str]:
        return [record["webhook_id"] for record in sandbox.received() if record["verified"]]

    worker = start_worker(env, path.parent / "worker.log")
    try:
        wait_until(lambda: log_lines(worker, WORKER_READY), 60, "the worker consuming")
        one = accept(1)
        wait_until(lambda: delivered(first) == [one], 30, "the first event delivered to the first subscriber")

        # a file that fails the check: refused in one line, the worker delivers on as before, without restarting
        good = path.read_text()
        write_atomically(path, good.replace("[subscribers.fulfilment]", "[subscribers.fulfilment"))
        os.kill(worker.pid, signal.SIGHUP)
        wait_until(lambda: log_lines(worker, REFUSED), 30, "the refusal logged")
        two = accept(2)
        wait_until(lambda: delivered(first) == [one, two], 30, "the second event delivered to the first subscriber")
        (line,) = log_lines(worker, REFUSED)
        assert "is not valid TOML" in line and str(path) in line
        assert len(log_lines(worker, WORKER_READY)) == 1

        # the subscriber moves: the worker starts again (the same process) with the file, and delivers there
        write_config(path, ongoing_url=first.ongoing, key=OLD_KEY, subscriber_url=second.subscriber)
        os.kill(worker.pid, signal.SIGHUP)
        wait_until(lambda: len(log_lines(worker, WORKER_READY)) == 2, 60, "the worker consuming again")
        three = accept(3)
        wait_until(lambda: delivered(second) == [three], 30, "the third event delivered to the second subscriber")
        assert delivered(first) == [one, two]
        assert worker.poll() is None
        assert len(log_lines(worker, REFUSED)) == 1
    finally:
        stop(worker)
