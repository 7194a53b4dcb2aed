"""Outcome first: once a backend call was attempted, its outcome is the reply and what the Idempotency-Key keeps,
whatever fails around it — the breaker's shared state, the call lock's release, the key's store — and a key whose
outcome was lost is sent again only when its calls may be repeated. Over real gunicorn gateways on 127.0.0.1 with a
sandbox that counts the calls it receives, and in-process for the guards' own rules."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import ClassVar

import pybreaker
import pytest
import redis
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.wrappers import Request

import sandbox
from gateway.coordination.breakers import ConcurrentCircuitBreaker, FallbackBreakerStorage
from gateway.errors import ConnectionBusy
from gateway.guards import CallGuard, GuardedCall
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.processes import child_pids, start_gateway, stop, wait_until_serving
from tests.redis_server import run_redis_server
from tests.servers import closed_port, serve_wsgi

API_KEY = "outcome-first-key-000001"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: a request's whole budget in these gateways; a key is held for this plus LEASE_MARGIN
REQUEST_TIMEOUT = 3.0
LEASE_MARGIN = 1.5
#: how long the sandbox holds a call that a test interrupts (below REQUEST_TIMEOUT)
SLOW_CALL = 2.0
SHIPMENT = {"status": "shipped", "shipments": [{"tracking_number": "TRK-OUTCOME-1", "carrier": "DHL"}]}
BOOKKEEPING = "order_gateway_bookkeeping_failures_total"


class CountingSandbox:
    """The sandboxes, behind a middleware that counts each backend's calls and holds each call `delay` seconds before
    the sandbox sees it; `arrived` is set when a call has come in whole (its body too: the gateway sends it after
    the head, and a test that kills the gateway's worker once the call arrived must not catch it in between)."""

    SERVICES: ClassVar[dict[str, str]] = {ONGOING_SERVICE_PATH: "ongoing", "/speed4trade/": "speed4trade"}

    def __init__(self) -> None:
        self.app = sandbox.create_app({"ONGOING_OVERLAP_DELAY_SECONDS": 0.1})
        self.calls: collections.Counter[str] = collections.Counter()
        self.delay = 0.0
        self.arrived = threading.Event()
        self.url = ""

    def __call__(self, environ, start_response):
        backend = self.SERVICES.get(environ["PATH_INFO"])
        if environ["REQUEST_METHOD"] == "POST" and backend is not None:
            body = Request(environ).get_data()
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
            self.calls[backend] += 1
            self.arrived.set()
            time.sleep(self.delay)
        return self.app(environ, start_response)

    def shipments(self, order_number: int) -> list:
        reply = requests.get(f"{self.url}/speed4trade/orders/{order_number}", timeout=5)
        assert reply.status_code == 200
        return reply.json()["shipping_informations"]


@pytest.fixture
def backends():
    counting = CountingSandbox()
    with serve_wsgi(counting) as url:
        counting.url = url
        yield counting


def config_text(folder: Path, sandbox_url: str, redis_url: str | None = None) -> str:
    """A gateway with an Ongoing and a Speed4Trade connection to the sandbox, short budgets and a short lease."""
    timeouts = f"connect_timeout = 1.0\nread_timeout = {REQUEST_TIMEOUT}\ncall_timeout = {REQUEST_TIMEOUT}\n"
    return f"""
[gateway]
default_connection = "ongoing-demo"
request_timeout = {REQUEST_TIMEOUT}
idempotency_lease_margin_seconds = {LEASE_MARGIN}
open_metrics = true    # read without a key: a key is checked against the throttle, in Redis, which a test kills

[callers.erp]
key = "{API_KEY}"
scopes = ["orders:write", "exchanges:read", "metrics:read"]

[connections.ongoing-demo]
backend = "ongoing"
url = "{sandbox_url}{ONGOING_SERVICE_PATH}"
goods_owner_code = "DEMO"
username = "demo"
password = "demo-password"
retry_attempts = 1
{timeouts}
[connections.speed4trade-demo]
backend = "speed4trade"
url = "{sandbox_url}/speed4trade/"
username = "connect-demo"
password = "connect-password"
mandator_id = 1
soap_version = "1.1"
namespace = "urn:order-gateway-sandbox:speed4trade"
{timeouts}
[events]
database = "{folder}/events.sqlite3"
queue_database = "{folder}/queue.sqlite3"
{f'redis_url = "{redis_url}"' if redis_url else ""}

[stores]
sqlite_busy_timeout = 0.3
"""


class Gateway:
    """One gunicorn gateway with one worker (so a test knows which process serves it) on a free port."""

    def __init__(self, folder: Path, sandbox_url: str, redis_url: str | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "gateway.toml"
        config.write_text(config_text(folder, sandbox_url, redis_url))
        port = closed_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(GATEWAY_CONFIG=str(config), GATEWAY_METRICS_DIR=str(folder / "metrics"))
        self.log = folder / "gateway.log"
        self.process = start_gateway(port, env, workers=1, log=self.log)
        self.wait_until_serving()

    def wait_until_serving(self) -> None:
        wait_until_serving(f"{self.url}/livez", self.process)

    def patch(self, path: str, body: dict, key: str, timeout: float = 15) -> requests.Response:
        headers = {**AUTH, "Idempotency-Key": f'"{key}"', "Connection": "close"}
        return requests.patch(f"{self.url}{path}", json=body, headers=headers, timeout=timeout)

    def patch_in_background(self, path: str, body: dict, key: str) -> tuple[threading.Thread, list]:
        """Send the request on a thread; the list gets its reply, or the error it ended in."""
        outcome: list = []

        def send() -> None:
            try:
                outcome.append(self.patch(path, body, key))
            except requests.RequestException as error:
                outcome.append(error)

        thread = threading.Thread(target=send)
        thread.start()
        return thread, outcome

    def kill_worker(self) -> None:
        """SIGKILL the worker (its master starts another), as the kernel's OOM killer would."""
        (worker,) = child_pids(self.process.pid)
        os.kill(worker, signal.SIGKILL)

    def bookkeeping_failures(self, what: str) -> float:
        reply = requests.get(f"{self.url}/metrics", timeout=10)
        assert reply.status_code == 200, reply.text
        return sum(sample.value for family in text_string_to_metric_families(reply.text)
                   for sample in family.samples if sample.name == BOOKKEEPING and sample.labels["what"] == what)

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture
def start_gateway_at(tmp_path):
    started: list[Gateway] = []

    def start(sandbox_url: str, redis_url: str | None = None) -> Gateway:
        started.append(Gateway(tmp_path / f"gateway-{len(started)}", sandbox_url, redis_url))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


def wait_for(event: threading.Event) -> None:
    assert event.wait(10), "the call did not reach the sandbox"


def lease_over(started: float) -> None:
    """Wait until the lease of a key begun at `started` (time.monotonic()) has run out."""
    time.sleep(max(started + REQUEST_TIMEOUT + LEASE_MARGIN + 0.2 - time.monotonic(), 0))


@pytest.fixture
def write_locked():
    """Hold SQLite files' write lock from another connection (BEGIN EXCLUSIVE), as another process would."""
    held: list[sqlite3.Connection] = []

    def lock(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, timeout=5)
        db.execute("BEGIN EXCLUSIVE")
        held.append(db)
        return db

    yield lock
    for db in held:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()


# --- over real gateways --------------------------------------------------------------------------------------------

def test_a_write_locked_breaker_file_leaves_the_backends_outcome_as_the_reply(backends, start_gateway_at,
                                                                             write_locked):
    gateway = start_gateway_at(backends.url)
    assert gateway.patch("/orders/SO-1005", {"waybill": "WB-WARM"}, "warm-up").status_code == 200
    assert backends.calls["ongoing"] == 1
    lock = write_locked(gateway.folder / "breakers.sqlite3")

    started = time.monotonic()
    reply = gateway.patch("/orders/SO-1006", {"waybill": "WB-LOCKED"}, "breaker-file-locked")
    took = time.monotonic() - started
    again = gateway.patch("/orders/SO-1006", {"waybill": "WB-LOCKED"}, "breaker-file-locked")
    lock.execute("COMMIT")

    assert reply.status_code == 200, reply.text
    assert reply.json()["order_id"] == "SO-1006"
    assert took < 2.0, "the reply waited for the breaker's file"
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == reply.content
    assert backends.calls["ongoing"] == 2


def test_a_reply_the_key_store_cannot_keep_is_still_the_reply_and_its_retry_is_never_sent_twice(
        backends, start_gateway_at, write_locked):
    gateway = start_gateway_at(backends.url)
    backends.delay = 0.5
    started = time.monotonic()
    thread, outcome = gateway.patch_in_background("/orders/10001", {"connection": "speed4trade-demo", **SHIPMENT},
                                                  "ship-10001")
    wait_for(backends.arrived)
    lock = write_locked(gateway.folder / "idempotency.sqlite3")  # complete() waits 0.3 s for it, then fails
    thread.join(timeout=15)
    lock.execute("COMMIT")

    (reply,) = outcome
    assert reply.status_code == 200, reply.text
    assert reply.json()["operation"] == "updateOrderStatus"
    assert gateway.bookkeeping_failures("idempotency_record") == 1
    in_flight = gateway.patch("/orders/10001", {"connection": "speed4trade-demo", **SHIPMENT}, "ship-10001")
    assert in_flight.status_code == 409
    assert in_flight.json()["type"].endswith(":idempotency-key-in-use")

    lease_over(started)
    unknown = gateway.patch("/orders/10001", {"connection": "speed4trade-demo", **SHIPMENT}, "ship-10001")

    assert unknown.status_code == 409, unknown.text
    problem = unknown.json()
    assert problem["type"] == "urn:order-gateway:problem:outcome-unknown"
    assert "updateOrderStatus on connection 'speed4trade-demo' for 10001" in problem["detail"]
    assert reply.json()["request_id"] in problem["detail"]
    exchange_id = problem["detail"].split("(exchange ")[1].split(")")[0]
    recorded = requests.get(f"{gateway.url}/exchanges/{exchange_id}", headers=AUTH, timeout=10)
    assert recorded.status_code == 200, recorded.text
    assert (recorded.json()["outcome"], recorded.json()["order_ids"]) == ("ok", ["10001"])
    assert backends.calls["speed4trade"] == 1
    assert len(backends.shipments(10001)) == 1
    warnings = [record for record in gateway.log_records() if record["logger"] == "gateway.bookkeeping"]
    assert [record["bookkeeping"] for record in warnings] == ["idempotency_record"]
    assert "OperationalError: database is locked" in warnings[0]["message"]


def test_redis_dying_during_a_call_leaves_the_backends_outcome_as_the_reply(backends, start_gateway_at, tmp_path):
    (tmp_path / "redis").mkdir()
    with run_redis_server(tmp_path / "redis") as redis_url:
        gateway = start_gateway_at(backends.url, redis_url)
        client = redis.Redis.from_url(redis_url)
        redis_pid = client.info("server")["process_id"]
        client.close()
        backends.delay = 1.0
        thread, outcome = gateway.patch_in_background("/orders/SO-1007", {"waybill": "WB-NO-REDIS"},
                                                      "redis-gone")
        wait_for(backends.arrived)
        os.kill(redis_pid, signal.SIGKILL)
        thread.join(timeout=15)

    (reply,) = outcome
    assert not isinstance(reply, Exception), reply
    assert reply.status_code == 200, reply.text
    assert reply.json()["order_id"] == "SO-1007"
    assert backends.calls["ongoing"] == 1
    records = gateway.log_records()
    failed = {record["bookkeeping"] for record in records if record["logger"] == "gateway.bookkeeping"}
    # (a successful call leaves the breaker's shared state alone: only the lock and the key touch Redis after it)
    assert {"call_lock", "idempotency_record"} <= failed
    assert all(record["level"] == "WARNING" and "traceback" not in record
               for record in records if record["logger"] == "gateway.bookkeeping")
    assert [record["logger"] for record in records if "traceback" in record] == []  # a store down is no bug
    assert gateway.bookkeeping_failures("call_lock") == 1


def test_an_idempotent_call_whose_worker_died_is_sent_at_most_once_more_after_the_lease(backends,
                                                                                       start_gateway_at):
    gateway = start_gateway_at(backends.url)
    backends.delay = SLOW_CALL
    started = time.monotonic()
    thread, outcome = gateway.patch_in_background("/orders/SO-1008", {"status": "released"}, "release-1008")
    wait_for(backends.arrived)
    gateway.kill_worker()
    thread.join(timeout=15)
    assert isinstance(outcome[0], requests.ConnectionError)
    gateway.wait_until_serving()
    backends.delay = 0.0

    in_flight = gateway.patch("/orders/SO-1008", {"status": "released"}, "release-1008")
    assert in_flight.status_code == 409 and in_flight.json()["type"].endswith(":idempotency-key-in-use")
    lease_over(started)
    again = gateway.patch("/orders/SO-1008", {"status": "released"}, "release-1008")
    replayed = gateway.patch("/orders/SO-1008", {"status": "released"}, "release-1008")

    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.content == again.content
    assert backends.calls["ongoing"] == 2


def test_a_call_that_must_not_be_repeated_is_never_sent_twice_after_its_worker_died(backends, start_gateway_at):
    gateway = start_gateway_at(backends.url)
    backends.delay = SLOW_CALL
    started = time.monotonic()
    body = {"connection": "speed4trade-demo", **SHIPMENT}
    thread, outcome = gateway.patch_in_background("/orders/10002", body, "ship-10002")
    wait_for(backends.arrived)
    gateway.kill_worker()
    thread.join(timeout=15)
    assert isinstance(outcome[0], requests.ConnectionError)
    gateway.wait_until_serving()

    lease_over(started)
    replies = [gateway.patch("/orders/10002", body, "ship-10002") for _ in range(2)]

    for reply in replies:
        assert reply.status_code == 409, reply.text
        problem = reply.json()
        assert problem["type"] == "urn:order-gateway:problem:outcome-unknown"
        assert "(exchange exc_" in problem["detail"] and "for 10002" in problem["detail"]
        assert "Check the order" in problem["detail"]
    assert gateway.patch("/orders/10002", {**body, "status": "paid"}, "ship-10002").status_code == 422
    assert backends.calls["speed4trade"] == 1
    assert len(backends.shipments(10002)) == 1


# --- in one process ------------------------------------------------------------------------------------------------

class LockedStorage(pybreaker.CircuitBreakerStorage):
    """Shared breaker state that fails every read and write, as an SQLite file another process keeps locked."""

    def __init__(self) -> None:
        super().__init__("locked")
        self.locked, self.touched = True, 0
        self.memory = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)

    def _use(self):
        self.touched += 1
        if self.locked:
            raise sqlite3.OperationalError("database is locked")
        return self.memory

    state = property(lambda self: self._use().state, lambda self, value: setattr(self._use(), "state", value))
    counter = property(lambda self: self._use().counter)
    success_counter = property(lambda self: self._use().success_counter)
    opened_at = property(lambda self: self._use().opened_at,
                         lambda self, value: setattr(self._use(), "opened_at", value))

    def increment_counter(self):
        self._use().increment_counter()

    def reset_counter(self):
        self._use().reset_counter()

    def increment_success_counter(self):
        self._use().increment_success_counter()

    def reset_success_counter(self):
        self._use().reset_success_counter()


class Unwell(Exception):
    """The backend failed."""


def counted(what: str) -> float:
    return REGISTRY.get_sample_value(BOOKKEEPING, {"what": what}) or 0.0


def failing() -> None:
    raise Unwell


def test_a_breaker_whose_shared_state_fails_goes_on_with_its_own_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(FallbackBreakerStorage, "RETRY_SECONDS", 1.0)  # (five seconds otherwise)
    shared = LockedStorage()
    before = counted("breaker_state")
    caplog.set_level(logging.INFO, "gateway")
    breaker = ConcurrentCircuitBreaker(fail_max=2, reset_timeout=0.2, state_storage=shared, name="shop",
                                       throw_new_error_on_trip=False)

    assert [breaker.call(lambda: "done") for _ in range(20)] == ["done"] * 20
    for _ in range(2):
        with pytest.raises(Unwell):
            breaker.call(failing)
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: "not sent")
    time.sleep(0.25)
    assert breaker.call(lambda: "probe") == "probe"
    assert breaker.current_state == pybreaker.STATE_CLOSED

    assert shared.touched == 1, "the shared state was asked again while it was left alone"
    assert counted("breaker_state") == before + 1
    lines = [record for record in caplog.records if record.name == "gateway.bookkeeping"]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "OperationalError: database is locked" in lines[0].getMessage()
    assert "'shop' goes on with this process's own state" in lines[0].getMessage()

    shared.locked = False
    time.sleep(1.0)
    shared.memory.increment_counter()
    assert breaker.fail_counter == 1, "the shared state is read again once it answers"
    assert any("answers again" in record.getMessage() for record in caplog.records)


