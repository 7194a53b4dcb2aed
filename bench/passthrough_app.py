"""The gateway's lower bound, for the load benchmark: a WSGI app that forwards pre-rendered documents.

`PATCH /<backend>/<order id>` reads (and ignores) the body, sends the pre-rendered request for that order to the
sandbox with one pooled requests session, and returns the sandbox's reply as it came: no validation, no
translation, no normalization. Served by gunicorn with the gateway's own settings (`config/gunicorn.py`); the
documents come from the JSON file named by BENCH_PASSTHROUGH_DOCUMENTS (written by bench/servers.py).

Ongoing serves one goods owner's calls one after another, so its calls are sent one at a time, as the gateway
sends them: under a lock file beside the documents, shared by the app's workers — the gateway's own file call
lock (`FileCallLocks`, flock on one descriptor per lock name in each process, opened again after gunicorn forks
its workers).
The passthrough is then the bound of a gateway that keeps Ongoing's rule. Its `config` holds the gateway's settings
(from GATEWAY_CONFIG, the gateway's own file) for config/gunicorn.py's hooks, which size the open-files limit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth

from bench.accept_app import hook_config
from gateway.backends.sellercenter.signing import SellerCenterSignature
from gateway.coordination.locks import FileCallLocks, LockTimeout

TIMEOUT = (3.05, 30.0)
#: backends whose calls go one at a time (Ongoing: per goods owner; the benchmark uses one)
ONE_CALL_AT_A_TIME = frozenset({"ongoing"})


def transport_auth(description: dict) -> requests.auth.AuthBase | None:
    """The transport-level authentication a backend needs: HTTP Basic, SellerCenter's signature, or none."""
    if "basic" in description:
        return HTTPBasicAuth(*description["basic"])
    if "sellercenter_api_key" in description:
        return SellerCenterSignature(description["sellercenter_api_key"])
    return None


def pooled_session() -> requests.Session:
    """One keep-alive session, pooled as the gateway's transport pools its connections."""
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=10, max_retries=0)
    session.mount("http://", adapter)
    return session


class PassthroughApp:
    """Forwards a pre-rendered request per order and answers with the backend's reply."""

    def __init__(self, documents: dict[str, Any], lock_folder: str | None = None) -> None:
        self.routes = {
            (backend, order_id): (request, transport_auth(entry["auth"]))
            for backend, entry in documents.items()
            for order_id, request in entry["orders"].items()
        }
        for request, _ in self.routes.values():
            request["body"] = request["body"].encode("utf-8")
        self.session = pooled_session()
        self.locks = FileCallLocks(lock_folder) if lock_folder is not None else None
        #: the gateway's settings, for config/gunicorn.py's hooks (the open-files limit is sized from them)
        self.config = hook_config()

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        """Answer GET with a liveness line; forward PATCH /<backend>/<order id>."""
        path = environ.get("PATH_INFO", "").strip("/")
        if environ["REQUEST_METHOD"] == "GET":
            return self._answer(start_response, "200 OK", "text/plain", b"passthrough\n")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        backend, _, order_id = path.partition("/")
        route = self.routes.get((backend, order_id))
        if route is None:
            return self._answer(start_response, "404 Not Found", "text/plain", b"no pre-rendered document\n")
        request, auth = route
        try:
            if self.locks is None or backend not in ONE_CALL_AT_A_TIME:
                reply = self._forward(request, auth)
            else:
                with self.locks.hold(backend, timeout=TIMEOUT[1]):
                    reply = self._forward(request, auth)
        except (requests.RequestException, LockTimeout) as error:
            return self._answer(start_response, "502 Bad Gateway", "text/plain", f"{error}\n".encode())
        status = f"{reply.status_code} {reply.reason or ''}".strip()
        return self._answer(start_response, status, reply.headers.get("Content-Type", "text/plain"), reply.content)

    def _forward(self, request: dict, auth: Any) -> requests.Response:
        return self.session.request(request["method"], request["url"], headers=request["headers"],
                                    data=request["body"], auth=auth, timeout=TIMEOUT, allow_redirects=False)

    @staticmethod
    def _answer(start_response: Any, status: str, content_type: str, body: bytes) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


def create_app() -> PassthroughApp:
    """The app with the documents named by BENCH_PASSTHROUGH_DOCUMENTS."""
    documents = os.environ["BENCH_PASSTHROUGH_DOCUMENTS"]
    with open(documents, encoding="utf-8") as handle:
        return PassthroughApp(json.load(handle), lock_folder=os.path.dirname(os.path.abspath(documents)))


app = create_app() if "BENCH_PASSTHROUGH_DOCUMENTS" in os.environ else None
