"""Serving model: the gateway under gunicorn's sync, gthread and gevent workers, beside slow and hanging peers.

For every candidate the gateway runs under gunicorn with the project's settings (`config/gunicorn.py`), only the
worker model replaced, 2 workers, beside one sandbox and one fake backend that accepts and never answers:

(a) 64 connections send request headers one byte every 0.5 s; meanwhile a few `GET /events`, one after another;
(b) 16 updates hang on the fake backend (speed4trade-demo's URL, read_timeout 20 s); meanwhile a few dry runs
    `PATCH /orders/SO-1001?dry_run=true` on ongoing-demo, which never waits for that backend;
(c) throughput and latency of a dry run and of a real update through the sandbox at concurrency 1 and 16, each
    client thread with its own keep-alive `requests.Session`, counting the TCP connections the clients opened;
(d) the workers' open file descriptors and RSS before, after a few hundred and after twice as many `GET /events`,
    each on a new connection;
(e) another process holds the events database's write lock for 2 s while 4 Ongoing webhooks wait for it (SQLite's
    busy timeout); meanwhile a few dry runs, which never touch the database.

Everything is bounded by counts and deadlines, on 127.0.0.1 only; every server gets a free port and is stopped
at the end (also on Ctrl-C or SIGTERM). Run: `python -m bench.serving_model [--quick] [--only NAME]`; prints
Markdown. The gevent candidate needs gevent installed (`pip install gevent`; the gateway does not depend on it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import runpy
import selectors
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests

from bench.measure import Section, milliseconds, percentile
from bench.servers import SANDBOX_THREADS, Server, start_gunicorn
from bench.workload import (
    DEMO_KEY,
    REPEATABLE,
    ROOT,
    environment_without_backend_urls,
    recent_ongoing_timestamp,
    sandbox_urls,
    write_config_copy,
)

PROJECT_CONFIG = ROOT / "config" / "gunicorn.py"
WORKERS = 2
SLOW_CLIENTS = 64
SLOW_INTERVAL = 0.5  # seconds between two bytes of a slow client
HANGING_REQUESTS = 16
HANGING_READ_TIMEOUT = 20.0  # the hanging connection's read_timeout
PROBE_TIMEOUT = 3.0  # a probe not answered by then counts as not answered
REQUEST_TIMEOUT = 15.0
DRY_RUN = ("SO-1001", {"picking_priority": 5})
#: every request to the gateway comes from the sandbox configuration's demo caller
CALLER = {"Authorization": f"Bearer {DEMO_KEY}"}
WRITE_LOCK_SECONDS = 2.0
WEBHOOK_WRITERS = 4
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")  # the sandbox configuration's demo credentials
WEBHOOK = {
    "webhookOrdersId": 3, "webhookEventId": 0, "system": "sandbox", "timestamp": recent_ongoing_timestamp(),
    "orderId": 1004, "orderNumber": "SO-1004", "goodsOwnerId": 1, "path": "/api/v1/orders/1004",
    "orderStatus": {"number": 400}, "webhookTemplate": "OrderPicked", "goodsOwnerName": "Demo goods owner",
    "tracking": [{"trackingUrl": "https://t.example/WB-1", "waybill": "WB-1", "isReturn": False}],
}


@dataclass(frozen=True)
class Budget:
    """How much each candidate may do: the full run, or a fraction of it for a smoke test."""

    probes: int  # sequential probe requests per scenario
    load_requests: int  # per load run
    load_seconds: float  # per load run
    fd_requests: int

    @classmethod
    def full(cls) -> Budget:
        """About two minutes on 2 cores."""
        return cls(probes=5, load_requests=5_000, load_seconds=3.0, fd_requests=500)

    @classmethod
    def smoke(cls) -> Budget:
        """Every code path in well under a minute; figures not worth quoting."""
        return cls(probes=2, load_requests=300, load_seconds=0.5, fd_requests=100)


@dataclass(frozen=True)
class Candidate:
    """A worker model: gunicorn settings written after the project's config file, and what runs before it."""

    name: str
    overrides: str = ""
    #: Python run before the project's config file (and so before preload_app imports the app)
    preamble: str = ""

    def describe(self) -> str:
        """The worker model and its size, as the config file written for it says."""
        settings = self.settings()
        worker = settings.get("worker_class", "sync")
        if worker == "gthread":
            return f"gthread, {settings.get('threads')} threads, keepalive {settings.get('keepalive')} s"
        if worker == "gevent":
            return (f"gevent, {settings.get('worker_connections', 1000)} connections, "
                    f"keepalive {settings.get('keepalive')} s")
        return f"{worker}, no keep-alive"

    def settings(self) -> dict:
        """The gunicorn settings the candidate ends up with (the preamble is not run here)."""
        settings = {name: value for name, value in runpy.run_path(str(PROJECT_CONFIG)).items()
                    if not name.startswith("_")}
        exec(self.overrides, {}, settings)  # noqa: S102 - our own constant overrides
        return settings

    def write_config(self, folder: Path) -> Path:
        """A gunicorn config file: the preamble, the project's settings, then the overrides."""
        path = folder / f"gunicorn-{self.name}.py"
        path.write_text(
            f"{self.preamble}\n"
            "import runpy as _runpy\n"
            f"globals().update({{_name: _value for _name, _value in _runpy.run_path({str(PROJECT_CONFIG)!r}).items()"
            " if not _name.startswith('_')})\n"
            f"{self.overrides}\n"
        )
        return path


