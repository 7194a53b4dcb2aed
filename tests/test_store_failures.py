"""When a store fails: Redis killed, frozen and restarted under a real gunicorn gateway, an SQLite file held
write-locked, and many concurrent requests against a worker's descriptors. Every failure of a store answers a fast
503 `store-unavailable` naming the store (gateway/stores.py), never a 500, never a URL or a password; /readyz
answers within its bound; everything recovers when the store is back."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from gateway.config import StoreSettings
from gateway.errors import StoreUnavailable
from gateway.runtime import gateway_of
from gateway.stores import UNREACHABLE_HOLD_SECONDS, mark_store, redis_client, store_unavailable
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.ongoing_timestamps import recent_timestamp
from tests.processes import (
    child_pids,
    start_gateway,
    start_sandbox,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
from tests.redis_server import answers_ping
from tests.servers import closed_port

#: how much later than its bound a reply may come on a loaded machine
SLACK = 1.0
#: the stores' timeouts of the gateways under test: small, so a fault costs little
REDIS_CONNECT_TIMEOUT, REDIS_SOCKET_TIMEOUT, READINESS_TIMEOUT = 0.5, 1.0, 1.0
REDIS_PASSWORD = "r3dis-pass-Qx7"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")
STORE_PROBLEM = "urn:order-gateway:problem:store-unavailable"
_numbers = itertools.count(1)


def webhook(number: int) -> dict:
    """An Ongoing OrderStatusChanged webhook for the sandbox's SO-1001, new each time."""
    return {"webhookOrdersId": 3, "webhookEventId": 90_000 + number, "system": "sandbox",
            "timestamp": recent_timestamp(), "orderId": 1001, "orderNumber": "SO-1001", "goodsOwnerId": 1,
            "orderStatus": {"number": 300}, "webhookTemplate": "OrderStatusChanged"}


# --- the one mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    redis.ConnectionError("Error 111 connecting to 10.0.0.1:6379. Connection refused."),
    redis.TimeoutError("Timeout reading from socket"),
    redis.AuthenticationError("invalid username-password pair"),
    redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    redis.ReadOnlyError("You can't write against a read only replica."),
    redis.BusyLoadingError("Redis is loading the dataset in memory"),
    sqlite3.OperationalError("database is locked"),
    sqlite3.OperationalError("database or disk is full"),
    sqlite3.DatabaseError("file is not a database"),
    mark_store(OSError(24, "Too many open files"), "call locks"),
], ids=lambda error: type(error).__name__ + ":" + str(error)[:20])
def test_every_store_failure_becomes_503_store_unavailable(error):
    mark_store(error, "event store")
    mapped = store_unavailable(error)
    assert isinstance(mapped, StoreUnavailable)
    assert (mapped.status, mapped.slug) == (503, "store-unavailable")
    assert mapped.reply_headers() == {"Retry-After": "1"}
    assert mapped.store == ("call locks" if isinstance(error, OSError) and not isinstance(error, redis.RedisError)
                            else "event store")
    assert str(error) not in mapped.detail and "10.0.0.1" not in mapped.detail


@pytest.mark.parametrize("error", [
    sqlite3.IntegrityError("UNIQUE constraint failed"), sqlite3.ProgrammingError("closed database"),
    redis.DataError("invalid input"), redis.exceptions.LockError("not owned"), OSError(2, "unmarked"),
    ValueError("a bug"),
], ids=lambda error: type(error).__name__)
def test_bugs_are_not_store_failures(error):
    assert store_unavailable(error) is None


def test_an_error_raised_from_a_store_failure_names_the_store_nearest_the_client():
    cause = mark_store(redis.TimeoutError("Timeout reading from socket"), "call locks")
    try:
        try:
            raise cause
        except redis.RedisError as inner:
            raise RuntimeError("the lock could not be taken") from inner
    except RuntimeError as outer:
        mapped = store_unavailable(outer)
    assert mapped is not None and mapped.store == "call locks"


def test_a_store_error_in_a_request_is_a_503_naming_the_store_and_never_its_address(make_gateway, monkeypatch):
    app = make_gateway(gateway_config(ongoing=ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH)))

    def refused(**_):
        raise mark_store(redis.ConnectionError(f"Error 111 connecting to redis://:{REDIS_PASSWORD}@10.0.0.1:6379"),
                         "event store")

    monkeypatch.setattr(gateway_of(app).events.store, "list_events", refused)
    reply = app.test_client().get("/events")
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
    problem = reply.get_json()
    assert (problem["type"], problem["store"]) == (STORE_PROBLEM, "event store")
    text = reply.get_data(as_text=True)
    assert REDIS_PASSWORD not in text and "redis://" not in text and "10.0.0.1" not in text


