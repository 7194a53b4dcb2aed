"""Request ids: taken from X-Request-ID when it is sane, otherwise made; echoed on every reply."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def current_request_id() -> str:
    """The id of the request being served."""
    request_id = g.get("request_id")
    if request_id is None:
        given = request.headers.get(HEADER, "")
        request_id = g.request_id = given if _ACCEPTABLE.fullmatch(given) else uuid.uuid4().hex
    return request_id


def _echo_request_id(response: Response) -> Response:
    response.headers[HEADER] = current_request_id()
    return response


def init_app(app: Flask) -> None:
    """Make every reply carry the request id."""
    app.after_request(_echo_request_id)
