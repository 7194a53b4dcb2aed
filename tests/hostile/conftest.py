"""Fixtures for the hostile-peer tests: gateways, one programmable fake per vendor, misbehaving TCP servers, and
helpers that build crafted JSON text and check problem documents."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from lxml import etree
from werkzeug.wrappers import Request, Response

from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_SERVICE_PATH,
    SPEED4TRADE_NAMESPACE,
    SPEED4TRADE_SERVICE_PATH,
    gateway_config,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)
from tests.processes import start_gateway, stop, wait_until_serving
from tests.servers import closed_port, serve_wsgi
from tests.test_webhooks_receiving import BASIC, PAYLOAD

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "request_id"}
WEBHOOK_PATH = "/webhooks/ongoing/ongoing-demo"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")

#: per backend kind: the connection table helper, the sandbox path, and an order with a valid update of it
CONNECTION_TABLES: dict[str, Callable[..., dict]] = {
    "ongoing": ongoing_connection,
    "speed4trade": speed4trade_connection,
    "sellercenter": sellercenter_connection,
}
SERVICE_PATHS = {
    "ongoing": ONGOING_SERVICE_PATH,
    "speed4trade": SPEED4TRADE_SERVICE_PATH,
    "sellercenter": SELLERCENTER_SERVICE_PATH,
}
VALID_UPDATES = {
    "ongoing": ("SO-1001", {"status": "released"}),
    "speed4trade": ("10001", {"status": "fetched"}),
    "sellercenter": ("300001", {"shipping_address": {"city": "Berlin"}}),
}
KINDS = tuple(VALID_UPDATES)
#: digits str.isdigit() accepts that are not ASCII digits
ARABIC_INDIC_ONE = "\u0661"
ARABIC_INDIC_TEN = "\u0661\u0660"
FULLWIDTH_TEN = "\uff11\uff10"


# --- problem documents -------------------------------------------------------------------------------------

def check_problem(status_code: int, media_type: str, document: Any, request_id: str | None,
                  status: int, slug: str) -> dict:
    """The checks every problem reply passes, wherever it came from."""
    assert status_code == status, document
    assert media_type == PROBLEM_MEDIA_TYPE, document
    assert isinstance(document, dict) and document.keys() >= PROBLEM_MEMBERS, document
    assert document["status"] == status
    assert document["type"] == f"urn:order-gateway:problem:{slug}", document
    if request_id is not None:
        assert document["request_id"] == request_id
    return document


def assert_problem(reply, status: int, slug: str) -> dict:
    """A Flask test reply is the problem document of `status` and `slug`, without a traceback; its members."""
    text = reply.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    document = reply.get_json(silent=True) if reply.mimetype == PROBLEM_MEDIA_TYPE else text[:2000]
    return check_problem(reply.status_code, reply.mimetype, document, reply.headers.get("X-Request-ID"),
                         status, slug)


# --- crafted JSON text -------------------------------------------------------------------------------------

def nested_arrays(depth: int, core: str = "") -> str:
    """`depth` arrays, one inside the other, around `core` (raw JSON text)."""
    return "[" * depth + core + "]" * depth


def json_depth(text: str) -> int:
    """How deep containers nest in a JSON text, counted without parsing it (so it works at any depth)."""
    depth = deepest = 0
    in_string = escaped = False
    for character in text:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]}":
            depth -= 1
    return deepest


def object_with(base: dict, name: str, raw_value: str) -> str:
    """JSON text of `base` (without `name`) plus the member `name` whose value is the raw JSON text given."""
    members = {key: value for key, value in base.items() if key != name}
    head = json.dumps(members)[:-1]
    return f"{head}{', ' if members else ''}{json.dumps(name)}: {raw_value}}}"


@dataclass(frozen=True)
class Endpoint:
    """A JSON endpoint of the gateway, how a crafted member is placed in its body, and how it is sent."""

    name: str
    method: str
    path: str
    #: the JSON text of a valid body with one member replaced or added, given as raw JSON text
    body: Callable[[str, str], str]
    #: containers around the crafted member's value
    around: int
    #: what the endpoint answers to a well-formed body with an unknown member `x` holding arrays
    reply_to_unknown_member: int
    #: the member where an integer belongs
    integer_member: str
    auth: tuple[str, str] | None = None

    def send(self, client, text: str | bytes, **kwargs):
        """Send `text` as the JSON body."""
        return client.open(self.path, method=self.method, data=text, content_type="application/json",
                           auth=self.auth, **kwargs)


ENDPOINTS = (
    Endpoint("patch-one", "PATCH", "/orders/SO-1001",
             lambda name, raw: object_with({"waybill": "WB-1"}, name, raw), 1, 422, "picking_priority"),
    Endpoint("patch-bulk", "PATCH", "/orders",
             lambda name, raw: '{"orders": [' + object_with({"order_id": "SO-1001", "waybill": "WB-1"}, name, raw)
                               + "]}",
             3, 207, "picking_priority"),
    Endpoint("webhook", "POST", WEBHOOK_PATH, lambda name, raw: object_with(PAYLOAD, name, raw), 1, 202,
             "orderId", auth=WEBHOOK_AUTH),
)


def webhook_gateway_config(url: str) -> dict:
    """An Ongoing connection `ongoing-demo` at `url` that also receives Ongoing's webhooks with HTTP Basic."""
    connection = ongoing_connection(url, webhooks=dict(BASIC))
    return gateway_config(**{"ongoing-demo": connection})