# --- a Redis client that stops answering ---------------------------------------------------------------------


@contextlib.contextmanager
def frozen_server() -> Iterator[str]:
    """A port that accepts connections and never answers (as a stopped Redis does); yields its Redis URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What `call` raised (None if nothing) and how long it took."""
    started = time.monotonic()
    try:
        call()
    except Exception as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_client_waits_one_socket_timeout_then_fails_at_once_for_a_moment():
    with frozen_server() as url:
        client = redis_client(url, StoreSettings(redis_connect_timeout=0.3, redis_socket_timeout=0.3),
                              store="event store")
        try:
            first, waited = timed(client.ping)
            assert isinstance(first, redis.TimeoutError) and first.store == "event store"
            assert 0.25 <= waited < 0.3 + SLACK
            second, waited = timed(lambda: client.get("key"))
            assert isinstance(second, redis.ConnectionError) and second.store == "event store"
            assert waited < 0.05, "the client waited for a Redis that had just not answered"
            piped, waited = timed(lambda: client.pipeline().set("a", 1).execute())
            assert isinstance(piped, redis.ConnectionError) and waited < 0.05
            time.sleep(UNREACHABLE_HOLD_SECONDS)
            third, waited = timed(client.ping)
            assert isinstance(third, redis.TimeoutError) and waited >= 0.25, "the client never tried again"
        finally:
            client.close()


# --- Redis killed, frozen and restarted under a real gateway --------------------------------------------------


