"""Real server processes for the tests: gunicorn gateways, sandboxes and event workers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import requests

from tests.servers import closed_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: the output of every server process this run started; tests/conftest.py scans it for tracebacks
SERVER_LOGS: list[Path] = []
#: log -> (what the server is: "gateway", "worker" or "sandbox", the environment it was started with); the gateway's
#: and the worker's output is checked line by line: JSON objects naming no configured secret (tests/log_lines.py)
SERVER_KINDS: dict[Path, tuple[str, dict[str, str]]] = {}
_LOG_FOLDER = Path(tempfile.mkdtemp(prefix="order-gateway-test-servers-"))
_log_numbers = itertools.count(1)


def wait_until_serving(url: str, process: subprocess.Popen, seconds: float = 20.0) -> None:
    """Poll `url` until it answers; fail with the process's output if it dies first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.log_path.read_text(errors="replace")[-4000:]
            raise AssertionError(f"{url}: the server exited: {output}")
        try:
            requests.get(url, timeout=0.5)
            return
        except (requests.ConnectionError, requests.Timeout):  # a port that is open while its worker still boots
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process (and, for gunicorn, its workers) and close its pipes."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def start(command: list[str], env: dict[str, str], log: Path | None = None,
          preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """Start a server in its own process group (so a SIGKILL reaches every worker); its output goes to `log`
    (appended, so restarts keep what came before), by default a file of this run's own, and is scanned for
    tracebacks after every test. `preexec_fn` runs in the child before the server (to set its limits, say)."""
    if log is None:
        log = _LOG_FOLDER / f"{next(_log_numbers)}-{Path(command[-1]).name.replace(':', '_')}.log"
    SERVER_LOGS.append(log)
    kind = ("gateway" if "wsgi:app" in command else "worker" if "gateway.events.worker" in command
            else "sandbox" if any(part.startswith("sandbox:") for part in command) else "other")
    SERVER_KINDS[log] = (kind, dict(env))
    with open(log, "ab") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=preexec_fn)
    process.log_path = log
    return process


def start_sandbox(port: int, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """The sandboxes under gunicorn (one process: their state is in memory)."""
    return start([str(BIN / "gunicorn"), "--no-control-socket", "--workers", "1", "--threads", "8", "--bind",
                  f"127.0.0.1:{port}", "sandbox:create_app()"], env, log)


def start_gateway(port: int, env: dict[str, str], workers: int = 2, log: Path | None = None,
                  preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """The gateway under gunicorn with the project's gunicorn settings."""
    return start([str(BIN / "gunicorn"), "--config", "config/gunicorn.py", "--workers", str(workers), "--bind",
                  f"127.0.0.1:{port}", "wsgi:app"], env, log, preexec_fn)


def start_worker(env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """The event delivery worker."""
    return start([sys.executable, "-m", "gateway.events.worker"], env, log)


def write_sandbox_config_copy(folder: Path) -> str:
    """The shipped sandbox configuration, with its event databases moved into `folder`."""
    text = (ROOT / "config" / "sandbox.toml").read_text()
    # Deployments for tests of other things than callers: requests without a key are served too.
    text = text.replace("[gateway]\n", "[gateway]\nallow_anonymous = true\n", 1)
    text = text.replace('database = "../var/events.sqlite3"', f'database = "{folder}/events.sqlite3"')
    text = text.replace('queue_database = "../var/queue.sqlite3"', f'queue_database = "{folder}/queue.sqlite3"')
    path = folder / "gateway.toml"
    path.write_text(text)
    return str(path)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (gunicorn's workers of its master), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return sorted(children)


def established_connections(pids: list[int], port: int) -> dict[int, int]:
    """Per process, how many established TCP connections to 127.0.0.1:`port` it holds open (from /proc)."""
    return sockets_held(pids, port, "01")  # 01: ESTABLISHED


def listening_sockets(pids: list[int], port: int) -> dict[int, int]:
    """Per process, how many sockets listening on 127.0.0.1:`port` it holds open (from /proc)."""
    return sockets_held(pids, port, "0A")  # 0A: LISTEN


def sockets_held(pids: list[int], port: int, state: str) -> dict[int, int]:
    """Per process, how many TCP sockets of 127.0.0.1:`port` in `state` (/proc/net/tcp's code) it holds open."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        columns = line.split()
        if columns[1] == local and columns[3] == state:
            inodes.add(columns[9])
    counts = {}
    for pid in pids:
        held = 0
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


#: the sandbox's Ongoing webhook sender aimed at the gateway, as scripts/run-local sets it (its connection's Basic
#: credentials are the sandbox configuration's)
WEBHOOKS_TO_THE_GATEWAY = {
    "SANDBOX_ONGOING_WEBHOOK_URL": "{gateway_url}/webhooks/ongoing/ongoing-demo",
    "SANDBOX_ONGOING_WEBHOOK_AUTH": '{{"type": "basic", "username": "ongoing-webhooks", '
                                    '"password": "webhook-demo-password"}}',
}


@contextlib.contextmanager
def running_stack(config: str, folder: Path, extra_env: Mapping[str, str] = (), logs: bool = False,
                  processes: dict | None = None) -> Iterator[tuple[str, str]]:
    """The sandboxes, the gateway (two gunicorn workers, configured by the file `config`) and its event worker on
    free 127.0.0.1 ports, the backends' URLs set as scripts/run-local sets them, metrics under `folder`; yields
    (gateway URL, sandbox URL). `extra_env` values may name {gateway_url} and {sandbox_url}; with `logs` the servers
    write to files in `folder`. `processes`, when given, is filled with the processes ("sandbox", "gateway",
    "worker") and the environment they were started with ("env"): a test that stops the worker may put another in
    its place, and the worker there at the end is the one stopped."""
    sandbox_port, gateway_port = closed_port(), closed_port()
    while gateway_port == sandbox_port:
        gateway_port = closed_port()
    urls = {"sandbox_url": f"http://127.0.0.1:{sandbox_port}", "gateway_url": f"http://127.0.0.1:{gateway_port}"}
    sandbox_url, gateway_url = urls["sandbox_url"], urls["gateway_url"]
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({
        "GATEWAY_CONFIG": config, "GATEWAY_METRICS_DIR": str(folder / "metrics"),
        "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx", "SPEED4TRADE_URL": f"{sandbox_url}/speed4trade/",
        "SELLERCENTER_URL": f"{sandbox_url}/sellercenter/oms-api/",
        "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events",
        **{key: value.format(**urls) for key, value in dict(extra_env).items()},
    })
    sandbox = start_sandbox(sandbox_port, env, folder / "sandbox.log" if logs else None)
    gateway = start_gateway(gateway_port, env, workers=2, log=folder / "gateway.log" if logs else None)
    worker = start_worker(env, folder / "worker.log" if logs else None)
    started = processes if processes is not None else {}
    started.update(sandbox=sandbox, gateway=gateway, worker=worker, env=env)
    try:
        wait_until_serving(f"{sandbox_url}/subscriber/events", sandbox)
        wait_until_serving(f"{gateway_url}/livez", gateway)
        yield gateway_url, sandbox_url
    finally:
        stop(started["worker"])
        stop(gateway)
        stop(sandbox)