@pytest.fixture
def gateway_client(make_gateway, sandbox_url):
    """A gateway whose Ongoing connection `ongoing-demo` is the sandbox and which receives its webhooks."""
    return make_gateway(webhook_gateway_config(sandbox_url + ONGOING_SERVICE_PATH)).test_client()


def stored_events(client) -> list[dict]:
    """Every event the gateway stored, as GET /events lists them."""
    reply = client.get("/events", query_string={"limit": "1000"})
    assert reply.status_code == 200, reply.get_data(as_text=True)[:2000]
    return reply.get_json()["events"]


# --- one programmable fake per vendor ----------------------------------------------------------------------

class ProgrammableBackend:
    """A fake vendor endpoint that answers whatever it was last told to, and records what it received."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget what was received; answer an empty 500 until told otherwise."""
        self.answer(b"", status=500)
        self.requests: list[tuple[dict, bytes]] = []

    def answer(self, body: bytes | str, *, status: int = 200, content_type: str = "text/xml; charset=utf-8") -> None:
        """Answer every following request with this reply."""
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.status, self.content_type = status, content_type

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.requests.append((dict(request.headers), request.get_data()))
        return Response(self.body, status=self.status, content_type=self.content_type)(environ, start_response)


@pytest.fixture(scope="session")
def vendor_fakes() -> Iterator[dict[str, tuple[str, ProgrammableBackend]]]:
    """One fake per vendor on its own 127.0.0.1 port for the whole run: kind -> (endpoint URL, fake)."""
    fakes = {kind: ProgrammableBackend() for kind in KINDS}
    with contextlib.ExitStack() as stack:
        yield {kind: (stack.enter_context(serve_wsgi(fake)) + SERVICE_PATHS[kind], fake)
               for kind, fake in fakes.items()}


@pytest.fixture
def gateway_to_fake(make_gateway, vendor_fakes):
    """Connect a new gateway (one connection, `hostile`) to the fake of a vendor: (test client, fake)."""

    def connect(kind: str, **overrides) -> tuple[Any, ProgrammableBackend]:
        url, fake = vendor_fakes[kind]
        fake.reset()
        app = make_gateway(gateway_config(hostile=CONNECTION_TABLES[kind](url, **overrides)))
        return app.test_client(), fake

    return connect


def send_valid_update(client, kind: str, **kwargs):
    """PATCH the backend kind's valid update through the gateway."""
    order_id, document = VALID_UPDATES[kind]
    return client.patch(f"/orders/{order_id}", json=document, **kwargs)


# --- TCP servers that misbehave below HTTP -----------------------------------------------------------------

#: how a dripping reply says where its body ends
DRIP_FRAMINGS = {
    "content-length": b"Content-Length: 100000\r\n",
    "until-close": b"",
    "chunked": b"Transfer-Encoding: chunked\r\n",
}

