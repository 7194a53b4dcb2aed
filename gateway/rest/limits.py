"""Bounding every request body before Flask or a view reads it, chunked bodies included.

A body declared (Content-Length) or streamed (Transfer-Encoding: chunked) beyond `max_body_bytes` is not
processed: the view answers 413 `payload-too-large`. The body is read and discarded first, up to
MAX_DRAIN_FACTOR times the limit, because a client that is still writing when the server answers and closes
sees `write EPIPE` or a reset instead of the reply (Node's http, and so Postman and newman, often do); a body
longer than that is cut off with `Connection: close`. A body within the limit, chunked or not, is read here and
handed on as an ordinary body of known length, so nothing downstream reads the client's stream; one that cannot be
read (the client stopped sending, garbled chunks) is a 400, never an exception in a view.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, current_app, request

from gateway.errors import MalformedRequest, PayloadTooLarge
from gateway.safejson import parse_ascii_int

MAX_DRAIN_FACTOR = 8
_CHUNK = 65536
TOO_LARGE = "order_gateway.body_too_large"
CUT_OFF = "order_gateway.body_cut_off"
UNREADABLE = "order_gateway.body_unreadable"


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


def _drain(stream: Any, limit: int) -> bool:
    """Read and discard up to `limit` bytes; whether the stream ended within them."""
    left = limit
    while left > 0:
        part = stream.read(min(left, _CHUNK))
        if not part:
            return True
        left -= len(part)
    return not stream.read(1)


class BoundedBody:
    """WSGI middleware: every body is at most `max_body_bytes` by the time the app sees it, or it is flagged."""

    def __init__(self, app: Callable, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Bound the body, then hand the request on."""
        try:
            self._bound_body(environ)
        except Exception as error:  # the client's stream broke: whatever the server raised, it is the body's fault
            self._replace_body(environ, b"")
            environ[UNREADABLE] = f"{type(error).__name__}"
            environ[CUT_OFF] = True
        return self.app(environ, start_response)

    def _bound_body(self, environ: dict) -> None:
        stream = environ["wsgi.input"]
        declared = parse_ascii_int(environ.get("CONTENT_LENGTH") or None)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        limit, drain_limit = self.max_body_bytes, self.max_body_bytes * MAX_DRAIN_FACTOR
        if declared is not None and declared > limit:
            ended = declared <= drain_limit and _drain(stream, declared)
            self._replace_body(environ, b"")
            environ[TOO_LARGE], environ[CUT_OFF] = True, not ended
        elif declared is not None:
            self._replace_body(environ, _read(stream, declared))
        elif chunked or environ.get("wsgi.input_terminated"):
            body = _read(stream, limit + 1)
            if len(body) > limit:
                ended = _drain(stream, drain_limit)
                self._replace_body(environ, b"")
                environ[TOO_LARGE], environ[CUT_OFF] = True, not ended
            else:
                self._replace_body(environ, body)

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


def close_after_cut_off_body(response: Response) -> Response:
    """A body too long to read to its end leaves the connection unusable: close it after the reply."""
    if request.environ.get(CUT_OFF):
        response.headers["Connection"] = "close"
    return response


def init_app(app: Flask) -> None:
    """Bound bodies in front of the app and refuse flagged ones in it."""
    app.wsgi_app = BoundedBody(app.wsgi_app, app.config["GATEWAY_SETTINGS"].max_body_bytes)
    app.before_request(refuse_oversized_body)
    app.after_request(close_after_cut_off_body)
