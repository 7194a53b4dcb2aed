"""Request ids: taken from X-Request-ID when it is sane, otherwise made; echoed on every reply, and the first of
the request's log fields (gateway.logs), which its access log line carries too."""

from __future__ import annotations

import re
import uuid

from flask import g, request

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def current_request_id() -> str:
    """The id of the request being served."""
    request_id = g.get("request_id")
    if request_id is None:
        given = request.headers.get(HEADER, "")
        request_id = g.request_id = given if _ACCEPTABLE.fullmatch(given) else uuid.uuid4().hex
    return request_id