class MisbehavingServer:
    """A TCP server on 127.0.0.1 that reads each HTTP request in full (headers and Content-Length bytes) and then
    misbehaves: `close` (a clean FIN, no reply), `reset` (SO_LINGER 0: an RST, no reply), `hang` (never
    answers, keeps the connection open) or `drip-<framing>` (the headers of a 200 with `Connection: close` at once,
    then one body byte, or one one-byte chunk, every 50 ms until stopped; framings in DRIP_FRAMINGS)."""

    BEHAVIOURS = ("close", "reset", "hang", *(f"drip-{framing}" for framing in DRIP_FRAMINGS))
    DRIP_SECONDS = 0.05

    def __init__(self, behaviour: str) -> None:
        assert behaviour in self.BEHAVIOURS
        self.behaviour = behaviour
        self.requests_read = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.02)
        self.port = self._listener.getsockname()[1]
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
            thread = threading.Thread(target=self._misbehave, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _misbehave(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(5)
            read_http_request(connection)
            self.requests_read += 1
            if self.behaviour == "hang":
                self._stop.wait()
            elif self.behaviour.startswith("drip-"):
                framing = self.behaviour.removeprefix("drip-")
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n"
                                   + DRIP_FRAMINGS[framing] + b"\r\n")
                piece = b"1\r\n \r\n" if framing == "chunked" else b" "
                while not self._stop.wait(self.DRIP_SECONDS):
                    connection.sendall(piece)
            elif self.behaviour == "reset":
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            connection.close()

    def close(self) -> None:
        """Stop accepting, let go of held connections, and wait for every thread."""
        self._stop.set()
        self._accepting.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


def read_http_request(connection: socket.socket) -> bytes:
    """Read one HTTP request with a Content-Length body (what the gateway's transport sends) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def misbehaving_server():
    """Start MisbehavingServers by behaviour; every one is closed after the test."""
    servers: list[MisbehavingServer] = []

    def start(behaviour: str) -> MisbehavingServer:
        server = MisbehavingServer(behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# --- raw HTTP from the caller's side -----------------------------------------------------------------------

@dataclass
class RawReply:
    """An HTTP reply read off a socket."""

    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    @property
    def media_type(self) -> str:
        """The media type, without parameters."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    def problem(self, status: int, slug: str) -> dict:
        """The reply as a checked problem document."""
        text = self.body.decode("utf-8", "replace")
        assert "Traceback" not in text, text[:2000]
        document = json.loads(self.body) if self.media_type == PROBLEM_MEDIA_TYPE else text[:2000]
        return check_problem(self.status, self.media_type, document, self.headers.get("x-request-id"),
                             status, slug)


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2:]
    return body


