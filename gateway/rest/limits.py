"""Bounding every request body before Flask or a view reads it, chunked bodies included.

A body declared (Content-Length) or streamed (Transfer-Encoding: chunked) beyond `max_body_bytes` is not
processed: the view answers 413 `payload-too-large`. The body is read and discarded first, up to
MAX_DRAIN_FACTOR times the limit, because a client that is still writing when the server answers and closes
sees `write EPIPE` or a reset instead of the reply (Node's http, and so Postman and newman, often do); a body
longer than that is cut off with `Connection: close`. A chunked body within the limit is handed on as an
ordinary body of known length, so nothing downstream reads an unbounded stream.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, current_app, request

from gateway.errors import PayloadTooLarge
from gateway.safejson import parse_ascii_int

MAX_DRAIN_FACTOR = 8
_CHUNK = 65536
TOO_LARGE = "order_gateway.body_too_large"
CUT_OFF = "order_gateway.body_cut_off"


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
        stream = environ["wsgi.input"]
        declared = parse_ascii_int(environ.get("CONTENT_LENGTH") or None)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        limit, drain_limit = self.max_body_bytes, self.max_body_bytes * MAX_DRAIN_FACTOR
        if declared is not None and declared > limit:
            self._refuse(environ, ended=declared <= drain_limit and _drain(stream, declared))
        elif declared is None and (chunked or environ.get("wsgi.input_terminated")):
            body = _read(stream, limit + 1)
            if len(body) > limit:
                self._refuse(environ, ended=_drain(stream, drain_limit))
            else:
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(environ: dict, *, ended: bool) -> None:
        environ["wsgi.input"] = io.BytesIO(b"")
        environ["CONTENT_LENGTH"] = "0"
        environ[TOO_LARGE] = True
        environ[CUT_OFF] = not ended


def refuse_oversized_body() -> None:
    """413 for a body BoundedBody flagged, whatever the route."""
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