class RedisOnPort:
    """A redis-server with a password on one port, which a test can kill, freeze and start again there."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None
        self.frozen = False

    def start(self) -> None:
        executable = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
        assert executable, "redis-server is not installed"
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--requirepass", REDIS_PASSWORD, "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            cwd=self.folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.frozen = False
        deadline = time.monotonic() + 10
        while not answers_ping(self.url):
            assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL reaches a stopped process too
            self.process.wait(timeout=10)
        self.frozen = False

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True


class Endpoints:
    """The requests a client of the gateway makes, each with the store its failure must name."""

    def __init__(self, base: str) -> None:
        self.base = base

    def calls(self) -> dict[str, tuple[str, Callable[[float], requests.Response]]]:
        """name -> (the store that fails it, the request given a client timeout)."""
        number = next(_numbers)
        return {
            "PATCH Ongoing": ("call locks", lambda timeout: requests.patch(
                f"{self.base}/orders/SO-1001", json={"waybill": f"WB-S{number}"}, timeout=timeout)),
            "PATCH with Idempotency-Key": ("idempotency store", lambda timeout: requests.patch(
                f"{self.base}/orders/SO-1002", json={"waybill": f"WB-K{number}"}, timeout=timeout,
                headers={"Idempotency-Key": f'"store-faults-{number}-{time.time_ns()}"'})),
            "GET /events": ("event store", lambda timeout: requests.get(f"{self.base}/events", timeout=timeout)),
            "GET /exchanges": ("exchange journal", lambda timeout: requests.get(
                f"{self.base}/exchanges", timeout=timeout)),
            "webhook": ("event store", lambda timeout: requests.post(
                f"{self.base}/webhooks/ongoing/ongoing-demo", json=webhook(number), auth=WEBHOOK_AUTH,
                timeout=timeout)),
        }

    def readyz(self, timeout: float) -> requests.Response:
        return requests.get(f"{self.base}/readyz", timeout=timeout)


def assert_fast_store_failures(endpoints: Endpoints, bound: float) -> None:
    """Every endpoint answers 503 store-unavailable naming its store within `bound` + SLACK; /readyz fails within
    its own bound. No reply holds the Redis password or URL."""
    for name, (store, call) in endpoints.calls().items():
        started = time.monotonic()
        reply = call(bound + 10)
        took = time.monotonic() - started
        assert reply.status_code == 503, (name, reply.status_code, reply.text)
        problem = reply.json()
        assert (problem["type"], problem["store"]) == (STORE_PROBLEM, store), (name, problem)
        assert reply.headers["Retry-After"] == "1"
        assert REDIS_PASSWORD not in reply.text and "redis://" not in reply.text
        assert took < bound + SLACK, f"{name} answered after {took:.2f} s"
    started = time.monotonic()
    ready = endpoints.readyz(READINESS_TIMEOUT + 10)
    took = time.monotonic() - started
    assert ready.status_code == 503 and ready.json()["status"] == "fail", ready.text
    assert took < READINESS_TIMEOUT + SLACK, f"/readyz answered after {took:.2f} s"
    assert REDIS_PASSWORD not in ready.text and "redis://" not in ready.text


def assert_serving(endpoints: Endpoints, within: float) -> None:
    """Every endpoint, /readyz too, succeeds again within `within` seconds."""
    expected = {"PATCH Ongoing": 200, "PATCH with Idempotency-Key": 200, "GET /events": 200, "GET /exchanges": 200,
                "webhook": 202, "/readyz": 200}
    deadline = time.monotonic() + within
    while True:
        statuses = {name: call(10).status_code for name, (_, call) in endpoints.calls().items()}
        ready = endpoints.readyz(10)
        statuses["/readyz"] = ready.status_code
        if statuses == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert statuses == expected, ready.text


@pytest.fixture
def redis_gateway(tmp_path):
    """A sandbox, a one-worker gunicorn gateway with its stores in a password-protected Redis, and that Redis."""
    folder = tmp_path / "redis"
    folder.mkdir()
    store = RedisOnPort(folder, closed_port())
    store.start()
    sandbox_url, gateway_url = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    config = Path(write_sandbox_config_copy(tmp_path))
    text = config.read_text().replace('# redis_url = "redis://127.0.0.1:6379/0"', f'redis_url = "{store.url}"')
    text = text.replace("[gateway]\n", f"[gateway]\nreadiness_timeout = {READINESS_TIMEOUT}\n", 1)
    config.write_text(text + f"\n[stores]\nredis_connect_timeout = {REDIS_CONNECT_TIMEOUT}\n"
                             f"redis_socket_timeout = {REDIS_SOCKET_TIMEOUT}\n")
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"GATEWAY_CONFIG": str(config), "GATEWAY_METRICS_DIR": str(tmp_path / "metrics"),
                "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx", "SPEED4TRADE_URL": f"{sandbox_url}/speed4trade/",
                "SELLERCENTER_URL": f"{sandbox_url}/sellercenter/oms-api/",
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events"})
    sandbox = start_sandbox(int(sandbox_url.rsplit(":", 1)[1]), env)
    gateway = start_gateway(int(gateway_url.rsplit(":", 1)[1]), env, workers=1)
    try:
        wait_until_serving(f"{sandbox_url}/ongoing/orders/1", sandbox)
        wait_until_serving(f"{gateway_url}/livez", gateway)
        yield Endpoints(gateway_url), store
    finally:
        stop(gateway)
        stop(sandbox)
        store.kill()


def test_redis_killed_then_frozen_then_restarted(redis_gateway):
    endpoints, store = redis_gateway
    assert_serving(endpoints, within=5)

    store.kill()
    assert_fast_store_failures(endpoints, bound=REDIS_SOCKET_TIMEOUT)

    store.start()
    assert_serving(endpoints, within=10)

    store.freeze()
    assert_fast_store_failures(endpoints, bound=REDIS_SOCKET_TIMEOUT)
    # Again, once the clients' moment of failing at once is over: each meets the frozen Redis anew.
    time.sleep(UNREACHABLE_HOLD_SECONDS)
    assert_fast_store_failures(endpoints, bound=REDIS_SOCKET_TIMEOUT)

    store.kill()
    store.start()
    assert_serving(endpoints, within=10)


# --- SQLite held write-locked --------------------------------------------------------------------------------


BUSY_TIMEOUT = 0.5


@pytest.fixture
def sqlite_app(make_gateway, tmp_path):
    receiving = {"auth": "basic", "username": WEBHOOK_AUTH[0], "password": WEBHOOK_AUTH[1]}
    connection = ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH, webhooks=receiving)
    config = gateway_config(**{"ongoing-demo": connection})
    config["stores"] = {"sqlite_busy_timeout": BUSY_TIMEOUT}
    return make_gateway(config)


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process's writer holding the file's write lock, as a long write would."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_write_locked_event_store_answers_503_within_the_busy_timeout(sqlite_app, tmp_path):
    client = sqlite_app.test_client()
    stored = client.post("/webhooks/ongoing/ongoing-demo", json=webhook(1), auth=WEBHOOK_AUTH)
    assert stored.status_code == 202, stored.text
    event_id = stored.get_json()["id"]
    with write_locked(tmp_path / "events.sqlite3"):
        started = time.monotonic()
        reply = client.post(f"/events/{event_id}/redeliver")
        took = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        assert (reply.get_json()["type"], reply.get_json()["store"]) == (STORE_PROBLEM, "event store")
        assert reply.headers["Retry-After"] == "1"
        assert BUSY_TIMEOUT * 0.8 <= took < BUSY_TIMEOUT + SLACK
        assert client.get("/events").status_code == 200, "a reader waited for the writer"
    assert client.post(f"/events/{event_id}/redeliver").status_code == 202


@pytest.mark.expected_traceback  # the views log a store's failure with its traceback
def test_write_locked_stores_fail_webhooks_and_keyed_updates_with_503(sqlite_app, tmp_path):
    client = sqlite_app.test_client()
    for path, send, store in [
        ("events.sqlite3", lambda: client.post("/webhooks/ongoing/ongoing-demo", json=webhook(2), auth=WEBHOOK_AUTH),
         "event store"),
        ("idempotency.sqlite3", lambda: client.patch("/orders/SO-1001", json={"waybill": "WB-1"},
                                                     headers={"Idempotency-Key": '"locked-1"'}), "idempotency store"),
    ]:
        with write_locked(tmp_path / path):
            started = time.monotonic()
            reply = send()
            took = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        assert (reply.get_json()["type"], reply.get_json()["store"]) == (STORE_PROBLEM, store)
        assert took < BUSY_TIMEOUT + SLACK


def test_threads_share_a_few_connections_and_a_borrow_waits_at_most_the_busy_timeout(sqlite_app):
    store = gateway_of(sqlite_app).events.store
    pool_size = StoreSettings().sqlite_pool_size
    start = threading.Barrier(32, timeout=10)

    def read(_: int) -> int:
        start.wait()
        return len(store.list_events(limit=5))

    with ThreadPoolExecutor(32) as threads:
        assert set(threads.map(read, range(32))) == {0}
    assert len(store._connections) <= pool_size

    taken = [store._take() for _ in range(pool_size)]  # every connection borrowed elsewhere
    try:
        error, took = timed(lambda: store.list_events(limit=1))
    finally:
        for connection in taken:
            store._give_back(connection)
    assert isinstance(error, sqlite3.OperationalError) and error.store == "event store"
    assert BUSY_TIMEOUT * 0.8 <= took < BUSY_TIMEOUT + SLACK
    assert store.list_events(limit=1) == []


# --- descriptors under load ----------------------------------------------------------------------------------


def store_descriptors(pid: int, folder: Path) -> int:
    """How many of the process's descriptors are files under `folder` (the SQLite files, their WALs, lock files)."""
    count = 0
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(descriptor).startswith(str(folder)):
                count += 1
    return count


