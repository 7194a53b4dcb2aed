"""The webhook intake's lower bound, for the event pipeline benchmark: a WSGI app that accepts without storing.

`POST <any path>` reads the body, ignores it and answers 202 with a JSON body the size and shape of the
gateway's webhook reply: no authentication, no validation, no store, no queue. Served by gunicorn with the
gateway's own settings (`config/gunicorn.py`), so what the gateway takes beyond it is its own work.
"""

from __future__ import annotations

import json
from typing import Any

#: shaped like the gateway's reply to a new webhook (an event id, its type, the subscribers it is queued for)
ACCEPTED = json.dumps({"id": "evt_00000000000000000000000000", "type": "order.status_changed",
                       "duplicate": False, "subscribers": ["demo"]}).encode("utf-8")


def app(environ: dict, start_response: Any) -> list[bytes]:
    """Answer GET with a liveness line; read any other request's body and answer 202."""
    if environ["REQUEST_METHOD"] == "GET":
        body = b"accept\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(ACCEPTED)))])
    return [ACCEPTED]