def parse_http_reply(data: bytes) -> RawReply:
    """The status, headers and body of one HTTP/1.x reply."""
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete HTTP reply: {data[:500]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif headers.get("content-length", "").isdigit():
        body = body[:int(headers["content-length"])]
    return RawReply(int(status_line.split()[1]), headers, body)


def _read_to_end(connection: socket.socket) -> bytes:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def send_then_read(port: int, head: bytes, parts: Iterable[bytes]) -> RawReply:
    """Write the whole request, then read the reply; the gateway must not break the connection meanwhile."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        try:
            connection.sendall(head)
            for part in parts:
                connection.sendall(part)
            data = _read_to_end(connection)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise AssertionError(f"the gateway broke the connection instead of reading the request: {error!r}") \
                from None
    return parse_http_reply(data)


def read_while_sending(port: int, head: bytes, parts: Iterable[bytes]) -> RawReply:
    """Read the reply while the request is still being written (a gateway may answer before the body ends);
    writing stops when the gateway closes its side."""
    received: list[bytes] = []
    errors: list[BaseException] = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:

        def read() -> None:
            try:
                received.append(_read_to_end(connection))
            except OSError as error:
                errors.append(error)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(head)
            for part in parts:
                connection.sendall(part)
        reader.join(timeout=30)
    assert not errors and received, f"no reply could be read: {errors!r}"
    return parse_http_reply(received[0])


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    """`data` in HTTP/1.1 chunked transfer coding."""
    for start in range(0, len(data), size):
        piece = data[start:start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


# --- vendor replies, built as the vendors' documents describe them -----------------------------------------

SOAP11_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
ONGOING_WSI = "http://ongoingsystems.se/WSI"


def soap11(payload: etree._Element) -> bytes:
    """A SOAP 1.1 envelope whose Body holds `payload`."""
    envelope = etree.Element(f"{{{SOAP11_ENVELOPE}}}Envelope", nsmap={"soap": SOAP11_ENVELOPE})
    etree.SubElement(envelope, f"{{{SOAP11_ENVELOPE}}}Body").append(payload)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def soap11_fault(code: str, reason: str) -> bytes:
    """A SOAP 1.1 Fault with this faultcode and faultstring."""
    fault = etree.Element(f"{{{SOAP11_ENVELOPE}}}Fault")
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = reason
    return soap11(fault)


def ongoing_update_result(success: bool, message: str, order_id: str = "0") -> bytes:
    """Ongoing's UpdateOrderResponse with Success, Message and OrderId."""
    response = etree.Element(f"{{{ONGOING_WSI}}}UpdateOrderResponse", nsmap={None: ONGOING_WSI})
    result = etree.SubElement(response, f"{{{ONGOING_WSI}}}UpdateOrderResult")
    etree.SubElement(result, f"{{{ONGOING_WSI}}}Success").text = "true" if success else "false"
    etree.SubElement(result, f"{{{ONGOING_WSI}}}Message").text = message
    etree.SubElement(result, f"{{{ONGOING_WSI}}}OrderId").text = order_id
    return soap11(response)


def speed4trade_reports(*reports: tuple[str, str | None]) -> bytes:
    """Speed4Trade's updateOrderStatusResponse whose `return` string holds one report per (return_code, text)."""
    document = etree.Element("response", method="updateOrderStatus", version="1.0.0")
    for code, description in reports:
        report = etree.SubElement(document, "report", return_code=code)
        if description is not None:
            etree.SubElement(report, "error_description").text = description
    response = etree.Element(f"{{{SPEED4TRADE_NAMESPACE}}}updateOrderStatusResponse",
                             nsmap={"ns1": SPEED4TRADE_NAMESPACE})
    etree.SubElement(response, "return").text = etree.tostring(document, encoding="unicode")
    return soap11(response)


def sellercenter_whole_call_error(code: Any, message: str) -> str:
    """SellerCenter's ErrorResponse refusing the whole call."""
    return json.dumps({"ErrorResponse": {"Head": {"RequestAction": "UpdateOrderInformation", "ErrorType": "Sender",
                                                  "ErrorCode": code, "ErrorMessage": message}, "Body": ""}})


def sellercenter_item_errors(*items: dict) -> str:
    """SellerCenter's ErrorResponse (ErrorCode 0) listing the failed orders by Position."""
    return json.dumps({"ErrorResponse": {
        "Head": {"RequestAction": "UpdateOrderInformation", "ErrorType": "Sender", "ErrorCode": "0",
                 "ErrorMessage": "Some elements were not processed"},
        "Body": {"UpdateOrderInformation": list(items)}}})


@contextlib.contextmanager
def gunicorn_gateway(folder, max_body_bytes: int) -> Iterator[int]:
    """A gateway under gunicorn (one worker, the project's settings) whose Ongoing connection is never reached; its
    port."""
    config = folder / "gateway.toml"
    config.write_text(f"""
[gateway]
allow_anonymous = true
default_connection = "ongoing-demo"
max_body_bytes = {max_body_bytes}

[connections.ongoing-demo]
backend = "ongoing"
url = "http://127.0.0.1:{closed_port()}/ongoing/Service.asmx"
goods_owner_code = "DEMO"
username = "demo"
password = "demo-password"

[events]
database = "{folder / 'events.sqlite3'}"
queue_database = "{folder / 'queue.sqlite3'}"
""")
    port = closed_port()
    process = start_gateway(port, {**os.environ, "GATEWAY_CONFIG": str(config)}, workers=1)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process)
        yield port
    finally:
        stop(process)
