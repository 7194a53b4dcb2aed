"""Availability of the calls to a backend: whole-call deadlines against dripping backends, the request's time
budget across a bulk, the bulkhead, the circuit breaker, retries only where provably safe, Retry-After checks."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from gateway.errors import BackendFailure, BackendUnavailable
from gateway.replies import valid_retry_after
from gateway.runtime import gateway_of
from gateway.transport import BackendReply, OutboundRequest
from tests.conftest import gateway_config, ongoing_connection, speed4trade_connection
from tests.hostile.conftest import read_http_request

UPDATE_ORDER_OK = (b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/'
                   b'soap/envelope/"><soap:Body><UpdateOrderResponse xmlns="http://ongoingsystems.se/WSI">'
                   b'<UpdateOrderResult><Success>true</Success><OrderId>1001</OrderId></UpdateOrderResult>'
                   b'</UpdateOrderResponse></soap:Body></soap:Envelope>')


class ScriptedServer:
    """A TCP server on 127.0.0.1 that reads each request and answers as its `answer(connection, number)` says."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.02)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(10)
            while not self._stop.is_set():
                try:
                    read_http_request(connection)
                except (OSError, ValueError):
                    return
                with self._lock:
                    self.requests += 1
                    number = self.requests
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if not self.answer(connection, number, self._stop):
                        return
                finally:
                    with self._lock:
                        self.in_flight -= 1
        except OSError:
            pass
        finally:
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._accepting.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


def http_reply(body: bytes, status: str = "200 OK", content_type: str = "text/xml; charset=utf-8") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def drip(data: bytes, every: float, stop: threading.Event):
    def answer(connection, number, _stop):
        for byte in data:
            if stop.wait(every):
                return False
            connection.sendall(bytes([byte]))
        return True
    return answer


@pytest.fixture
def server():
    servers = []

    def start(answer) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for running in servers:
        running.close()


def ongoing_client(make_gateway, port: int, gateway_settings: dict | None = None, **overrides):
    config = gateway_config(o=ongoing_connection(f"http://127.0.0.1:{port}/Service.asmx", **overrides))
    config["gateway"].update(gateway_settings or {})
    app = make_gateway(config)
    return app, app.test_client()


# --- deadlines -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["body", "headers"])
def test_a_dripping_backend_is_cut_off_at_the_call_deadline(make_gateway, server, what):
    stop = threading.Event()
    reply = http_reply(UPDATE_ORDER_OK)
    head, body = reply.split(b"\r\n\r\n", 1)
    fake = server(drip(reply, 0.05, stop) if what == "headers" else
                  (lambda connection, number, _: connection.sendall(head + b"\r\n\r\n") or
                   drip(body, 0.05, stop)(connection, number, _)))
    _, client = ongoing_client(make_gateway, fake.port, read_timeout=5, call_timeout=0.6)
    started = time.monotonic()
    answer = client.patch("/orders/SO-1001", json={"status": "released"})
    elapsed = time.monotonic() - started
    stop.set()
    assert answer.status_code == 504, answer.get_json()
    problem = answer.get_json()
    assert "call_timeout 0.6 s" in problem["detail"] and "may have been applied" in problem["detail"]
    assert elapsed < 0.6 * 3 + 1.0  # the deadline, the idempotent retries it leaves no room for, and slack


def test_a_backend_that_answers_in_time_is_not_cut(make_gateway, server):
    stop = threading.Event()
    fake = server(drip(http_reply(UPDATE_ORDER_OK), 0.0005, stop))
    _, client = ongoing_client(make_gateway, fake.port, call_timeout=5)
    assert client.patch("/orders/SO-1001", json={"status": "released"}).status_code == 200


