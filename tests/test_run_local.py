"""`make run` and scripts/run-local stop everything they started: on SIGTERM (to make's pid alone, which make
forwards to its recipe's process), SIGINT and SIGHUP, and when one of the servers ends by itself; every process is
gone and both ports can be bound again within 15 s."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.processes import ROOT, SERVER_LOGS, child_pids, wait_until_serving, write_sandbox_config_copy
from tests.servers import closed_port

#: the virtualenv this test runs in; `make run` and scripts/run-local are pointed at it
VENV = Path(sys.executable).parent.parent
#: what "stops everything" means: all processes gone and both ports free within this many seconds of the signal
STOP_SECONDS = 15
WORKERS = 2
#: what a complete stack is: (a fragment of the command line, how many processes have it): the gunicorn masters
#: with their workers, and the event worker
STACK = {"sandbox:create_app()": 2, "wsgi:app": 1 + WORKERS, "gateway.events.worker": 1}
#: what the event worker logs once huey's consumer runs
WORKER_READY = "Huey consumer started"


@dataclass
class Stack:
    """`make run` or scripts/run-local started in a session of its own, with its output in two files."""

    process: subprocess.Popen
    gateway_port: int
    sandbox_port: int
    stdout: Path
    stderr: Path
    #: pid -> its start time (from /proc), of every process of the stack seen, so a reused pid is not mistaken for it
    seen: dict[int, str] = field(default_factory=dict)
    #: pid -> its command line, of every process of the stack seen
    commands: dict[int, str] = field(default_factory=dict)

    def error_output(self) -> str:
        return self.stderr.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout.read_text(errors='replace')[-3000:]}\n" \
               f"--- stderr ---\n{self.error_output()[-5000:]}"


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on (field 3), or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    fields = stat_fields(pid)
    return fields[19] if fields else None  # field 22, starttime


def arguments(pid: int) -> list[str]:
    """A process's argv (an executed script's: its interpreter, then the script's path)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def command_line(pid: int) -> str:
    return " ".join(arguments(pid))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    found, todo = [], [pid]
    while todo:
        for child in child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def still_running(seen: dict[int, str]) -> dict[int, str]:
    """Those of `seen` that still run (a zombie runs nothing and holds no port): pid -> command line."""
    running = {}
    for pid, started in seen.items():
        fields = stat_fields(pid)
        if fields and fields[19] == started and fields[0] not in ("Z", "X"):
            running[pid] = command_line(pid) or "?"
    return running


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (as gunicorn binds: SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def stack_environment(tmp_path: Path, gateway_port: int, sandbox_port: int) -> dict[str, str]:
    """The environment of the "Other ports" example (docs/operations.md), with the event databases and the metrics
    in tmp_path."""
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    env = {key: value for key, value in os.environ.items()
           # no make of an outer `make test` (its jobserver descriptors are not passed on), no metrics directory of
           # the test process
           if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PROMETHEUS_MULTIPROC_DIR")}
    env.update({
        "GATEWAY_BIND": f"127.0.0.1:{gateway_port}",
        "SANDBOX_BIND": f"127.0.0.1:{sandbox_port}",
        "ONGOING_URL": f"{sandbox}/ongoing/Service.asmx",
        "SPEED4TRADE_URL": f"{sandbox}/speed4trade/",
        "SELLERCENTER_URL": f"{sandbox}/sellercenter/oms-api/",
        "DEMO_SUBSCRIBER_URL": f"{sandbox}/subscriber/events",
        "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path),
        "GATEWAY_METRICS_DIR": str(tmp_path / "metrics"),
        "VENV": str(VENV),
        "WORKERS": str(WORKERS),
    })
    return env


def free_ports() -> tuple[int, int]:
    gateway_port = closed_port()
    sandbox_port = closed_port()
    while sandbox_port == gateway_port:
        sandbox_port = closed_port()
    return gateway_port, sandbox_port


@contextlib.contextmanager
def started(command: list[str], tmp_path: Path, ports: tuple[int, int] | None = None):
    """Start `command` (in a session of its own) on free ports; afterwards SIGKILL whatever of it still runs."""
    gateway_port, sandbox_port = ports or free_ports()
    env = stack_environment(tmp_path, gateway_port, sandbox_port)
    name = Path(command[0]).name
    stdout, stderr = tmp_path / f"{name}.stdout.log", tmp_path / f"{name}.stderr.log"
    SERVER_LOGS.extend([stdout, stderr])  # scanned for tracebacks after the test (tests/conftest.py)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
    process.log_path = stderr  # for wait_until_serving's message
    stack = Stack(process, gateway_port, sandbox_port, stdout, stderr)
    note(stack, [process.pid])
    try:
        yield stack
    finally:
        # The servers lead sessions of their own: a kill of the command's group would not reach them.
        if process.poll() is None:
            note(stack, descendants(process.pid))
        leftover = still_running(stack.seen)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # a server's group: with the workers of a master gone already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def note(stack: Stack, pids: list[int]) -> None:
    for pid in pids:
        started_at = start_time(pid)
        if started_at is not None and pid not in stack.seen:
            stack.seen[pid] = started_at
            stack.commands[pid] = command_line(pid)


def stack_processes(stack: Stack) -> dict[str, list[int]]:
    """The stack's processes by what they are (STACK's command line fragments)."""
    found: dict[str, list[int]] = {fragment: [] for fragment in STACK}
    for pid in descendants(stack.process.pid):
        line = command_line(pid)
        for fragment in STACK:
            if fragment in line:
                found[fragment].append(pid)
    return found


def wait_until_complete(stack: Stack, seconds: float = 30.0) -> dict[str, list[int]]:
    """Wait until the gateway answers, every server process runs and the event worker consumes its queue (so its
    signal handlers are set); note them all (and whatever else runs below the command) as the stack's processes."""
    wait_until_serving(f"http://127.0.0.1:{stack.gateway_port}/", stack.process, seconds)
    deadline = time.monotonic() + seconds
    while True:
        found = stack_processes(stack)
        if all(len(found[fragment]) == count for fragment, count in STACK.items()) \
                and WORKER_READY in stack.error_output():
            break
        assert stack.process.poll() is None, f"the stack exited ({stack.process.returncode}):\n{stack.output()}"
        assert time.monotonic() < deadline, f"not every server process started: {found}\n{stack.output()}"
        time.sleep(0.1)
    requests.get(f"http://127.0.0.1:{stack.sandbox_port}/ongoing/orders", timeout=5).raise_for_status()
    note(stack, descendants(stack.process.pid))
    assert len(stack.seen) >= 1 + sum(STACK.values()), stack.seen
    return found


def assert_everything_stops(stack: Stack, signalled_at: float) -> float:
    """Within STOP_SECONDS of `signalled_at`: the command exited, every process of the stack is gone, both ports
    can be bound. Returns how long it took."""
    ports = (stack.gateway_port, stack.sandbox_port)
    while True:
        running = still_running(stack.seen)
        busy = [port for port in ports if not port_free(port)]
        elapsed = time.monotonic() - signalled_at
        if stack.process.poll() is not None and not running and not busy:
            return elapsed
        if elapsed > STOP_SECONDS:
            raise AssertionError(
                f"{elapsed:.1f} s after the signal: command exited: {stack.process.poll() is not None}, "
                f"still running: {running}, ports still held: {busy}\n{stack.output()}")
        time.sleep(0.1)


def test_make_run_stops_everything_on_sigterm_to_make_alone(tmp_path):
    command = ["make", "-s", "run", f"VENV={VENV}"]
    # `run` depends on the virtualenv's install target: in the test environment it must be up to date, so that
    # make does not reinstall the virtualenv here.
    question = subprocess.run(["make", "-q", f"VENV={VENV}", f"{VENV}/.installed"], cwd=ROOT, capture_output=True,
                              text=True, env=stack_environment(tmp_path, *free_ports()), timeout=30, check=False)
    assert question.returncode == 0, (
        f"make would reinstall {VENV} (`make -q {VENV}/.installed` exited {question.returncode}: "
        f"{question.stdout}{question.stderr}); run `make install VENV={VENV}` before the tests")
    with started(command, tmp_path) as stack:
        wait_until_complete(stack)
        make = stack.process.pid
        # make's recipe execs scripts/run-local: it is make's only child (no shell between), and make's SIGTERM
        # goes to it.
        children = child_pids(make)
        assert [arguments(child)[1:] for child in children] == [["scripts/run-local"]], \
            [command_line(child) for child in children]
        signalled_at = time.monotonic()
        os.kill(make, signal.SIGTERM)  # make's pid only, not its group
        elapsed = assert_everything_stops(stack, signalled_at)
        assert stack.process.returncode != 0
        assert "run-local: SIGTERM: stopping" in stack.error_output(), stack.output()
        print(f"everything stopped {elapsed:.1f} s after SIGTERM to make")


@pytest.mark.parametrize(("signal_number", "status"),
                         [(signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGHUP", "SIGTERM"])
def test_run_local_stops_everything_on_a_signal(tmp_path, signal_number, status):
    with started(["scripts/run-local"], tmp_path) as stack:
        wait_until_complete(stack)
        signalled_at = time.monotonic()
        os.kill(stack.process.pid, signal_number)  # the script alone, not its group
        elapsed = assert_everything_stops(stack, signalled_at)
        assert stack.process.returncode == status, stack.output()
        assert f"run-local: {signal.Signals(signal_number).name}: stopping" in stack.error_output()
        print(f"everything stopped {elapsed:.1f} s after {signal.Signals(signal_number).name}")


@pytest.mark.parametrize(("server", "name", "signal_number", "server_status", "status"), [
    ("sandbox:create_app()", "sandbox", signal.SIGTERM, 0, 1),         # gunicorn's clean exit
    ("wsgi:app", "gateway", signal.SIGKILL, 128 + 9, 128 + 9),        # a crash: its workers stay behind at first
    ("gateway.events.worker", "event worker", signal.SIGTERM, 0, 1),  # huey's clean exit
], ids=["sandbox-exits-0", "gateway-killed", "event-worker-exits-0"])
def test_a_server_that_ends_stops_the_rest(tmp_path, server, name, signal_number, server_status, status):
    with started(["scripts/run-local"], tmp_path) as stack:
        found = wait_until_complete(stack)
        [master] = [pid for pid in found[server] if stat_fields(pid)[1] == str(stack.process.pid)]  # not a worker
        signalled_at = time.monotonic()
        os.kill(master, signal_number)
        elapsed = assert_everything_stops(stack, signalled_at)
        assert stack.process.returncode == status, stack.output()
        assert f"run-local: the {name} (pid {master}) exited with status {server_status}: stopping the others" \
            in stack.error_output(), stack.output()
        print(f"everything stopped {elapsed:.1f} s after the {name} ended")


def test_a_signal_while_waiting_for_the_sandbox_port_stops_the_sandbox(tmp_path):
    gateway_port, sandbox_port = free_ports()
    # A socket bound to the sandbox's port without listening: connections are refused (the script keeps waiting)
    # and the sandbox's gunicorn retries its bind for about 5 s.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", sandbox_port))
        with started(["scripts/run-local"], tmp_path, (gateway_port, sandbox_port)) as stack:
            deadline = time.monotonic() + 10
            while not stack_processes(stack)["sandbox:create_app()"]:
                assert stack.process.poll() is None and time.monotonic() < deadline, stack.output()
                time.sleep(0.05)
            time.sleep(0.5)
            note(stack, descendants(stack.process.pid))
            signalled_at = time.monotonic()
            os.kill(stack.process.pid, signal.SIGTERM)
            # The trap runs at once (within a port probe), not after the wait for the port.
            while "run-local: SIGTERM: stopping" not in stack.error_output():
                assert time.monotonic() - signalled_at < 3, stack.output()
                time.sleep(0.05)
            while stack.process.poll() is None and time.monotonic() - signalled_at < STOP_SECONDS:
                note(stack, descendants(stack.process.pid))
                time.sleep(0.05)
            holder.close()
            assert_everything_stops(stack, signalled_at)
            assert stack.process.returncode == 143, stack.output()
            # Nothing was started after the signal: neither the gateway nor the event worker.
            assert not any("wsgi:app" in line or "gateway.events.worker" in line
                           for line in stack.commands.values()), stack.commands