CANDIDATES = (
    Candidate("sync", 'worker_class = "sync"\nthreads = 1\n'),
    Candidate("gthread-8", 'worker_class = "gthread"\nthreads = 8\n'),
    # config/gunicorn.py as it ships
    Candidate("shipped"),
    # gevent must patch the standard library before preload_app imports the app in the master.
    Candidate("gevent", 'worker_class = "gevent"\nworker_connections = 1000\n',
              preamble="from gevent import monkey\nmonkey.patch_all()\n"),
)


# --- the hostile peers -------------------------------------------------------------------------------------------

class SlowClients:
    """Connections that send a request's headers one byte every `interval`, never finishing them."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.header = (b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 8000)
        self.sockets: list[socket.socket] = []
        self.sent = 0
        self.dropped = 0  # connections the server closed or reset
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        try:
            for _ in range(self.count):
                self.sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
        except BaseException:
            self._close_all()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_all()

    @property
    def still_open(self) -> int:
        """How many of them the server has not closed."""
        return self.count - self.dropped

    def _trickle(self) -> None:
        alive = {client: 0 for client in self.sockets}
        while alive and not self._stop.is_set():
            for client, position in list(alive.items()):
                try:
                    offset = position % len(self.header)
                    client.send(self.header[offset:offset + 1])
                    alive[client] = position + 1
                    self.sent += 1
                except OSError:
                    del alive[client]
                    self.dropped += 1
            self._stop.wait(self.interval)

    def _close_all(self) -> None:
        for client in self.sockets:
            client.close()


class HangingBackend:
    """A raw TCP server on a free port that accepts connections and reads them, and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hanging-backend", daemon=True)
        self._thread.start()

    def __enter__(self) -> HangingBackend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and close every connection (what waits on one then sees it closed); idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for connection in self._connections:
            connection.close()
        self.listener.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.1):
                    if key.fileobj is self.listener:
                        with contextlib.suppress(BlockingIOError):
                            connection, _ = self.listener.accept()
                            connection.setblocking(False)
                            self._connections.append(connection)
                            self.accepted += 1
                            selector.register(connection, selectors.EVENT_READ)
                    else:
                        try:
                            data = key.fileobj.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            selector.unregister(key.fileobj)


# --- measuring -----------------------------------------------------------------------------------------------------

def check(reply: requests.Response) -> requests.Response:
    """The reply, if it is a 200; else stop the run: figures of refused requests are worth nothing."""
    if reply.status_code != 200:
        raise RuntimeError(f"{reply.request.method} {reply.url} answered {reply.status_code}: {reply.text[:500]}")
    return reply


@dataclass
class Probes:
    """Sequential requests made while the gateway is under pressure."""

    latencies: list[float] = field(default_factory=list)  # of the answered ones
    unanswered: int = 0
    statuses: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """'answered/tried, p50 and max' in a table cell."""
        tried = len(self.latencies) + self.unanswered
        if not self.latencies:
            return f"0/{tried} (none within {PROBE_TIMEOUT:g} s)"
        refused = [status for status in self.statuses if status != 200]
        return (f"{len(self.latencies)}/{tried}, p50 {milliseconds(percentile(self.latencies, 0.5))} ms, "
                f"max {milliseconds(max(self.latencies))} ms" + (f" (not 200: {statuses(refused)})" if refused else ""))