class Recorder(CallGuard):
    """A guard that admits every call and fails to record how it ended, as a store that went away would."""

    name = "audit"
    released: ClassVar[list[tuple[bool, object]]] = []

    def admit(self, call: GuardedCall) -> str:
        return "ticket"

    def release(self, call: GuardedCall, admission: str) -> None:
        Recorder.released.append((call.sent, admission))
        raise redis.ConnectionError("the audit store went away")


class Closed(CallGuard):
    """A guard that refuses every call."""

    name = "closed"
    released: ClassVar[list[GuardedCall]] = []

    def admit(self, call: GuardedCall) -> None:
        raise ConnectionBusy("Closed for the test; nothing was sent.", connection=self.connection.name, code="closed")

    def release(self, call: GuardedCall, admission: None) -> None:
        Closed.released.append(call)


@pytest.fixture
def slow_sandbox_app(make_gateway):
    counting = CountingSandbox()
    with serve_wsgi(counting) as url:
        counting.url = url

        def make(**connection) -> tuple:
            app = make_gateway(gateway_config(o=ongoing_connection(url + ONGOING_SERVICE_PATH, **connection)))
            return app, gateway_of(app).connections.resolve("o"), counting

        yield make


def test_a_guard_that_cannot_record_the_outcome_leaves_the_reply_alone(slow_sandbox_app, caplog):
    app, connection, counting = slow_sandbox_app()
    Recorder.released.clear()
    connection.guards.append(Recorder(connection))
    before = counted("audit")

    reply = app.test_client().patch("/orders/SO-1001", json={"status": "released"},
                                    headers={"Idempotency-Key": '"audited"'})

    assert reply.status_code == 200, reply.get_json()
    assert Recorder.released == [(True, "ticket")]
    assert counted("audit") == before + 1
    assert [record.exc_info for record in caplog.records if record.name == "gateway.bookkeeping"] == [None]
    assert counting.calls["ongoing"] == 1

    connection.guards.append(Closed(connection))
    Closed.released.clear()
    refused = app.test_client().patch("/orders/SO-1002", json={"status": "released"})
    assert refused.status_code == 503 and refused.get_json()["backend"]["code"] == "closed"
    assert Recorder.released[-1] == (False, "ticket"), "the guards that admitted it learn it was not sent"
    assert Closed.released == [], "a guard that refused the call has nothing to release"
    places = [connection.bulkhead.acquire(timeout=0) for _ in range(connection.settings.max_concurrent_calls)]
    assert all(places), "the bulkhead's places came back"
    for _ in places:
        connection.bulkhead.release()
    assert counting.calls["ongoing"] == 1


