"""Faults between the gateway and its peers: a backend's redirect is a 502 naming it and never followed, a reply
that drips its body after `Connection: close` is cut at call_timeout, and a caller that declares an oversized body
and never sends it is answered 413 at once, on a connection the gateway then closes."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests
from werkzeug.wrappers import Request, Response

from gateway.deadlines import Deadline
from gateway.transport import HttpTransport, OutboundRequest
from tests.conftest import gateway_config
from tests.hostile.conftest import (
    CONNECTION_TABLES,
    DRIP_FRAMINGS,
    SERVICE_PATHS,
    assert_problem,
    gunicorn_gateway,
    parse_http_reply,
    send_valid_update,
)
from tests.servers import serve_wsgi

# --- a backend answering with a redirect ---------------------------------------------------------------------


class RecordingTarget:
    """Where a redirect points: records every request that arrives (none should)."""

    def __init__(self) -> None:
        self.hits = 0

    def __call__(self, environ, start_response):
        self.hits += 1
        return Response(b"followed", status=200, content_type="text/plain")(environ, start_response)


class RedirectingBackend:
    """Answers every request with `status` and a Location carrying credentials, a query and a fragment."""

    def __init__(self, status: int, location: str) -> None:
        self.status, self.location = status, location
        self.requests = 0

    def __call__(self, environ, start_response):
        Request(environ).get_data()
        self.requests += 1
        return Response(b"<html>moved</html>", status=self.status, content_type="text/html",
                        headers={"Location": self.location})(environ, start_response)


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("kind", ["ongoing", "sellercenter"])
def test_a_redirect_is_a_502_naming_it_and_is_never_followed(make_gateway, kind, status):
    target = RecordingTarget()
    with serve_wsgi(target) as target_url:
        host_and_port = target_url.removeprefix("http://")
        location = f"http://login-name:redirect-secret@{host_and_port}/moved/here?token=query-secret#fragment-part"
        backend = RedirectingBackend(status, location)
        with serve_wsgi(backend) as backend_url:
            connection = CONNECTION_TABLES[kind](backend_url + SERVICE_PATHS[kind])
            client = make_gateway(gateway_config(hostile=connection)).test_client()
            reply = send_valid_update(client, kind)
    problem = assert_problem(reply, 502, "backend-failure")
    detail = problem["detail"]
    assert f"HTTP {status}" in detail and f"{host_and_port}/moved/here" in detail, detail
    for hidden in ("login-name", "redirect-secret", "token", "query-secret", "fragment-part"):
        assert hidden not in json.dumps(problem), problem
    assert problem["backend"]["code"] == f"HTTP {status}"
    assert backend.requests == 1
    assert target.hits == 0


class NotesTheStatus(requests.auth.AuthBase):
    """An authentication that watches each reply's status through a response hook."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.register_hook("response", lambda response, **kwargs: self.statuses.append(response.status_code))
        return request


def test_the_transport_hands_a_redirect_back_unfollowed_through_the_authentications_hooks():
    target = RecordingTarget()
    with serve_wsgi(target) as target_url:
        backend = RedirectingBackend(307, target_url + "/elsewhere")
        with serve_wsgi(backend) as backend_url:
            auth = NotesTheStatus()
            transport = HttpTransport(connection="demo", connect_timeout=1, read_timeout=1, max_reply_bytes=1024,
                                      auth=auth)
            try:
                reply = transport.send(OutboundRequest("POST", backend_url + "/", {"Content-Type": "text/xml"},
                                                       b"<x/>"), Deadline.after(2, "call_timeout 2 s"))
            finally:
                transport.close()
    assert reply.status == 307 and reply.body == b"<html>moved</html>"
    assert auth.statuses == [307]
    assert backend.requests == 1 and target.hits == 0


# --- a backend dripping its body after `Connection: close` ---------------------------------------------------

@pytest.mark.parametrize("framing", list(DRIP_FRAMINGS))
def test_a_body_dripping_after_connection_close_is_cut_at_call_timeout(make_gateway, misbehaving_server, framing):
    call_timeout = 1.0
    backend = misbehaving_server(f"drip-{framing}")
    url = f"http://127.0.0.1:{backend.port}{SERVICE_PATHS['ongoing']}"
    connection = CONNECTION_TABLES["ongoing"](url, read_timeout=0.5, call_timeout=call_timeout)
    client = make_gateway(gateway_config(hostile=connection)).test_client()
    started = time.monotonic()
    reply = send_valid_update(client, "ongoing")
    took = time.monotonic() - started
    problem = assert_problem(reply, 504, "backend-timeout")
    assert "call_timeout 1 s" in problem["detail"], problem["detail"]
    assert took < call_timeout + 1, f"answered after {took:.2f} s"


# --- a caller declaring an oversized body and never sending it ---------------------------------------------

MAX_BODY_BYTES = 65_536


@pytest.fixture(scope="module")
def gunicorn_port(tmp_path_factory):
    """A gateway under gunicorn (one worker, the project's settings) whose Ongoing connection is never reached."""
    with gunicorn_gateway(tmp_path_factory.mktemp("gunicorn-gateway-faults"), MAX_BODY_BYTES) as port:
        yield port


# within the bound the gateway drains after answering, and far beyond it
@pytest.mark.parametrize("declared", [2 * MAX_BODY_BYTES, 10_000_000])
def test_a_declared_oversized_body_never_sent_is_413_at_once_and_the_connection_closed(gunicorn_port, declared):
    head = (f"PATCH /orders/SO-1001 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    data, started = b"", time.monotonic()
    with socket.create_connection(("127.0.0.1", gunicorn_port), timeout=3) as connection:
        connection.sendall(head)
        try:
            while chunk := connection.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"the connection was still open after 3 s, having received {data[:300]!r}") \
                from None
    took = time.monotonic() - started
    reply = parse_http_reply(data)
    problem = reply.problem(413, "payload-too-large")
    assert str(MAX_BODY_BYTES) in problem["detail"]
    assert reply.headers.get("connection", "").lower() == "close", reply.headers
    assert took < 2, f"the reply and the close took {took:.2f} s"