def probe(send: Callable[[], requests.Response], count: int) -> Probes:
    """`count` requests one after another, each on a new connection; stops after two that went unanswered."""
    probes = Probes()
    for _ in range(count):
        started = time.perf_counter()
        try:
            reply = send()
        except requests.RequestException:
            probes.unanswered += 1
            if probes.unanswered >= 2:
                break
            continue
        probes.latencies.append(time.perf_counter() - started)
        probes.statuses.append(reply.status_code)
    return probes


@dataclass
class LoadRun:
    """What one load run saw."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    connections: int = 0  # TCP connections the clients opened
    closing_replies: int = 0  # replies that said `Connection: close`
    first_error: str | None = None

    @property
    def rate(self) -> float:
        """Completed requests per second of wall time."""
        return self.requests / self.seconds if self.seconds else 0.0


def generate_load(send: Callable[[requests.Session, int], requests.Response], *, concurrency: int,
                  max_requests: int, max_seconds: float) -> LoadRun:
    """`send` from `concurrency` threads, each with its own keep-alive session, bounded by a count and a time."""
    tickets = itertools.count()
    deadline = time.monotonic() + max_seconds
    run = LoadRun()
    lock = threading.Lock()

    def client() -> None:
        latencies, errors, closing, first_error = [], 0, 0, None
        sockets = set()  # every kept-alive TCP socket a reply came on (held, so none is counted twice)
        closed = 0  # replies whose connection ended with them (http.client has already let go of its socket)
        with requests.Session() as session:
            session.trust_env = False
            session.headers.update(CALLER)
            while time.monotonic() < deadline and next(tickets) < max_requests:
                started = time.perf_counter()
                try:
                    with send(session, len(latencies)) as reply:  # streamed: its socket is still at hand
                        sock = reply.raw.connection.sock
                        if sock is None:
                            closed += 1
                        else:
                            sockets.add(sock)
                        reply.content  # noqa: B018 - read the whole reply
                    status = reply.status_code
                    closing += reply.headers.get("Connection", "").lower() == "close"
                except requests.RequestException as error:
                    status, first_error = 0, first_error or f"{type(error).__name__}: {error}"
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
                    first_error = first_error or f"HTTP {status}"
        with lock:
            run.requests += len(latencies)
            run.errors += errors
            run.latencies += latencies
            run.connections += len(sockets) + closed
            run.closing_replies += closing
            run.first_error = run.first_error or first_error

    threads = [threading.Thread(target=client, name=f"load-{n}") for n in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + REQUEST_TIMEOUT + 5)
    run.seconds = time.perf_counter() - started
    return run


# --- one candidate -------------------------------------------------------------------------------------------------

@dataclass
class Figures:
    """Everything measured for one candidate."""

    candidate: str
    description: str
    slow: Probes | None = None
    slow_still_open: int = 0
    hanging: Probes | None = None
    backend_calls_in_flight: int = 0
    hanging_statuses: list[int] = field(default_factory=list)
    load: dict[tuple[str, int], LoadRun] = field(default_factory=dict)
    #: (open fds, RSS MiB) of all workers: at the start, after fd_requests and after twice as many GET /events
    resources: list[tuple[int, float]] = field(default_factory=list)
    locked: Probes | None = None
    webhook_statuses: list[int] = field(default_factory=list)


def config_with_hanging_connection(folder: Path) -> Path:
    """The sandbox configuration copy with speed4trade-demo's read_timeout raised to HANGING_READ_TIMEOUT."""
    path = write_config_copy(folder)
    text = path.read_text()
    head, marker, tail = text.partition("[connections.speed4trade-demo]")
    if not marker or "read_timeout = 30.0" not in tail:
        raise RuntimeError(f"{path}: expected speed4trade-demo's read_timeout = 30.0")
    path.write_text(head + marker + tail.replace("read_timeout = 30.0", f"read_timeout = {HANGING_READ_TIMEOUT}", 1))
    return path


