"""The servers a benchmark runs against: the sandboxes, the gateway and the passthrough app under gunicorn.

Every server gets a free 127.0.0.1 port and its own process group; `running_deployment` stops them all (and
waits for their ports to close) whatever happens inside its block.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from bench.workload import (
    REPEATABLE,
    ROOT,
    SERVICE_PATHS,
    configured_connections,
    environment_without_backend_urls,
    rendered_request,
    sandbox_urls,
    write_config_copy,
)

GUNICORN = Path(sys.executable).parent / "gunicorn"
SANDBOX_THREADS = 8


def free_port() -> int:
    """A 127.0.0.1 port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    """A gunicorn server started by the benchmark."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The pids of gunicorn's worker processes."""
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def workers_cpu(self) -> float:
        """Seconds of CPU (user + system) gunicorn's worker processes have spent so far, threads included."""
        spent = 0.0
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = child.cpu_times()
                spent += times.user + times.system
        return spent

    def wait_until_serving(self, path: str, seconds: float = 30.0) -> None:
        """Poll `path` until the server answers; fail with the end of its log if it exits or never answers."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.ConnectionError):
                requests.get(self.url + path, timeout=1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer on port {self.port} within {seconds} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The last lines of the server's output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers, and wait until the port is closed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while port_is_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)


def start_gunicorn(name: str, arguments: list[str], env: dict[str, str], folder: Path) -> Server:
    """Start gunicorn in its own process group on a free port, its output in `folder`/<name>.log."""
    port = free_port()
    log = folder / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(  # noqa: S603 - our own gunicorn with our own arguments
            [str(GUNICORN), "--bind", f"127.0.0.1:{port}", *arguments], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Server(name, port, process, log)


@dataclass
class Deployment:
    """A sandbox, the gateway and (optionally) the passthrough app, all on free ports."""

    folder: Path
    sandbox: Server
    gateway: Server
    passthrough: Server | None = None
    #: the pre-rendered requests the passthrough app forwards and direct calls send (see passthrough_app.py)
    documents: Path | None = None

    def reset_sandboxes(self) -> None:
        """Reload every simulator's demo data."""
        for backend in SERVICE_PATHS:
            reset = f"{self.sandbox.url}/{backend}/_reset"
            reply = requests.post(reset, timeout=10)
            if reply.status_code >= 300:
                raise RuntimeError(f"{reset} answered {reply.status_code}")


def write_passthrough_documents(sandbox_url: str, folder: Path) -> Path:
    """The pre-rendered request of every repeatable update, as the passthrough app and direct calls send it."""
    connections = configured_connections(sandbox_url, folder)
    documents = {}
    for name, workload in REPEATABLE.items():
        connection = connections[name]
        documents[name] = {
            "auth": backend_auth_description(connection),
            "orders": {order_id: _describe(rendered_request(connection, workload, index))
                       for index, order_id in enumerate(workload.order_ids)},
        }
        connection.close()
    path = folder / "passthrough-documents.json"
    path.write_text(json.dumps(documents))
    return path


def backend_auth_description(connection) -> dict:
    """How the connection authenticates at the transport level, for the passthrough app to do the same."""
    if connection.kind == "speed4trade":
        return {"basic": [connection.settings.username, connection.settings.password.reveal()]}
    if connection.kind == "sellercenter":
        return {"sellercenter_api_key": connection.settings.options["api_key"].reveal()}
    return {}


def _describe(request) -> dict:
    return {"method": request.method, "url": request.url, "headers": dict(request.headers),
            "body": request.body.decode("utf-8")}


@contextlib.contextmanager
def running_deployment(*, gateway_workers: int, with_passthrough: bool) -> Iterator[Deployment]:
    """Start the sandboxes, the gateway (and the passthrough app); stop every one of them on the way out."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        folder = Path(scratch)
        started: list[Server] = []
        try:
            # The direct calls of section 2 come from many connections at once, which Ongoing (and its sandbox)
            # would refuse for one goods owner: the benchmark's sandbox serves them (the gateway and the
            # passthrough still send Ongoing one call at a time).
            env = {**environment_without_backend_urls(), "SANDBOX_ONGOING_REFUSE_OVERLAPPING_CALLS": "false"}
            sandbox = start_gunicorn("sandbox", ["--no-control-socket", "--workers", "1", "--threads",
                                                 str(SANDBOX_THREADS), "sandbox:create_app()"], env, folder)
            started.append(sandbox)
            sandbox.wait_until_serving("/ongoing/orders")
            env = {**env, **sandbox_urls(sandbox.url), "GATEWAY_CONFIG": str(write_config_copy(folder))}
            gateway_arguments = ["--config", "config/gunicorn.py", "--workers", str(gateway_workers)]
            gateway = start_gunicorn("gateway", [*gateway_arguments, "wsgi:app"], env, folder)
            started.append(gateway)
            passthrough = documents = None
            if with_passthrough:
                documents = write_passthrough_documents(sandbox.url, folder)
                env["BENCH_PASSTHROUGH_DOCUMENTS"] = str(documents)
                passthrough = start_gunicorn("passthrough", [*gateway_arguments, "bench.passthrough_app:app"],
                                             env, folder)
                started.append(passthrough)
            gateway.wait_until_serving("/openapi.json")
            if passthrough is not None:
                passthrough.wait_until_serving("/")
            yield Deployment(folder, sandbox, gateway, passthrough, documents)
        finally:
            for server in reversed(started):
                server.stop()
