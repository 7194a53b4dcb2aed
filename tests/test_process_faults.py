"""Faults around the gateway's processes under gunicorn, over real HTTP on 127.0.0.1: the data disk full, a soft
limit of 1024 open files, a stop right after an exchange. Each test starts its own gateway beside one sandbox."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from gateway.journal.recorder import JournalRecorder
from tests.ongoing_timestamps import recent_timestamp
from tests.processes import (
    BIN,
    ROOT,
    child_pids,
    listening_sockets,
    start_gateway,
    start_sandbox,
    stop,
    wait_until_serving,
    write_sandbox_config_copy,
)
from tests.servers import closed_port
from tests.test_journal_store import ListJournal, exchange, moment

WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")
#: a fourth connection beside the sandbox configuration's three, as deployments have them
SECOND_SELLERCENTER = """
[connections.sellercenter-second]
backend = "sellercenter"
url = "${SELLERCENTER_URL}"
api_key = "sandbox-sellercenter-api-key"
"""


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    port = closed_port()
    sandbox = start_sandbox(port, dict(os.environ))
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/ongoing/orders", sandbox)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(sandbox)


def gateway_environment(sandbox_url: str, config: str | Path, **more: str) -> dict[str, str]:
    env = {key: item for key, item in os.environ.items()
           if key not in ("PROMETHEUS_MULTIPROC_DIR", "GATEWAY_METRICS_DIR")}
    env.update({"GATEWAY_CONFIG": str(config), "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx",
                "SPEED4TRADE_URL": f"{sandbox_url}/speed4trade/",
                "SELLERCENTER_URL": f"{sandbox_url}/sellercenter/oms-api/",
                "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events", **more})
    return env


def serving_workers(gateway: subprocess.Popen, port: int, count: int) -> list[int]:
    """The worker pids, once `count` workers listen (they boot one after another)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = child_pids(gateway.pid)
        if len(workers) == count and sum(listening_sockets(workers, port).values()) == count:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not come up: {child_pids(gateway.pid)}")


