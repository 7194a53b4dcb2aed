"""Bounding every request body before Flask or a view reads it, chunked bodies included.

A body declared (Content-Length) or streamed (Transfer-Encoding: chunked) beyond `max_body_bytes` is not
processed: the view answers 413 `payload-too-large` at once, without waiting for the body, and the connection is
closed after the reply. Between the reply and the close, what the client still sends is read and discarded, for
at most DRAIN_SECONDS and MAX_DRAIN_FACTOR times the limit: a client that is still writing when the server closes
sees `write EPIPE` or a reset instead of the reply (Node's http, and so Postman and newman, often do), while a
client that declares a body and never sends it holds a thread no longer than that. A body declared longer than
the drain allows is not read at all. A body within the limit, chunked or not, is read here and handed on as an
ordinary body of known length, so nothing downstream reads the client's stream; one that cannot be read (the
client stopped sending, garbled chunks) is a 400, never an exception in a view.
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, current_app, request

from gateway.deadlines import WATCHDOG
from gateway.errors import MalformedRequest, PayloadTooLarge
from gateway.safejson import parse_ascii_int

MAX_DRAIN_FACTOR = 8
DRAIN_SECONDS = 1.0
_CHUNK = 65536
TOO_LARGE = "order_gateway.body_too_large"
CUT_OFF = "order_gateway.body_cut_off"
UNREADABLE = "order_gateway.body_unreadable"
#: where WSGI servers put the client's socket: gunicorn, Werkzeug's development server
_CLIENT_SOCKETS = ("gunicorn.socket", "werkzeug.socket")


def _read(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes of the stream (fewer at its end)."""
    parts, left = [], limit
    while left > 0:
        part = stream.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _shut_down(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _drain_briefly(stream: Any, limit: int, sock: socket.socket | None) -> int | None:
    """Read and discard up to `limit` bytes within DRAIN_SECONDS; how many, or None when the stream broke.

    Each read waits for the client, so the watchdog shuts the socket down when the time is up: a blocked read
    returns at once, however little the client sends.
    """
    deadline = time.monotonic() + DRAIN_SECONDS
    watch = WATCHDOG.call_at(deadline, lambda: _shut_down(sock)) if sock is not None else None
    drained = 0
    try:
        while drained < limit and time.monotonic() < deadline:
            part = stream.read(min(limit - drained, _CHUNK))
            if not part:
                break
            drained += len(part)
    except Exception:  # the client's stream broke, or the watchdog cut it: whatever the server raised
        return None
    finally:
        if watch is not None:
            WATCHDOG.cancel(watch)
    return drained


def _close_after_reply(start_response: Callable) -> None:
    """Ask the server to close the connection after the reply, and to say so.

    `Connection` is a hop-by-hop header gunicorn drops from an application's reply (writing its own), so the
    header finish_reply (gateway/rest/__init__.py) sets does not reach the client there; gunicorn closes, and says
    so, when its response object, whose method start_response is, is told to. Servers that honour the header need
    nothing more.
    """
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


class _DrainAfterReply:
    """The app's reply, then, once the server has sent it, a brief drain of the body nobody read.

    WSGI servers call `close()` after writing the whole reply, so the client has its 413 before the drain
    starts. A body not drained to its end leaves the connection unusable: the socket is shut down, so whatever
    the server does next, nothing the client sent is taken for a next request.
    """

    def __init__(self, reply: Iterable[bytes], stream: Any, expected: int | None, limit: int,
                 sock: socket.socket | None) -> None:
        self.reply, self.stream, self.expected, self.limit, self.sock = reply, stream, expected, limit, sock

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.reply)

    def close(self) -> None:
        """Close the app's reply, then drain."""
        try:
            close = getattr(self.reply, "close", None)
            if close is not None:
                close()
        finally:
            drained = _drain_briefly(self.stream, self.limit, self.sock)
            # a declared body ends at its length; a chunked one ended if it did so before the limit
            ended = drained is not None and (drained == self.expected if self.expected is not None
                                             else drained < self.limit)
            if not ended:
                _shut_down(self.sock)


class BoundedBody:
    """WSGI middleware: every body is at most `max_body_bytes` by the time the app sees it, or it is flagged."""

    def __init__(self, app: Callable, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Bound the body, then hand the request on; a body too large is drained briefly after the reply."""
        stream = environ["wsgi.input"]
        try:
            leftover = self._bound_body(environ)
        except Exception as error:  # the client's stream broke: whatever the server raised, it is the body's fault
            self._replace_body(environ, b"")
            environ[UNREADABLE] = f"{type(error).__name__}"
            environ[CUT_OFF] = True
            leftover = None
        if environ.get(CUT_OFF):
            _close_after_reply(start_response)
        reply = self.app(environ, start_response)
        if leftover is None:
            return reply
        expected, limit = leftover
        sock = next((environ[name] for name in _CLIENT_SOCKETS if name in environ), None)
        return _DrainAfterReply(reply, stream, expected, limit, sock)

    def _bound_body(self, environ: dict) -> tuple[int | None, int] | None:
        """Replace the body by what the app may read; for a body too large to process but worth draining after
        the reply, (its declared length or None when chunked, how much at most to drain)."""
        stream = environ["wsgi.input"]
        declared = parse_ascii_int(environ.get("CONTENT_LENGTH") or None)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        limit, drain_limit = self.max_body_bytes, self.max_body_bytes * MAX_DRAIN_FACTOR
        if declared is not None and declared > limit:
            self._refuse(environ)
            return (declared, declared) if declared <= drain_limit else None
        if declared is not None:
            self._replace_body(environ, _read(stream, declared))
        elif chunked or environ.get("wsgi.input_terminated"):
            body = _read(stream, limit + 1)
            if len(body) > limit:
                self._refuse(environ)
                return None, drain_limit
            self._replace_body(environ, body)
        return None

    def _refuse(self, environ: dict) -> None:
        """Flag the body as too large, and the connection as one to close after the reply."""
        self._replace_body(environ, b"")
        environ[TOO_LARGE] = environ[CUT_OFF] = True

    @staticmethod
    def _replace_body(environ: dict, body: bytes) -> None:
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)


def refuse_oversized_body() -> None:
    """413 for a body BoundedBody flagged too large, 400 for one it could not read, whatever the route."""
    if request.environ.get(UNREADABLE):
        raise MalformedRequest(f"The body could not be read to its end ({request.environ[UNREADABLE]}).")
    if request.environ.get(TOO_LARGE):
        raise PayloadTooLarge(
            f"The body is larger than the {current_app.config['GATEWAY_SETTINGS'].max_body_bytes} bytes this "
            "gateway accepts.")


def init_app(app: Flask) -> None:
    """Bound bodies in front of the app (the app refuses flagged ones when each request begins, and closes the
    connection after the reply to one cut off: gateway/rest/__init__.py)."""
    app.wsgi_app = BoundedBody(app.wsgi_app, app.config["GATEWAY_SETTINGS"].max_body_bytes)