def measure_candidate(candidate: Candidate, sandbox: Server, folder: Path, budget: Budget) -> Figures:
    """Start the gateway under the candidate's worker model, measure (a) to (d), stop it."""
    figures = Figures(candidate.name, candidate.describe())
    scratch = folder / candidate.name
    scratch.mkdir()
    backend = HangingBackend()
    gateway = None
    try:
        env = {**environment_without_backend_urls(), **sandbox_urls(sandbox.url),
               "SPEED4TRADE_URL": f"http://127.0.0.1:{backend.port}/speed4trade/",
               "GATEWAY_CONFIG": str(config_with_hanging_connection(scratch))}
        gateway = start_gunicorn(f"gateway-{candidate.name}",
                                 ["--config", str(candidate.write_config(scratch)), "--workers", str(WORKERS),
                                  "wsgi:app"], env, scratch)
        gateway.wait_until_serving("/openapi.json")
        print(f"\n{candidate.name}: {figures.description}", flush=True)
        check(requests.patch(f"{gateway.url}/orders/{DRY_RUN[0]}?dry_run=true", json=DRY_RUN[1], headers=CALLER,
                             timeout=REQUEST_TIMEOUT))
        check(requests.patch(f"{gateway.url}/orders/{REPEATABLE['ongoing'].order_id(0)}", headers=CALLER,
                             json=REPEATABLE["ongoing"].document(), timeout=REQUEST_TIMEOUT))
        figures.slow, figures.slow_still_open = beside_slow_clients(gateway, budget)
        print(f"  (a) {SLOW_CLIENTS} slow clients: GET /events {figures.slow.summary()}", flush=True)
        beside_hanging_requests(gateway, backend, figures, budget)
        print(f"  (b) {HANGING_REQUESTS} requests on a hanging backend ({figures.backend_calls_in_flight} "
              f"reached it): dry run {figures.hanging.summary()}", flush=True)
        figures.load = measure_load(gateway, budget)
        figures.resources = after_many_event_reads(gateway, budget)
        print(f"  (d) workers' fds {' -> '.join(str(fds) for fds, _ in figures.resources)} after 0, "
              f"{budget.fd_requests} and {2 * budget.fd_requests} GET /events", flush=True)
        figures.locked = beside_a_held_write_lock(gateway, scratch / "events.sqlite3", figures, budget)
        print(f"  (e) {WEBHOOK_WRITERS} webhooks waiting {WRITE_LOCK_SECONDS:g} s for the write lock: dry run "
              f"{figures.locked.summary()}", flush=True)
    finally:
        backend.close()
        if gateway is not None:
            gateway.stop()
    return figures


def beside_slow_clients(gateway: Server, budget: Budget) -> tuple[Probes, int]:
    """(a): GET /events while SLOW_CLIENTS connections trickle their headers; how many of those stayed open."""
    with SlowClients(gateway.port, SLOW_CLIENTS, SLOW_INTERVAL) as slow:
        time.sleep(1.5)  # every slow client connected and a few bytes into its headers
        probes = probe(lambda: requests.get(f"{gateway.url}/events?limit=10", headers=CALLER,
                                            timeout=PROBE_TIMEOUT), budget.probes)
        return probes, slow.still_open


def beside_hanging_requests(gateway: Server, backend: HangingBackend, figures: Figures, budget: Budget) -> None:
    """(b): dry runs on ongoing-demo while HANGING_REQUESTS updates wait on speed4trade-demo's hanging backend."""

    def hang() -> None:
        with contextlib.suppress(requests.RequestException):
            reply = requests.patch(f"{gateway.url}/orders/10001", headers=CALLER, timeout=HANGING_READ_TIMEOUT + 10,
                                   json={"connection": "speed4trade-demo", "status": "fetched"})
            figures.hanging_statuses.append(reply.status_code)

    hanging = [threading.Thread(target=hang, name=f"hang-{n}") for n in range(HANGING_REQUESTS)]
    try:
        for thread in hanging:
            thread.start()
        deadline = time.monotonic() + 3
        while backend.accepted < HANGING_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.05)
        figures.backend_calls_in_flight = backend.accepted
        figures.hanging = probe(lambda: requests.patch(f"{gateway.url}/orders/{DRY_RUN[0]}?dry_run=true",
                                                       json=DRY_RUN[1], headers=CALLER, timeout=PROBE_TIMEOUT),
                                budget.probes)
    finally:
        backend.close()  # its closed connections release the hanging requests; later ones are refused
        for thread in hanging:
            thread.join(timeout=HANGING_READ_TIMEOUT + 15)


