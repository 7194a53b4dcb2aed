"""Every server a benchmark starts: the sandboxes, the gateway and the baselines under gunicorn, redis-server, and
the gateway's event worker.

Every server gets a free 127.0.0.1 port and its own process group (the worker, which serves no port, its own process
group too); the context managers stop what they started (and wait for its port to close) whatever happens inside
their block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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
import redis
import requests

from bench.workload import ROOT, SANDBOX, environment_without_backend_urls, sandbox_urls, write_config_copy

GUNICORN = Path(sys.executable).parent / "gunicorn"
SANDBOX_THREADS = 8
REDIS_STARTUP_SECONDS = 10.0


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
    """A process started by the benchmark, serving on 127.0.0.1:`port`."""

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
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:]) if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers, and wait until the port is closed."""
        stop_process_group(self.process)
        deadline = time.monotonic() + 10
        while port_is_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process's group, SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start_server(name: str, command: list[str], env: dict[str, str] | None, folder: Path, port: int) -> Server:
    """Start `command` in its own process group, its output in `folder`/<name>.log."""
    log = folder / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,  # noqa: S603 - ours
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, port, process, log)


def start_gunicorn(name: str, arguments: list[str], env: dict[str, str], folder: Path) -> Server:
    """gunicorn with `arguments` on a free port."""
    port = free_port()
    return start_server(name, [str(GUNICORN), "--bind", f"127.0.0.1:{port}", *arguments], env, folder, port)


def gunicorn_like_the_gateway(name: str, app: str, workers: int, env: dict[str, str], folder: Path) -> Server:
    """`app` under the gateway's own gunicorn settings (config/gunicorn.py) with `workers` workers."""
    return start_gunicorn(name, ["--config", "config/gunicorn.py", "--workers", str(workers), app], env, folder)


def answers_ping(url: str) -> bool:
    """Whether a Redis at `url` answers PING right now."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def running_redis(folder: Path) -> Iterator[tuple[str | None, str]]:
    """(url, "") of a redis-server without persistence on a free port, or (None, why there is none)."""
    executable = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if executable is None:
        yield None, "redis-server is not installed (apt-get install redis-server)"
        return
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_server("redis", [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(folder)], None, folder, port)
    try:
        deadline = time.monotonic() + REDIS_STARTUP_SECONDS
        while server.process.poll() is None and time.monotonic() < deadline and not answers_ping(url):
            time.sleep(0.05)
        if answers_ping(url):
            yield url, ""
        else:
            yield None, f"redis-server did not start: {server.log_tail()[-300:]}"
    finally:
        server.stop()


@dataclass
class Deployment:
    """A sandbox, the gateway and (optionally) the passthrough app, all on free ports."""

    folder: Path
    sandbox: Server
    gateway: Server
    passthrough: Server | None = None

    def reset_sandboxes(self) -> None:
        """Reload every simulator's demo data."""
        for kind in SANDBOX:
            reply = requests.post(f"{self.sandbox.url}/{kind}/_reset", timeout=10)
            if reply.status_code >= 300:
                raise RuntimeError(f"{kind}/_reset answered {reply.status_code}")


@contextlib.contextmanager
def running_deployment(*, gateway_workers: int, with_passthrough: bool) -> Iterator[Deployment]:
    """Start the sandboxes, the gateway (and the passthrough app); stop every one of them on the way out."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch, contextlib.ExitStack() as stack:
        folder = Path(scratch)
        # Direct calls come from many connections at once, which Ongoing (and its sandbox) would refuse for one
        # goods owner: the benchmark's sandbox serves them (the gateway and the passthrough still send a backend
        # with a call lock one call at a time).
        env = {**environment_without_backend_urls(), "SANDBOX_ONGOING_REFUSE_OVERLAPPING_CALLS": "false"}
        sandbox = start_gunicorn("sandbox", ["--no-control-socket", "--workers", "1", "--threads",
                                             str(SANDBOX_THREADS), "sandbox:create_app()"], env, folder)
        stack.callback(sandbox.stop)
        sandbox.wait_until_serving("/ongoing/orders")
        env = {**env, **sandbox_urls(sandbox.url), "GATEWAY_CONFIG": str(write_config_copy(folder)),
               "BENCH_LOCK_FOLDER": str(folder / "passthrough-locks")}
        gateway = gunicorn_like_the_gateway("gateway", "wsgi:app", gateway_workers, env, folder)
        stack.callback(gateway.stop)
        passthrough = None
        if with_passthrough:
            passthrough = gunicorn_like_the_gateway("passthrough", "bench.passthrough_app:create_app()",
                                                    gateway_workers, env, folder)
            stack.callback(passthrough.stop)
            passthrough.wait_until_serving("/")
        gateway.wait_until_serving("/openapi.json")
        yield Deployment(folder, sandbox, gateway, passthrough)


@dataclass
class EventWorker:
    """The gateway's event worker (`python -m gateway.events.worker`), started by the benchmark."""

    process: subprocess.Popen
    log: Path

    def check_running(self) -> None:
        """Fail with the end of its log if the worker has exited."""
        if self.process.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"the event worker exited with {self.process.returncode}:\n{tail}")


@contextlib.contextmanager
def running_event_worker(env: dict[str, str], folder: Path) -> Iterator[EventWorker]:
    """The event worker with `env` (its GATEWAY_CONFIG among it), its output in `folder`/worker.log; stopped (SIGTERM,
    then SIGKILL) on the way out."""
    log = folder / "worker.log"
    with open(log, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "gateway.events.worker"], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield EventWorker(process, log)
    finally:
        stop_process_group(process)
