"""Oversized bodies against the deployed shape (gunicorn with config/gunicorn.py): chunked bodies are bounded like
declared ones, and a 413 is answered only after the body was read, so a client that writes first and reads
afterwards gets the problem document instead of a broken connection."""

from __future__ import annotations

import json

import pytest

from tests.hostile.conftest import chunked, gunicorn_gateway, read_while_sending, send_then_read

MAX_BODY_BYTES = 4_194_304  # the default, as config/sandbox.toml states it
DOCUMENT = json.dumps({"status": "released", "waybill": "WB-1"}).encode()


def padded(size: int) -> bytes:
    """The valid document followed by spaces (insignificant JSON whitespace), `size` bytes in all."""
    return DOCUMENT + b" " * (size - len(DOCUMENT))


@pytest.fixture(scope="module")
def gunicorn_port(tmp_path_factory):
    """A gateway under gunicorn (one worker, the project's settings) whose Ongoing connection is never reached."""
    with gunicorn_gateway(tmp_path_factory.mktemp("gunicorn-gateway"), MAX_BODY_BYTES) as port:
        yield port


def request_head(*, length: int | None = None, path: str = "/orders/SO-1001?dry_run=true") -> bytes:
    """The request line and headers of a JSON PATCH, with a Content-Length or chunked."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{framing}\r\nConnection: close\r\n\r\n").encode()


def test_a_small_chunked_body_is_read_and_processed(gunicorn_port):
    reply = read_while_sending(gunicorn_port, request_head(), chunked(padded(10_000), size=1000))
    assert reply.status == 200, reply.body[:2000]
    assert json.loads(reply.body)["dry_run"] is True


def test_a_chunked_body_over_max_body_bytes_is_413_and_not_processed(gunicorn_port):
    reply = read_while_sending(gunicorn_port, request_head(), chunked(padded(5_000_000)))
    problem = reply.problem(413, "payload-too-large")
    assert str(MAX_BODY_BYTES) in problem["detail"]


def test_a_declared_body_over_max_body_bytes_is_413(gunicorn_port):
    reply = read_while_sending(gunicorn_port, request_head(length=5_000_000), [padded(5_000_000)])
    reply.problem(413, "payload-too-large")


def test_a_client_that_writes_the_whole_body_first_still_reads_the_413(gunicorn_port):
    body = padded(6_000_000)
    reply = send_then_read(gunicorn_port, request_head(length=len(body), path="/orders/SO-1001"),
                           [body[start:start + 65536] for start in range(0, len(body), 65536)])
    problem = reply.problem(413, "payload-too-large")
    assert str(MAX_BODY_BYTES) in problem["detail"]