def after_many_event_reads(gateway: Server, budget: Budget) -> list[tuple[int, float]]:
    """(d): the workers' open fds and RSS (MiB) at the start, after budget.fd_requests and after twice as many
    GET /events, each on a new connection (as many callers would open them): bounded, or growing with every one?"""
    workers = psutil.Process(gateway.process.pid).children()

    def now() -> tuple[int, float]:
        time.sleep(0.5)  # the last connections closed on the server's side too
        return (sum(worker.num_fds() for worker in workers),
                sum(worker.memory_info().rss for worker in workers) / 2**20)

    samples = [now()]
    for _ in range(2):
        for _ in range(budget.fd_requests):
            check(requests.get(f"{gateway.url}/events?limit=10", headers=CALLER, timeout=REQUEST_TIMEOUT))
        samples.append(now())
    return samples


def beside_a_held_write_lock(gateway: Server, database: Path, figures: Figures, budget: Budget) -> Probes:
    """(e): dry runs while WEBHOOK_WRITERS webhooks wait for the events database's write lock, which this process
    holds for WRITE_LOCK_SECONDS (as another gateway process or the event worker does while it writes)."""
    if not database.exists():
        raise RuntimeError(f"{database}: the gateway's events database is not there")
    holder = sqlite3.connect(database, isolation_level=None, timeout=10, check_same_thread=False)

    def deliver(number: int) -> None:
        with contextlib.suppress(requests.RequestException):
            reply = requests.post(f"{gateway.url}/webhooks/ongoing/ongoing-demo", auth=WEBHOOK_AUTH,
                                  json={**WEBHOOK, "webhookEventId": 10_000 + number},
                                  timeout=WRITE_LOCK_SECONDS + REQUEST_TIMEOUT)
            figures.webhook_statuses.append(reply.status_code)

    writers = [threading.Thread(target=deliver, args=(n,), name=f"webhook-{n}") for n in range(WEBHOOK_WRITERS)]
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(WRITE_LOCK_SECONDS, holder.execute, ("ROLLBACK",))
    try:
        release.start()
        for thread in writers:
            thread.start()
        time.sleep(0.3)  # the webhooks are waiting for the lock
        return probe(lambda: requests.patch(f"{gateway.url}/orders/{DRY_RUN[0]}?dry_run=true", json=DRY_RUN[1],
                                            headers=CALLER, timeout=PROBE_TIMEOUT), budget.probes)
    finally:
        release.join(WRITE_LOCK_SECONDS + 5)
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        for thread in writers:
            thread.join(WRITE_LOCK_SECONDS + REQUEST_TIMEOUT + 5)
        holder.close()


def measure_load(gateway: Server, budget: Budget) -> dict[tuple[str, int], LoadRun]:
    """(c): a dry run and a real update through the sandbox, at concurrency 1 and 16."""
    workload = REPEATABLE["ongoing"]

    def dry_run(session: requests.Session, index: int) -> requests.Response:
        return session.patch(f"{gateway.url}/orders/{DRY_RUN[0]}?dry_run=true", json=DRY_RUN[1],
                             timeout=REQUEST_TIMEOUT, stream=True)

    def update(session: requests.Session, index: int) -> requests.Response:
        return session.patch(f"{gateway.url}/orders/{workload.order_id(index)}", json=workload.document(),
                             timeout=REQUEST_TIMEOUT, stream=True)

    runs = {}
    for name, send in (("dry run", dry_run), ("update via sandbox", update)):
        for concurrency in (1, 16):
            generate_load(send, concurrency=concurrency, max_requests=4 * concurrency + 20, max_seconds=1.0)
            run = runs[name, concurrency] = generate_load(send, concurrency=concurrency,
                                                          max_requests=budget.load_requests,
                                                          max_seconds=budget.load_seconds)
            print(f"  (c) {name} at concurrency {concurrency}: {run.rate:.0f} req/s, "
                  f"p50 {milliseconds(percentile(run.latencies, 0.5))} ms, {run.connections} connections for "
                  f"{run.requests} requests, {run.errors} errors", flush=True)
    return runs


# --- the report ----------------------------------------------------------------------------------------------------

def statuses(codes: list[int]) -> str:
    """HTTP statuses counted: '502 x15, 503 x1'."""
    return ", ".join(f"{code} x{codes.count(code)}" for code in sorted(set(codes))) or "none"