def test_a_bulk_that_runs_out_of_budget_stops_sending_and_reports_every_item(make_gateway, server):
    def slow(connection, number, stop):
        if stop.wait(0.3):
            return False
        connection.sendall(http_reply(UPDATE_ORDER_OK))
        return True

    fake = server(slow)
    _, client = ongoing_client(make_gateway, fake.port, {"request_timeout": 1.0}, call_timeout=1.0)
    answer = client.patch("/orders", json={"orders": [{"order_id": f"SO-{n}", "status": "released"}
                                                      for n in range(1001, 1011)]})
    assert answer.status_code == 207, answer.get_json()
    results = answer.get_json()["results"]
    assert len(results) == 10
    def kind(result):
        if result["status"] == 200:
            return "done"
        assert result["status"] == 504, result
        return "unsent" if result["body"]["backend"]["code"] == "budget-exhausted" else "cut"

    kinds = [kind(result) for result in results]
    # in order: the calls that fit, at most one cut off at the budget's end, then every item never sent
    assert kinds == sorted(kinds, key=["done", "cut", "unsent"].index), kinds
    assert 2 <= kinds.count("done") <= 4 and kinds.count("cut") <= 1 and kinds.count("unsent") >= 5
    assert fake.requests == kinds.count("done") + kinds.count("cut")
    for result in results:
        if kind(result) == "unsent":
            assert "Not sent: the request's time budget ran out (request_timeout 1 s)" in result["body"]["detail"]
        elif kind(result) == "cut":
            assert "request_timeout 1 s" in result["body"]["detail"]


def guard_refusals(connection: str, guard: str) -> float:
    """The calls of `connection` that `guard` refused, as counted so far."""
    return REGISTRY.get_sample_value("order_gateway_guard_refusals_total",
                                     {"connection": connection, "guard": guard}) or 0.0


# --- bulkhead ------------------------------------------------------------------------------------------------

def test_the_bulkhead_bounds_calls_in_flight_and_answers_503_beyond_it(make_gateway, server):
    release = threading.Event()

    def hold(connection, number, stop):
        if release.wait(5) and not stop.is_set():
            connection.sendall(http_reply(UPDATE_ORDER_OK))
        return True

    fake = server(hold)
    config = gateway_config(s=speed4trade_connection(f"http://127.0.0.1:{fake.port}/", read_timeout=10,
                                                     max_concurrent_calls=2, queue_timeout=0.2))
    app = make_gateway(config)
    before = guard_refusals("s", "bulkhead")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(app.test_client().patch, f"/orders/1000{n}", json={"status": "fetched"})
                   for n in range(4)]
        time.sleep(0.6)
        busy = [future.result() for future in futures if future.done()]
        release.set()
        for future in futures:
            future.result()
    assert len(busy) == 2
    for answer in busy:
        assert answer.status_code == 503
        assert answer.get_json()["backend"]["code"] == "bulkhead-full"
        assert answer.headers["Retry-After"] == "1"
    assert fake.max_in_flight == 2
    assert guard_refusals("s", "bulkhead") == before + 2


# --- circuit breaker -----------------------------------------------------------------------------------------

def test_the_breaker_opens_after_consecutive_failures_fails_fast_then_probes(make_gateway, server):
    healthy = threading.Event()

    def flaky(connection, number, stop):
        if healthy.is_set():
            connection.sendall(http_reply(UPDATE_ORDER_OK))
        else:
            connection.sendall(http_reply(b"<html>down</html>", "500 Internal Server Error", "text/html"))
        return True

    fake = server(flaky)
    _, client = ongoing_client(make_gateway, fake.port, breaker_failures=3, breaker_reset_seconds=0.5)
    for _ in range(3):
        assert client.patch("/orders/SO-1001", json={"status": "released"}).status_code == 502
    assert fake.requests == 3
    before = guard_refusals("o", "breaker")
    fast = client.patch("/orders/SO-1001", json={"status": "released"})
    assert fast.status_code == 503
    assert fast.get_json()["backend"]["code"] == "breaker-open"
    assert fast.headers["Retry-After"] == "1"
    assert fake.requests == 3, "an open breaker sends nothing"
    assert guard_refusals("o", "breaker") == before + 1, "the refusal is counted under the guard's name"
    time.sleep(0.6)
    healthy.set()
    probe = client.patch("/orders/SO-1001", json={"status": "released"})
    assert probe.status_code == 200 and fake.requests == 4
    assert client.patch("/orders/SO-1001", json={"status": "released"}).status_code == 200


