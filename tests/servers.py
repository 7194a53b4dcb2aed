"""Real HTTP servers on 127.0.0.1 for the tests: any WSGI app in a thread, and scripted fake backends."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@contextlib.contextmanager
def serve_wsgi(app, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve `app` on an ephemeral 127.0.0.1 port for the duration of the block (over TLS with `ssl_context`);
    yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class ScriptedBackend:
    """A fake backend that answers every request the same way, and records what it received."""

    def __init__(self, body: bytes = b"", status: int = 200, content_type: str = "text/xml; charset=utf-8",
                 delay: float = 0.0) -> None:
        self.body, self.status, self.content_type, self.delay = body, status, content_type, delay
        self.requests: list[tuple[dict, bytes]] = []
        self.client_ports: list[int] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.requests.append((dict(request.headers), request.get_data()))
        self.client_ports.append(int(environ["REMOTE_PORT"]))
        if self.delay:
            time.sleep(self.delay)
        return Response(self.body, status=self.status, content_type=self.content_type)(environ, start_response)


class RecordingMiddleware:
    """Wraps a WSGI app (a sandbox), recording every POST's body and headers; `fail_when(body)` may answer instead."""

    def __init__(self, app, fail_when=None) -> None:
        self.app, self.fail_when = app, fail_when
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        if request.method == "POST":
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            if self.fail_when is not None and self.fail_when(body):
                return Response("<html>Bad Gateway</html>", status=502, content_type="text/html")(
                    environ, start_response)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    def sent(self, text: str) -> bool:
        """Whether any recorded request body contains `text`."""
        return any(text.encode() in body for body in self.bodies)


#: closed_port's ports lie below the kernel's ephemeral range (32768-60999 by default, where bind(0) and outgoing
#: connections take theirs), in a block of this process's own: under pytest-xdist each worker (PYTEST_XDIST_WORKER
#: gw0, gw1, ...) has its own, so two workers never hand out one port between picking it and a server binding it
FIRST_PORT, PORTS_PER_PROCESS, LAST_PORT = 10_000, 1_000, 32_767
_ports: Iterator[int] | None = None
_ports_lock = threading.Lock()


def port_block(worker: str | None) -> range:
    """The ports closed_port hands out in the pytest process `worker` names (None: a run without workers); empty
    for a worker number past the block below the ephemeral range."""
    number = int(worker[2:]) + 1 if worker and worker.startswith("gw") and worker[2:].isdigit() else 0
    start = FIRST_PORT + number * PORTS_PER_PROCESS
    return range(start, min(start + PORTS_PER_PROCESS, LAST_PORT + 1))


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections to it are refused), from this process's block; each call a
    different one until the block has gone round (from a random start: two runs at once rarely meet)."""
    global _ports
    with _ports_lock:
        if _ports is None:
            block = port_block(os.environ.get("PYTEST_XDIST_WORKER"))
            start = random.randrange(len(block)) if block else 0
            _ports = itertools.cycle([*block[start:], *block[:start]])
        for port in itertools.islice(_ports, PORTS_PER_PROCESS):
            # no SO_REUSEADDR: a port that any socket still holds (listening, connected, TIME_WAIT) is passed over
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    with socket.socket() as probe:  # the block is all taken (or there is none): a port of the kernel's choice
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_keep_alive(body: bytes) -> Iterator[tuple[str, list[int]]]:
    """An HTTP/1.1 keep-alive server (werkzeug's always closes); yields its URL and the client ports seen."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ports: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", ports
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