def report(all_figures: list[Figures], budget: Budget, seconds: float) -> Section:
    """The tables of every candidate, side by side."""
    from bench.report import machine_description

    machine = ", ".join(f"{what} {value}" for what, value in machine_description())
    section = Section(
        "Serving model",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}; {WORKERS} gunicorn workers per candidate with the "
        f"settings of config/gunicorn.py (only the worker model replaced), one sandbox (1 worker, "
        f"{SANDBOX_THREADS} threads); {seconds:.0f} s in all. Probes time out after {PROBE_TIMEOUT:g} s; load runs "
        f"are at most {budget.load_requests} requests or {budget.load_seconds:g} s, after a warm-up.",
    )
    pressure = section.table("under pressure", [
        "candidate", "worker model", f"(a) GET /events beside {SLOW_CLIENTS} slow clients",
        "slow clients still open", f"(b) dry run beside {HANGING_REQUESTS} hanging requests",
        "backend calls in flight", "hanging requests' replies"])
    for figures in all_figures:
        pressure.add(figures.candidate, figures.description, figures.slow.summary(),
                     f"{figures.slow_still_open}/{SLOW_CLIENTS}", figures.hanging.summary(),
                     f"{figures.backend_calls_in_flight}/{HANGING_REQUESTS}", statuses(figures.hanging_statuses))
    section.note("(b): a connection's bulkhead lets max_concurrent_calls (8) calls per worker process through; the "
                 "others wait its queue_timeout (2 s) and are answered 503. The hanging calls end with 502 when the "
                 "fake backend closes their connections; under sync workers the requests still queued then find "
                 "it gone (503).")
    section.note("(c): 'shipped' is config/gunicorn.py as it is; 'TCP connections opened' counts the sockets the "
                 "replies came on, so with keep-alive it is the number of client threads.")
    load = section.table("(c) plain load, keep-alive clients (a requests.Session per client thread)", [
        "candidate", "request", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms",
        "TCP connections opened", "`Connection: close` replies"])
    for figures in all_figures:
        for (name, concurrency), run in figures.load.items():
            load.add(figures.candidate, name, concurrency, run.requests, run.errors, f"{run.rate:.0f}",
                     milliseconds(percentile(run.latencies, 0.5)), milliseconds(percentile(run.latencies, 0.99)),
                     run.connections, run.closing_replies)
            if run.errors:
                section.note(f"{figures.candidate}, {name} at concurrency {concurrency}: {run.errors} errors, "
                             f"the first: {run.first_error}")
    n = budget.fd_requests
    resources = section.table("(d) all workers' open file descriptors and RSS, GET /events each on a new connection", [
        "candidate", "fds at the start", f"fds after {n}", f"fds after {2 * n}", "RSS MiB at the start",
        f"RSS MiB after {n}", f"RSS MiB after {2 * n}"])
    for figures in all_figures:
        resources.add(figures.candidate, *(fds for fds, _ in figures.resources),
                      *(f"{rss:.0f}" for _, rss in figures.resources))
    locked = section.table(f"(e) {WEBHOOK_WRITERS} webhooks waiting {WRITE_LOCK_SECONDS:g} s for the events "
                           "database's write lock", ["candidate", "dry runs meanwhile", "webhooks' replies"])
    for figures in all_figures:
        locked.add(figures.candidate, figures.locked.summary(), statuses(figures.webhook_statuses))
    return section


def main() -> None:
    """Measure every candidate and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of the work, for smoke tests")
    parser.add_argument("--only", action="append", choices=[candidate.name for candidate in CANDIDATES],
                        help="measure only this candidate (repeatable)")
    options = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so every server started so far is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    budget = Budget.smoke() if options.quick else Budget.full()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-serving-model-") as scratch:
        folder = Path(scratch)
        sandbox = start_gunicorn("sandbox", ["--no-control-socket", "--workers", "1", "--threads",
                                             str(SANDBOX_THREADS), "sandbox:create_app()"],
                                 environment_without_backend_urls(), folder)
        try:
            sandbox.wait_until_serving("/ongoing/orders")
            all_figures = []
            for candidate in CANDIDATES:
                if options.only and candidate.name not in options.only:
                    continue
                if candidate.name == "gevent" and importlib.util.find_spec("gevent") is None:
                    print("\ngevent: not installed (`.venv/bin/python -m pip install gevent`), skipped", flush=True)
                    continue
                all_figures.append(measure_candidate(candidate, sandbox, folder, budget))
        finally:
            sandbox.stop()
    print("\n" + report(all_figures, budget, time.monotonic() - started).as_markdown())


if __name__ == "__main__":
    main()
