"""The webhook intake's lower bound, for the event pipeline benchmark: a WSGI app that accepts without storing.

`POST <any path>` reads the body, ignores it and answers 202 with a JSON body the size and shape of the
gateway's webhook reply: no authentication, no validation, no store, no queue. Served by gunicorn with the
gateway's own settings (`config/gunicorn.py`), so what the gateway takes beyond it is its own work.

config/gunicorn.py's `on_starting` sizes the open-files limit from the served app's `config["GATEWAY_SETTINGS"]`;
`hook_config()` gives a baseline app the gateway's settings from the file GATEWAY_CONFIG names, so it starts with
the same limit as the gateway beside it (the passthrough app uses it too).
"""

from __future__ import annotations

import json
import os
from typing import Any

#: shaped like the gateway's reply to a new webhook (an event id, its type, the subscribers it is queued for)
ACCEPTED = json.dumps({"id": "evt_00000000000000000000000000", "type": "order.status_changed",
                       "duplicate": False, "subscribers": ["demo"]}).encode("utf-8")


def hook_config() -> dict[str, Any]:
    """What config/gunicorn.py's hooks read of a served app: the gateway's settings (from GATEWAY_CONFIG, when
    set; the hooks refuse to start without them)."""
    if "GATEWAY_CONFIG" not in os.environ:
        return {}
    from gateway.backends import BACKENDS
    from gateway.config import read_configured_settings

    return {"GATEWAY_SETTINGS": read_configured_settings(BACKENDS)}


class AcceptApp:
    """Answers GET with a liveness line; reads any other request's body and answers 202."""

    def __init__(self) -> None:
        self.config = hook_config()

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        """Answer GET with a liveness line; read any other request's body and answer 202."""
        if environ["REQUEST_METHOD"] == "GET":
            body = b"accept\n"
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("202 Accepted", [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(ACCEPTED)))])
        return [ACCEPTED]


app = AcceptApp()