def test_refusals_do_not_count_against_the_breaker(make_gateway, server):
    refusal = UPDATE_ORDER_OK.replace(b"<Success>true</Success>", b"<Success>false</Success><Message>No order "
                                                                  b"found with GoodsOwnerOrderNumber 'X'.</Message>")
    fake = server(lambda connection, number, stop: connection.sendall(http_reply(refusal)) or True)
    app, client = ongoing_client(make_gateway, fake.port, breaker_failures=2)
    for _ in range(5):
        assert client.patch("/orders/X", json={"status": "released"}).status_code == 404
    assert gateway_of(app).connections.resolve("o").breaker_state()["state"] == "closed"


# --- retries -------------------------------------------------------------------------------------------------

class ScriptedTransport:
    """Raises the scripted errors in turn, then answers the reply."""

    def __init__(self, errors: list[Exception], reply: BackendReply) -> None:
        self.errors, self.reply, self.sent = list(errors), reply, []

    def send(self, request: OutboundRequest, deadline=None) -> BackendReply:
        self.sent.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return self.reply

    def close(self) -> None:
        pass


def transport_error(error_class, *, never_sent: bool):
    return error_class("scripted", connection="o", from_transport=True, never_sent=never_sent)


S4T_OK = BackendReply(200, {"Content-Type": "text/xml"}, (
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<ns1:updateOrderStatusResponse xmlns:ns1="urn:order-gateway-sandbox:speed4trade"><return>&lt;response '
    b'method="updateOrderStatus"&gt;&lt;report return_code="0"/&gt;&lt;/response&gt;</return>'
    b'</ns1:updateOrderStatusResponse></soap:Body></soap:Envelope>'))
ONGOING_OK = BackendReply(200, {"Content-Type": "text/xml"}, UPDATE_ORDER_OK)


@pytest.mark.parametrize(("kind", "document", "never_sent", "attempts", "status"), [
    ("speed4trade", {"status": "fetched"}, True, 3, 200),          # never reached: retried, whatever the call
    ("speed4trade", {"status": "fetched"}, False, 1, 502),         # may have arrived, not idempotent: never
    ("ongoing", {"status": "released"}, False, 3, 200),            # UpdateOrder sets values: idempotent
    ("ongoing", {"new_order_number": "SO-1001-B"}, False, 1, 502),  # a renaming is not
])
def test_retries_only_where_provably_safe(make_gateway, kind, document, never_sent, attempts, status, tmp_path):
    errors = [transport_error(BackendUnavailable if never_sent else BackendFailure, never_sent=never_sent)
              for _ in range(2)]
    transport = ScriptedTransport(errors, S4T_OK if kind == "speed4trade" else ONGOING_OK)
    table = (speed4trade_connection if kind == "speed4trade" else ongoing_connection)("http://127.0.0.1:9/")
    from gateway import create_app

    app = create_app({"gateway": {"allow_anonymous": True}, "connections": {"o": table}, "events": {
        "database": str(tmp_path / "e.sqlite3"), "queue_database": str(tmp_path / "q.sqlite3")}},
        transports={"o": transport})
    try:
        answer = app.test_client().patch("/orders/1001", json=document)
    finally:
        gateway_of(app).close()
    assert answer.status_code == status, answer.get_json()
    assert len(transport.sent) == attempts


@pytest.mark.parametrize(("value", "passed_on"), [
    ("120", "120"), (" 7 ", "7"), ("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:28:00 GMT"),
    ("²", None), ("-5", None), ("99999999", None), ("soon", None), ("", None), (None, None), ("1" * 100, None),
])
def test_a_backends_retry_after_is_validated_before_it_is_passed_on(value, passed_on):
    assert valid_retry_after(value) == passed_on