class Waiting(CallGuard):
    """A guard that takes its time, as a store that answers slowly does."""

    name = "waiting"

    def admit(self, call: GuardedCall) -> None:
        time.sleep(0.8)

    def release(self, call: GuardedCall, admission: None) -> None:
        pass


def test_what_the_guards_wait_for_is_not_charged_to_the_calls_deadline(slow_sandbox_app):
    app, connection, counting = slow_sandbox_app(call_timeout=0.6)
    connection.guards.insert(0, Waiting(connection))
    counting.delay = 0.3

    reply = app.test_client().patch("/orders/SO-1003", json={"waybill": "WB-SLOW-STORE"})

    assert reply.status_code == 200, reply.get_json()
    assert counting.calls["ongoing"] == 1


def test_a_lock_store_that_cannot_be_used_is_a_fast_503_and_nothing_is_sent(slow_sandbox_app):
    app, connection, counting = slow_sandbox_app()
    folder = connection.locks.folder
    shutil.rmtree(folder)
    folder.write_text("not a folder")

    reply = app.test_client().patch("/orders/SO-1004", json={"waybill": "WB-X"}, headers={"Idempotency-Key": "k-lock"})

    assert reply.status_code == 503, reply.get_json()
    problem = reply.get_json()
    assert problem["type"] == "urn:order-gateway:problem:store-unavailable"
    assert problem["store"] == "call locks"
    assert "nothing was sent" in problem["detail"]
    assert reply.headers["Retry-After"] == "1"
    assert counting.calls["ongoing"] == 0
    folder.unlink()
    folder.mkdir()
    again = app.test_client().patch("/orders/SO-1004", json={"waybill": "WB-X"}, headers={"Idempotency-Key": "k-lock"})
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert counting.calls["ongoing"] == 1


def test_a_call_the_key_store_cannot_note_is_not_sent(slow_sandbox_app, monkeypatch):
    app, _, counting = slow_sandbox_app()
    store = gateway_of(app).idempotency
    note = store.attempt
    monkeypatch.setattr(store, "attempt", lambda *args, **kwargs: (_ for _ in ()).throw(
        sqlite3.OperationalError("database is locked")))

    reply = app.test_client().patch("/orders/SO-1009", json={"waybill": "WB-Y"}, headers={"Idempotency-Key": "k-note"})

    assert reply.status_code == 503, reply.get_json()
    assert reply.get_json()["type"] == "urn:order-gateway:problem:store-unavailable"
    assert "it was not sent" in reply.get_json()["detail"]
    assert counting.calls["ongoing"] == 0
    monkeypatch.setattr(store, "attempt", note)
    again = app.test_client().patch("/orders/SO-1009", json={"waybill": "WB-Y"}, headers={"Idempotency-Key": "k-note"})
    assert again.status_code == 200 and counting.calls["ongoing"] == 1
