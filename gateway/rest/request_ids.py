"""Request ids: taken from X-Request-ID when it is sane, otherwise made; echoed on every reply, and the first of
the request's log fields (gateway.logs), which its access log line carries too."""

from __future__ import annotations

import re
import uuid

from flask import Response, g, request

from gateway import logs, tracing

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def current_request_id() -> str:
    """The id of the request being served."""
    request_id = g.get("request_id")
    if request_id is None:
        given = request.headers.get(HEADER, "")
        request_id = g.request_id = given if _ACCEPTABLE.fullmatch(given) else uuid.uuid4().hex
    return request_id


def echo_request_id(response: Response) -> Response:
    """The reply with the request's id on it."""
    response.headers[HEADER] = current_request_id()
    return response


def start_request_log() -> None:
    """Begin the request's log fields (records made while serving it carry them; so does its access line)."""
    request.environ[logs.ENVIRON_KEY] = logs.start_request(request_id=current_request_id(),
                                                           trace_id=tracing.current_trace_id())


def end_request_log(error: BaseException | None = None) -> None:
    """Forget the request's log fields once it is answered."""
    logs.end_request()
