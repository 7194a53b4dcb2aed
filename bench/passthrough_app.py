"""The gateway's lower bound, for the load benchmark: a WSGI app that forwards pre-rendered documents.

At start it renders, with the gateway's own connections of the configuration GATEWAY_CONFIG names, the request of
every repeatable update (bench/workload.py). `PATCH /<backend>/<order id>` then reads (and ignores) the body,
sends that order's request to the backend with one pooled requests session and the connection's transport-level
authentication (`Connection.auth`, signed per request), and answers with the backend's reply as it came: no
validation, no translation, no normalization. A connection with a call lock (`Connection.lock_name`: Ongoing's
one goods owner's calls one after another) sends under the gateway's file lock (`FileCallLocks`, in
BENCH_LOCK_FOLDER), shared by the app's workers, so the passthrough is the bound of a gateway that keeps the rule.
Served by gunicorn with the gateway's settings (`config/gunicorn.py`), whose hooks read the app's `config`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from bench.accept_app import hook_config
from bench.workload import REPEATABLE, rendered_request
from gateway.backends import BACKENDS
from gateway.connections import Connection
from gateway.coordination.locks import FileCallLocks, LockTimeout

TIMEOUT = (3.05, 30.0)


class PassthroughApp:
    """Forwards a pre-rendered request per order and answers with the backend's reply."""

    def __init__(self) -> None:
        #: the gateway's settings, for config/gunicorn.py's hooks (the open-files limit is sized from them)
        self.config = hook_config()
        settings = self.config["GATEWAY_SETTINGS"]
        self.connections = {kind: Connection(settings.connections[workload.connection], BACKENDS[kind])
                            for kind, workload in REPEATABLE.items()}
        self.routes = {(kind, order_id): (rendered_request(self.connections[kind], workload, index),
                                          self.connections[kind])
                       for kind, workload in REPEATABLE.items() for index, order_id in enumerate(workload.order_ids)}
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=10, max_retries=0))
        self.locks = FileCallLocks(os.environ.get("BENCH_LOCK_FOLDER") or tempfile.mkdtemp(prefix="passthrough-"))

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        """Answer GET with a liveness line; forward PATCH /<backend>/<order id>."""
        if environ["REQUEST_METHOD"] == "GET":
            return self._answer(start_response, "200 OK", "text/plain", b"passthrough\n")
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        kind, _, order_id = environ.get("PATH_INFO", "").strip("/").partition("/")
        route = self.routes.get((kind, order_id))
        if route is None:
            return self._answer(start_response, "404 Not Found", "text/plain", b"no pre-rendered document\n")
        request, connection = route
        try:
            if connection.lock_name is None:
                reply = self._forward(request, connection)
            else:
                with self.locks.hold(connection.lock_name, timeout=TIMEOUT[1]):
                    reply = self._forward(request, connection)
        except (requests.RequestException, LockTimeout) as error:
            return self._answer(start_response, "502 Bad Gateway", "text/plain", f"{error}\n".encode())
        status = f"{reply.status_code} {reply.reason or ''}".strip()
        return self._answer(start_response, status, reply.headers.get("Content-Type", "text/plain"), reply.content)

    def _forward(self, request: Any, connection: Connection) -> requests.Response:
        return self.session.request(request.method, request.url, headers=dict(request.headers), data=request.body,
                                    auth=connection.auth, timeout=TIMEOUT, allow_redirects=False)

    @staticmethod
    def _answer(start_response: Any, status: str, content_type: str, body: bytes) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


def create_app() -> PassthroughApp:
    """The app, for gunicorn (`bench.passthrough_app:create_app()`)."""
    return PassthroughApp()