# --- a full data disk -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at a fresh folder for the block (the tests run as root, as CI does)."""
    folder = Path(tempfile.mkdtemp(prefix="order-gateway-small-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    assert mounted.returncode == 0, f"these tests mount a small filesystem (as root): {mounted.stderr}"
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


def fill(folder: Path) -> Path:
    """A file that takes every free block under `folder`."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
        with contextlib.suppress(OSError):  # the last few bytes
            while True:
                out.write(b"\0" * 512)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def ongoing_webhook(number: int) -> dict:
    return {"webhookOrdersId": number, "webhookEventId": 70_000 + number, "webhookTemplate": "OrderPicked",
            "system": "process-faults", "timestamp": recent_timestamp(), "orderId": 1003,
            "goodsOwnerOrderId": "SO-1003", "orderStatusCode": 400}


def test_a_full_data_disk_answers_503_and_kills_no_worker(sandbox_url):
    """The databases and, worst of all, the mapped metrics files on one filesystem, full: every worker lives on,
    writes are refused with 503, /readyz fails, and once space is freed all works again."""
    with small_filesystem("4m") as data:
        config = Path(write_sandbox_config_copy(data))
        config.write_text(config.read_text() + "\n[stores]\nmin_free_disk_mb = 1\n")
        env = gateway_environment(sandbox_url, config, GATEWAY_METRICS_DIR=str(data / "metrics"))
        port = closed_port()
        gateway_url = f"http://127.0.0.1:{port}"
        gateway = start_gateway(port, env, workers=2)
        try:
            wait_until_serving(f"{gateway_url}/livez", gateway)
            workers = serving_workers(gateway, port, 2)
            assert requests.get(f"{gateway_url}/readyz", timeout=10).status_code == 200
            filler = fill(data)

            replies = []
            for number in range(8):  # a new connection each: the kernel hands them to either worker
                replies.append(requests.patch(
                    f"{gateway_url}/orders/SO-1004", json={"picking_priority": number}, timeout=10,
                    headers={"Connection": "close", "Idempotency-Key": f"full-disk-{number}"}))
                replies.append(requests.post(f"{gateway_url}/webhooks/ongoing/ongoing-demo", timeout=10,
                                             json=ongoing_webhook(number), auth=WEBHOOK_AUTH,
                                             headers={"Connection": "close"}))
            assert [reply.status_code for reply in replies] == [503] * len(replies), [r.text for r in replies]
            assert {reply.headers["Content-Type"] for reply in replies} == {"application/problem+json"}
            assert {reply.json()["type"] for reply in replies} == {"urn:order-gateway:problem:store-unavailable"}
            ready = requests.get(f"{gateway_url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["status"] == "fail"
            assert [check["status"] for check in ready.json()["checks"]["dataFolder:freeSpace"]] == ["fail"]
            assert child_pids(gateway.pid) == workers, gateway.log_path.read_text()[-3000:]

            filler.unlink()
            patched = requests.patch(f"{gateway_url}/orders/SO-1004", json={"picking_priority": 42}, timeout=10,
                                     headers={"Connection": "close", "Idempotency-Key": "full-disk-after"})
            assert patched.status_code == 200, patched.text
            stored = requests.post(f"{gateway_url}/webhooks/ongoing/ongoing-demo", json=ongoing_webhook(99),
                                   auth=WEBHOOK_AUTH, timeout=10)
            assert stored.status_code in (200, 202), stored.text
            assert requests.get(f"{gateway_url}/readyz", timeout=10).status_code == 200
            assert child_pids(gateway.pid) == workers
        finally:
            stop(gateway)


FIGURES_ON_A_FULL_FILESYSTEM = """
import json, sys
from pathlib import Path
from prometheus_client.mmap_dict import MmapedDict
from gateway.metrics import FailSafeFigures
from tests.test_process_faults import fill
folder = Path(sys.argv[1])
early = FailSafeFigures(str(folder / "counter_1.db"))  # made while there is room
early.write_value("early", 1.0, 0.0)
fill(folder)
late = FailSafeFigures(str(folder / "counter_2.db"))
late.write_value("late", 2.0, 0.0)
for number in range(3000):  # far beyond the file's first 64 KiB
    early.write_value(f"key-{number}", float(number), 0.0)
kept = MmapedDict.read_all_values_from_file(str(folder / "counter_1.db"))  # as a scrape reads it
print(json.dumps({"late": late.read_value("late"), "grown": early.read_value("key-2999"),
                  "files": sorted(path.name for path in folder.glob("*.db")),
                  "kept": {key: value for key, value, *_ in kept}}))
early.close()
late.close()
"""


def test_figures_that_a_full_filesystem_cannot_take_are_kept_in_memory():
    """No write through a mapping into a page without a block (SIGBUS): a new file and a growing one carry on in
    memory, and what a scrape reads stays whole."""
    with small_filesystem("1m") as folder:
        run = subprocess.run([sys.executable, "-c", FIGURES_ON_A_FULL_FILESYSTEM, str(folder)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout)
    assert found["late"] == [2.0, 0.0] and found["grown"] == [2999.0, 0.0]
    assert found["files"] == ["counter_1.db"]  # none left empty for a scrape to choke on
    assert found["kept"]["early"] == 1.0


def test_the_metrics_files_are_kept_in_shared_memory_by_default():
    """Not on the data disk (var/): gunicorn's settings and the event worker's gateway.metrics find one root in
    /dev/shm, on a filesystem of its own."""
    env = {key: item for key, item in os.environ.items()
           if key not in ("PROMETHEUS_MULTIPROC_DIR", "GATEWAY_METRICS_DIR")}
    loaded = subprocess.run(
        [sys.executable, "-c", "import os, runpy; runpy.run_path('config/gunicorn.py');"
                               "from gateway import metrics;"
                               "print(os.environ['PROMETHEUS_MULTIPROC_DIR'], metrics.metrics_root().resolve())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=True)
    directory, root = map(Path, loaded.stdout.split())
    assert directory.parent == root
    assert root.parent == Path("/dev/shm") and root.stat().st_uid == os.getuid()
    # var/ is made under the working directory when first needed (the tests keep theirs in temporary folders)
    data_disk = ROOT / "var" if (ROOT / "var").exists() else ROOT
    assert root.stat().st_dev != data_disk.stat().st_dev
    shutil.rmtree(directory)


# --- open files --------------------------------------------------------------------------------------------------

def soft_limit(soft: int, hard: int | None = None):
    """A preexec_fn: the child's limit of open files (the hard one as it is, unless given)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                                                     if hard is None else hard))
    return limit


def open_files_limit(pid: int) -> int:
    """A process's soft limit of open files, from /proc."""
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    return int(line.split()[3])


@contextlib.contextmanager
def own_open_files_limit(soft: int) -> Iterator[None]:
    """This process's soft limit of open files raised to `soft` (at most the hard one) for the block."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def test_a_soft_limit_of_1024_open_files_is_raised_and_a_burst_of_patches_is_served(sandbox_url, tmp_path):
    """systemd's default soft limit, four connections: the worker runs with a raised limit, and with 880 clients
    kept alive (gunicorn keeps up to worker_connections) 192 PATCHes at once are served; at 1024 its accept() failed
    with EMFILE and the worker exited."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard > 4096, "the test needs a hard limit above the gateway's needs"
    config = Path(write_sandbox_config_copy(tmp_path))
    config.write_text(config.read_text() + SECOND_SELLERCENTER)
    env = gateway_environment(sandbox_url, config, GATEWAY_METRICS_DIR=str(tmp_path / "metrics"))
    port = closed_port()
    gateway_url = f"http://127.0.0.1:{port}"
    calls = [("ongoing-demo", "SO-1005", {"picking_priority": 5}),
             ("speed4trade-demo", "10004", {"status": "fetched"}),
             ("sellercenter-demo", "300003", {"shipping_address": {"city": "Leipzig"}}),
             ("sellercenter-second", "300006", {"billing_address": {"city": "Bonn"}})]

    def keep_alive(_: int) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/livez")
        assert connection.getresponse().read()
        return connection

    def patch(number: int) -> tuple[int, str]:
        connection, order, body = calls[number % len(calls)]
        headers = {"Idempotency-Key": f"burst-{number}"} if number % 2 else {}
        try:
            reply = requests.patch(f"{gateway_url}/orders/{order}", json={**body, "connection": connection},
                                   headers=headers, timeout=60)
        except requests.RequestException as error:
            return 0, type(error).__name__
        return reply.status_code, "" if reply.ok else reply.json()["type"]

    gateway = start_gateway(port, env, workers=1, preexec_fn=soft_limit(1024))
    idle: list[http.client.HTTPConnection] = []
    try:
        wait_until_serving(f"{gateway_url}/livez", gateway)
        workers = serving_workers(gateway, port, 1)
        assert open_files_limit(workers[0]) == open_files_limit(gateway.pid) > 1024
        with own_open_files_limit(4096):
            with ThreadPoolExecutor(max_workers=16) as pool:
                idle.extend(pool.map(keep_alive, range(880)))
            with ThreadPoolExecutor(max_workers=192) as pool:
                outcomes = Counter(pool.map(patch, range(192)))
            for connection in idle:
                connection.close()
        assert set(outcomes) <= {(200, ""), (503, "urn:order-gateway:problem:backend-unavailable")}, outcomes
        assert outcomes[(200, "")] >= 96, outcomes
        assert child_pids(gateway.pid) == workers
    finally:
        for connection in idle:
            connection.close()
        stop(gateway)


def test_a_hard_limit_of_open_files_below_the_needs_refuses_to_start_with_one_clear_line(tmp_path):
    env = {**os.environ, "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path),
           "GATEWAY_METRICS_DIR": str(tmp_path / "metrics")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run(
        [str(BIN / "gunicorn"), "--config", "config/gunicorn.py", "--bind", f"127.0.0.1:{closed_port()}", "wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, timeout=30, check=False, preexec_fn=soft_limit(512, 512))
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    last = output.splitlines()[-1]
    assert "cannot start: a worker may need about" in last and "more than the hard limit of 512" in last, output
    assert "Booting worker" not in output and "Traceback" not in output


# --- a graceful stop -----------------------------------------------------------------------------------------------

def test_an_exchange_answered_just_before_a_graceful_stop_is_in_the_journal_after_the_restart(sandbox_url, tmp_path):
    """The journal's writer waits up to 50 ms for more exchanges to write together; a worker that stops within them
    writes what it holds first."""
    env = gateway_environment(sandbox_url, write_sandbox_config_copy(tmp_path),
                              GATEWAY_METRICS_DIR=str(tmp_path / "metrics"))
    port = closed_port()
    gateway_url = f"http://127.0.0.1:{port}"
    gateway = start_gateway(port, env, workers=1)
    try:
        wait_until_serving(f"{gateway_url}/livez", gateway)
        # Connection: close, so the worker holds no kept-alive connection and stops at once
        reply = requests.patch(f"{gateway_url}/orders/SO-1006", json={"picking_priority": 6}, timeout=10,
                               headers={"Connection": "close"})
        os.killpg(gateway.pid, signal.SIGTERM)
        assert reply.status_code == 200, reply.text
        assert gateway.wait(timeout=20) == 0
    finally:
        stop(gateway)
    gateway = start_gateway(port, env, workers=1)
    try:
        wait_until_serving(f"{gateway_url}/livez", gateway)
        found = requests.get(f"{gateway_url}/exchanges", params={"request_id": reply.headers["X-Request-ID"]},
                             timeout=10).json()["exchanges"]
        assert [(exchange["connection"], exchange["order_ids"]) for exchange in found] == [("ongoing-demo",
                                                                                            ["SO-1006"])]
    finally:
        stop(gateway)


class ClosableJournal(ListJournal):
    """A journal in a list that notes being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_closing_the_recorder_writes_what_waits_for_the_linger_at_once(monkeypatch):
    monkeypatch.setattr("gateway.journal.recorder.LINGER_SECONDS", 30.0)
    journal = ClosableJournal()
    recorder = JournalRecorder(journal, record_bodies=True, max_body_bytes=1000)
    items = [exchange(moment() + number) for number in range(3)]
    for item in items:
        recorder.record(item)
    started = time.monotonic()
    assert recorder.close(timeout=5.0)
    assert time.monotonic() - started < 2
    assert journal.stored == items and journal.closed


def test_closing_the_recorder_waits_no_longer_than_its_timeout_for_a_stuck_writer(monkeypatch):
    monkeypatch.setattr("gateway.journal.recorder.LINGER_SECONDS", 0.0)
    journal = ClosableJournal()
    recorder = JournalRecorder(journal, record_bodies=True, max_body_bytes=1000)
    journal.held.clear()  # the writer's record_many waits
    try:
        recorder.record(exchange(moment()))
        deadline = time.monotonic() + 5
        while not recorder._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.005)  # the writer has taken it and waits in record_many
        recorder.record(exchange(moment() + 1))
        started = time.monotonic()
        assert not recorder.close(timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert recorder.dropped == 1 and not journal.closed  # the writer still uses it
        recorder.record(exchange(moment() + 2))  # after close: counted, never written
        assert recorder.dropped == 2
    finally:
        journal.held.set()
    recorder._thread.join(5)
    assert not recorder._thread.is_alive() and len(journal.stored) == 1