@pytest.fixture
def sqlite_gateway(tmp_path):
    """A sandbox and a one-worker gunicorn gateway with its stores in SQLite files under tmp_path/data."""
    data = tmp_path / "data"
    data.mkdir()
    sandbox_url, gateway_url = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"GATEWAY_CONFIG": write_sandbox_config_copy(data), "GATEWAY_METRICS_DIR": str(tmp_path / "metrics"),
                "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx", "SPEED4TRADE_URL": f"{sandbox_url}/speed4trade/",
                "SELLERCENTER_URL": f"{sandbox_url}/sellercenter/oms-api/",
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events"})
    sandbox = start_sandbox(int(sandbox_url.rsplit(":", 1)[1]), env)
    gateway = start_gateway(int(gateway_url.rsplit(":", 1)[1]), env, workers=1)
    try:
        wait_until_serving(f"{sandbox_url}/ongoing/orders/1", sandbox)
        wait_until_serving(f"{gateway_url}/livez", gateway)
        yield gateway_url, gateway, data
    finally:
        stop(gateway)
        stop(sandbox)


def test_many_concurrent_requests_do_not_grow_a_workers_store_descriptors(sqlite_gateway):
    gateway_url, gateway, data = sqlite_gateway
    (worker,) = child_pids(gateway.pid)
    updates = [("SO-1003", {"connection": "ongoing-demo", "waybill": "WB-FD"}),
               ("10002", {"connection": "speed4trade-demo", "status": "fetched"}),
               ("300001", {"connection": "sellercenter-demo", "shipping_address": {"city": "Bonn"}})]

    def request(number: int) -> int:
        if number % 5 == 4:
            return requests.get(f"{gateway_url}/events", timeout=60).status_code
        order, update = updates[number % len(updates)]
        headers = {"Idempotency-Key": f'"fd-{number}"'} if number % 2 else {}
        return requests.patch(f"{gateway_url}/orders/{order}", json=update, headers=headers, timeout=60).status_code

    peak, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], store_descriptors(worker, data))
            sampling.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(96) as threads:
            statuses = list(threads.map(request, range(192)))
    finally:
        sampling.set()
        sampler.join()
    assert 500 not in statuses and statuses.count(200) > 96, statuses
    # Per SQLite file (events, idempotency, journal, breakers, queue) at most the pool's connections, each with the
    # file and its WAL, and the file's shared memory once; one lock file per goods owner.
    bound = 5 * (2 * StoreSettings().sqlite_pool_size + 1) + 2
    assert peak[0] <= bound, f"{peak[0]} descriptors of store files in one worker (bound {bound})"
    assert store_descriptors(worker, data) <= bound
