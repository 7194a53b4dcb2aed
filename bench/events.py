"""Event pipeline: the lag from a webhook's 202 to its delivery, webhook intake against a server that only answers
202, and how fast the worker drains a backlog, with the SQLite and with the Redis store.

Everything runs as `make run` runs it, on free 127.0.0.1 ports: the gateway under gunicorn (`config/gunicorn.py`,
2 workers) and its event worker (`python -m gateway.events.worker`), one pair per store, each delivering to a
subscriber of its own that answers 204 at once and notes when each event arrived (bench/fast_subscriber.py);
beside them bench/accept_app.py, the intake's lower bound, under the same gunicorn settings; for the Redis
figures a redis-server of the run's own (skipped, and said so, when none is installed). The lag comes from a
Python client sending one webhook at a time, the intake from wrk. Run alone: `python -m bench.events [--quick]`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.measure import Budget, Section, milliseconds, percentile
from bench.resilience_cost import RedisServer, running_redis_server
from bench.servers import Server, start_gunicorn
from bench.workload import (
    ROOT,
    environment_without_backend_urls,
    recent_ongoing_timestamp,
    sandbox_urls,
    write_config_copy,
)
from bench.wrk import WrkResult, run_wrk, write_script
from gateway.backends import BACKENDS
from gateway.config import read_config_file
from gateway.connections import Connection
from gateway.events import EventService

CONNECTION = "ongoing-demo"
WEBHOOK_PATH = f"/webhooks/ongoing/{CONNECTION}"
#: the sandbox configuration's webhook credentials for that connection (HTTP Basic)
WEBHOOK_USER, WEBHOOK_PASSWORD = "ongoing-webhooks", "webhook-demo-password"
SUBSCRIBER = "demo"
GATEWAY_WORKERS = 2
CONCURRENCIES = (1, 16)
INTAKE_TARGET = 0.50  # of the baseline's 202s per second, at each concurrency
LAG_TARGET = 0.050  # seconds from the webhook's 202 to the subscriber's receipt, p50
#: the webhooks spread over this many orders, about five events each in a full backlog, as an order's webhooks
#: come (created, status changes, picked): the worker drains one stream per (subscriber, order)
ORDERS = 2_000
#: a webhook as Ongoing sends it: its id, then its order twice (id and number)
TEMPLATE = ('{"webhookEventId": %d, "system": "bench", "timestamp": "' + recent_ongoing_timestamp() + '", '
            '"orderId": %d, "orderNumber": "SO-%d", "webhookTemplate": "OrderStatusChanged", '
            '"orderStatus": {"number": 300}}')
#: where every backend connection points: nothing in this section calls a backend
NO_BACKEND = "http://127.0.0.1:9"
#: wrk runs on the last CPU (on a 2-core machine the servers share it)
WRK_CPU = (os.cpu_count() or 1) - 1
REQUEST_TIMEOUT = 10.0
POLL_SECONDS = 0.05
#: how long a lone webhook may take to reach the subscriber before it counts as lost
LAG_WAIT_SECONDS = 5.0
#: a worker's start-up (imports, configuration, the first poll of the queue) before it delivers anything
WORKER_START_SECONDS = 30.0
#: the share of a drain's arrivals left out at each end for its steady delivery rate
STEADY_TRIM = 0.10
#: after a drain's last delivery, how long the worker's queue is watched to see how fast it empties
TAIL_SECONDS = 1.0
#: the share of a store's time that storing its backlog may take at most
FILL_SHARE = 0.25


@dataclass(frozen=True)
class Plan:
    """How much work the section does: the full run or a smoke test."""

    lag_samples: int  # lone webhooks per store
    lag_gap: tuple[float, float]  # seconds between one lag sample and the next (uniform)
    intake_seconds: int  # per wrk run (wrk counts whole seconds)
    backlog: int  # deliveries pending when the worker is started
    fill_seconds: float  # deadline for storing them
    drain_seconds: float  # deadline of one drain, after the worker's start-up
    section_seconds: float  # the whole section's: the drains get what the earlier parts left of it

    @classmethod
    def for_budget(cls, budget: Budget) -> Plan:
        """Counts derived from the budget: about two minutes for both stores on the full one."""
        if budget.quick:
            return cls(lag_samples=15, lag_gap=(0.05, 0.15), intake_seconds=1, backlog=500, fill_seconds=20.0,
                       drain_seconds=30.0, section_seconds=60.0)
        return cls(lag_samples=40, lag_gap=(0.05, 0.15), intake_seconds=2, backlog=10_000, fill_seconds=30.0,
                   drain_seconds=60.0, section_seconds=115.0)


def basic_authorization() -> str:
    """The Authorization header of the webhook credentials."""
    token = base64.b64encode(f"{WEBHOOK_USER}:{WEBHOOK_PASSWORD}".encode()).decode("ascii")
    return f"Basic {token}"


def webhook_body(webhook_id: int, order_id: int) -> bytes:
    """One webhook's body."""
    return (TEMPLATE % (webhook_id, order_id, order_id)).encode("utf-8")


def write_webhook_script(folder: Path, *, first_id: int, first_order: int) -> Path:
    """A wrk script of webhooks with ids above `first_id`, unique across wrk's connections, spread over ORDERS
    orders from `first_order` on."""
    order = f"{int(first_order)} + n % {ORDERS}"
    return write_script(folder, body_template=TEMPLATE, method="POST", path=WEBHOOK_PATH,
                        headers={"Content-Type": "application/json", "Authorization": basic_authorization()},
                        unique_base=first_id, values=f"n, {order}, {order}")


class Identifiers:
    """Webhook ids and order ids that no earlier request of the run used."""

    def __init__(self) -> None:
        self.block = 0

    def next_block(self) -> tuple[int, int]:
        """The first webhook id and the first order id of a new block (ten million ids, ten thousand orders)."""
        self.block += 1
        return self.block * 10_000_000, self.block * 10_000


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM a process group we started, SIGKILL it if it lingers, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Pipeline:
    """One store's gateway, subscriber and (when started) event worker, and the section's questions to them."""

    def __init__(self, name: str, folder: Path, redis_url: str | None, stack: contextlib.ExitStack) -> None:
        self.name, self.folder = name, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = write_config_copy(folder)
        if redis_url is not None:
            commented = '# redis_url = "redis://127.0.0.1:6379/0"'
            text = self.config.read_text()
            if commented not in text:
                raise RuntimeError(f"{self.config}: expected the line {commented!r}")
            self.config.write_text(text.replace(commented, f'redis_url = "{redis_url}"'))
        base_env = environment_without_backend_urls()
        self.subscriber = start_gunicorn(f"{name}-subscriber", [
            "--no-control-socket", "--workers", "1", "--worker-class", "gthread", "--threads", "16",
            "bench.fast_subscriber:app"], base_env, folder)
        stack.callback(self.subscriber.stop)
        self.env = {**base_env, **sandbox_urls(NO_BACKEND), "GATEWAY_CONFIG": str(self.config),
                    "DEMO_SUBSCRIBER_URL": self.subscriber.url + "/events",
                    "GATEWAY_METRICS_DIR": str(folder / "metrics")}
        self.gateway = start_gunicorn(f"{name}-gateway", ["--config", "config/gunicorn.py", "--workers",
                                                          str(GATEWAY_WORKERS), "wsgi:app"], self.env, folder)
        stack.callback(self.gateway.stop)
        self.worker: subprocess.Popen | None = None
        stack.callback(self.stop_worker)
        self.service: EventService | None = None
        self.connection: Connection | None = None
        stack.callback(self.close_service)
        self.session = requests.Session()
        self.session.trust_env = False
        stack.callback(self.session.close)

    def wait_until_serving(self) -> None:
        """Wait for the subscriber and the gateway; then open the store and the queue as the gateway made them."""
        self.subscriber.wait_until_serving("/count")
        self.gateway.wait_until_serving("/openapi.json")
        settings = read_config_file(self.config, BACKENDS)
        self.service = EventService(settings)
        self.connection = Connection(settings.connections[CONNECTION], BACKENDS["ongoing"])

    def close_service(self) -> None:
        """Release the section's own connections to the store and the queue."""
        if self.connection is not None:
            self.connection.close()
        if self.service is not None:
            self.service.close()

    def start_worker(self) -> float:
        """Start the event worker as `make run` does; the time.time() it was started at."""
        env = {**self.env, "GATEWAY_LOG_FORMAT": "text"}
        started = time.time()
        with open(self.folder / "worker.log", "ab") as output:
            self.worker = subprocess.Popen([sys.executable, "-m", "gateway.events.worker"], cwd=ROOT, env=env,
                                           stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        return started

    def stop_worker(self) -> None:
        """Stop the event worker if it runs."""
        if self.worker is not None:
            stop_process_group(self.worker)
            self.worker = None

    def check_worker(self) -> None:
        """Fail with the end of its log if the worker has exited."""
        if self.worker is not None and self.worker.poll() is not None:
            log = self.folder / "worker.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else "(no log)"
            raise RuntimeError(f"{self.name}: the event worker exited with {self.worker.returncode}:\n{tail}")

    def pending(self) -> int:
        """Deliveries to the subscriber pending in the store."""
        return self.service.store.pending_counts([SUBSCRIBER])[SUBSCRIBER]

    def queued_tasks(self) -> int:
        """Tasks waiting in the worker's queue (huey's, in the SQLite queue file or in Redis)."""
        return self.service.queue.huey.pending_count()

    def store_in_process(self, webhook_id: int, order_id: int) -> bool:
        """What the webhook route does with an authenticated webhook, without HTTP: the Ongoing backend's
        `read_webhook`, the store's `add_event`, the queue's `nudge` per subscriber. Whether it was new."""
        event = self.connection.backend.read_webhook(json.loads(webhook_body(webhook_id, order_id)))
        subscribers = self.service.subscribers_for(event.type)
        _, created = self.service.store.add_event(event.to_document(), dedupe_key=event.dedupe_key,
                                                  order_key=event.order_key, subscribers=subscribers,
                                                  trace_context={})
        if created:
            for subscriber in subscribers:
                self.service.queue.nudge(subscriber, event.order_key)
        return created

    def reset_subscriber(self) -> None:
        """Make the subscriber forget every arrival."""
        self.session.post(self.subscriber.url + "/_reset", timeout=REQUEST_TIMEOUT).raise_for_status()

    def subscriber_count(self) -> dict:
        """The subscriber's counts and its first and latest arrival."""
        reply = self.session.get(self.subscriber.url + "/count", timeout=REQUEST_TIMEOUT)
        reply.raise_for_status()
        return reply.json()

    def arrivals(self) -> list[float]:
        """Every first arrival's time.time(), in arrival order."""
        reply = self.session.get(self.subscriber.url + "/arrivals", timeout=REQUEST_TIMEOUT)
        reply.raise_for_status()
        return [at for _, at in reply.json()["arrivals"]]

    def arrival_of(self, event_id: str, seconds: float) -> float | None:
        """When the subscriber received `event_id`, waiting up to `seconds` for it; None if it did not come."""
        reply = self.session.get(self.subscriber.url + "/wait", params={"id": event_id, "timeout": seconds},
                                 timeout=seconds + REQUEST_TIMEOUT)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()["at"]

    def wait_for_deliveries(self, count: int, seconds: float) -> dict:
        """Poll the subscriber until it has `count` events or `seconds` passed; its last count."""
        deadline = time.monotonic() + seconds
        while True:
            seen = self.subscriber_count()
            if seen["received"] >= count or time.monotonic() >= deadline:
                return seen
            self.check_worker()
            time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def running_pipelines(folder: Path, redis_url: str | None) -> Iterator[tuple[Server, dict[str, Pipeline]]]:
    """The baseline app and a pipeline per store, started side by side; every process stopped on the way out."""
    with contextlib.ExitStack() as stack:
        env = {**environment_without_backend_urls(), "GATEWAY_METRICS_DIR": str(folder / "metrics")}
        # config/gunicorn.py sizes the open-files limit from the app's gateway settings: the baseline reads a copy
        # of the gateway's configuration for that alone
        (folder / "baseline").mkdir(parents=True, exist_ok=True)
        env.update(sandbox_urls(NO_BACKEND), GATEWAY_CONFIG=str(write_config_copy(folder / "baseline")))
        baseline = start_gunicorn("baseline", ["--config", "config/gunicorn.py", "--workers", str(GATEWAY_WORKERS),
                                               "bench.accept_app:app"], env, folder)
        stack.callback(baseline.stop)
        pipelines = {"sqlite": Pipeline("sqlite", folder / "sqlite", None, stack)}
        if redis_url is not None:
            pipelines["redis"] = Pipeline("redis", folder / "redis", redis_url, stack)
        baseline.wait_until_serving("/")
        for pipeline in pipelines.values():
            pipeline.wait_until_serving()
        yield baseline, pipelines


def webhook_session() -> requests.Session:
    """A keep-alive client session that sends the webhook credentials."""
    session = requests.Session()
    session.trust_env = False
    session.headers.update({"Authorization": basic_authorization(), "Content-Type": "application/json"})
    return session


@dataclass
class Lag:
    """Lone webhooks: seconds from each 202 to the subscriber's receipt, and the webhooks' own round trips."""

    lags: list[float]
    round_trips: list[float]
    lost: int = 0


def send_lone_webhook(session: requests.Session, pipeline: Pipeline, webhook_id: int, order_id: int,
                      wait: float = LAG_WAIT_SECONDS) -> tuple[float, float, float | None]:
    """Send one webhook and wait up to `wait` for its delivery: (sent, 202 read, arrival or None), time.time()."""
    sent = time.time()
    reply = session.post(pipeline.gateway.url + WEBHOOK_PATH, data=webhook_body(webhook_id, order_id),
                         timeout=REQUEST_TIMEOUT)
    accepted = time.time()
    if reply.status_code != 202:
        raise RuntimeError(f"{pipeline.name}: a lone webhook was answered {reply.status_code}: {reply.text[:300]}")
    arrived = pipeline.arrival_of(reply.json()["id"], wait)
    return sent, accepted, arrived


def measure_lag(pipelines: dict[str, Pipeline], plan: Plan, ids: Identifiers) -> dict[str, Lag]:
    """With the workers started on empty stores: one warm-up webhook each (it waits for the worker's start-up),
    then one webhook at a time, the stores taking turns, each matched to its arrival by the reply's event id."""
    found = {name: Lag([], []) for name in pipelines}
    randomness = random.Random(20261123)  # noqa: S311 - spacing only
    first_id, first_order = ids.next_block()
    with contextlib.ExitStack() as stack:
        sessions = {name: stack.enter_context(webhook_session()) for name in pipelines}
        for name, pipeline in pipelines.items():
            _, _, arrived = send_lone_webhook(sessions[name], pipeline, first_id, first_order, WORKER_START_SECONDS)
            pipeline.check_worker()
            if arrived is None:
                raise RuntimeError(f"{name}: the worker delivered nothing within {WORKER_START_SECONDS:g} s")
        deadline = time.monotonic() + plan.lag_samples * len(pipelines) * (plan.lag_gap[1] + 0.5) + 10
        for index in range(1, plan.lag_samples + 1):
            for name, pipeline in pipelines.items():
                if time.monotonic() >= deadline:
                    break
                sent, accepted, arrived = send_lone_webhook(sessions[name], pipeline, first_id + index,
                                                            first_order + index)
                result = found[name]
                result.round_trips.append(accepted - sent)
                if arrived is None:
                    result.lost += 1
                    pipeline.check_worker()
                else:
                    result.lags.append(arrived - accepted)
                time.sleep(randomness.uniform(*plan.lag_gap))
    return found


def intake(section: Section, folder: Path, plan: Plan, baseline: Server, pipelines: dict[str, Pipeline],
           ids: Identifiers) -> dict[tuple[str, int], WrkResult]:
    """wrk against the baseline and each gateway (no worker running), taking turns, at each concurrency."""
    results: dict[tuple[str, int], WrkResult] = {}
    targets = {"baseline": baseline.url, **{name: pipeline.gateway.url for name, pipeline in pipelines.items()}}
    for concurrency in CONCURRENCIES:
        for target, url in targets.items():
            first_id, first_order = ids.next_block()
            script = write_webhook_script(folder, first_id=first_id, first_order=first_order)
            results[target, concurrency] = run_wrk(url, script, connections=concurrency,
                                                   seconds=plan.intake_seconds, cpu=WRK_CPU)
    table = section.table("webhook intake, no worker running (wrk, a webhook of its own per request)",
                          ["target", "concurrency", "202s/s", "of the baseline", "p50 ms", "p99 ms", "requests",
                           "errors"])
    for concurrency in CONCURRENCIES:
        base_rate = results["baseline", concurrency].rate
        for target in targets:
            result = results[target, concurrency]
            share = result.rate / base_rate if base_rate else 0.0
            key = f"events.{target}.intake_c{concurrency}"
            section.figures[f"{key}_per_s"] = result.rate
            section.figures[f"{key}_p50"], section.figures[f"{key}_p99"] = result.p50, result.p99
            section.figures[f"{key}_errors"] = result.errors
            if target != "baseline":
                section.figures[f"{key}_share"] = share
            label = "baseline (accept_app.py)" if target == "baseline" else f"gateway, {target}"
            table.add(label, concurrency, f"{result.rate:,.0f}", "" if target == "baseline" else f"{share:.0%}",
                      milliseconds(result.p50), milliseconds(result.p99), f"{result.requests:,}",
                      wrk_errors(result))
    return results


def wrk_errors(result: WrkResult) -> str:
    """A WrkResult's errors, by kind when there are any."""
    if not result.errors:
        return "0"
    return f"{result.errors} (non-2xx {result.non_2xx}, socket {result.socket_errors}, timeouts {result.timeouts})"


@dataclass
class Fill:
    """How a backlog was made: the intake's deliveries already pending, then webhooks stored in process."""

    before: int
    stored: int
    seconds: float
    pending: int

    @property
    def rate(self) -> float:
        """Webhooks stored and queued per second, in process."""
        return self.stored / self.seconds if self.seconds else 0.0


def fill_backlog(pipeline: Pipeline, backlog: int, ids: Identifiers, seconds: float) -> Fill:
    """Top the pending deliveries up to `backlog` in process (no worker running), bounded by `seconds`.

    Over HTTP the gateway stores a few hundred webhooks a second (the intake table): the rest of ten thousand
    would take most of the section's time, so it goes through the webhook route's store and queue calls."""
    before = pipeline.pending()
    first_id, first_order = ids.next_block()
    stored, started = 0, time.perf_counter()
    deadline = time.monotonic() + seconds
    while before + stored < backlog and time.monotonic() < deadline:
        webhook_id = first_id + stored + 1
        stored += pipeline.store_in_process(webhook_id, first_order + webhook_id % ORDERS)
    return Fill(before=before, stored=stored, seconds=time.perf_counter() - started, pending=pipeline.pending())


@dataclass
class Drain:
    """What one backlog drain saw: arrival times (time.time()) and the queue when the last event was in."""

    backlog: int
    started: float
    arrivals: list[float]
    duplicates: int
    queued_tasks: int  # when the last event had arrived
    tail_rate: float  # tasks per second the queue shrank by in the TAIL_SECONDS after
    tail_left: int  # tasks still queued after them

    @property
    def queue_empty_in(self) -> float:
        """Seconds the queue would take to empty at the tail's rate, from the last delivery on (0 when it was
        empty already, TAIL_SECONDS at most when it emptied while watched)."""
        if not self.queued_tasks:
            return 0.0
        if not self.tail_left:
            return min(self.queued_tasks / self.tail_rate, TAIL_SECONDS) if self.tail_rate > 0 else TAIL_SECONDS
        return self.queued_tasks / self.tail_rate if self.tail_rate > 0 else float("inf")

    @property
    def queue_empty_shown(self) -> str:
        """queue_empty_in for a table: "< 1" when the queue emptied while it was watched."""
        if self.queued_tasks and not self.tail_left:
            return f"< {TAIL_SECONDS:g}"
        return f"{self.queue_empty_in:.0f}"

    @property
    def delivered(self) -> int:
        """Events the subscriber received."""
        return len(self.arrivals)

    @property
    def finished(self) -> bool:
        """Whether every pending delivery arrived before the deadline."""
        return self.delivered >= self.backlog

    @property
    def startup(self) -> float:
        """Seconds from starting the worker to the first delivery."""
        return self.arrivals[0] - self.started if self.arrivals else float("nan")

    @property
    def seconds(self) -> float:
        """Seconds from starting the worker to the last delivery."""
        return self.arrivals[-1] - self.started if self.arrivals else float("nan")

    @property
    def rate(self) -> float:
        """Events per second from starting the worker to the last delivery."""
        return self.delivered / self.seconds if self.arrivals and self.seconds > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        """Events per second between the arrivals STEADY_TRIM from either end (start-up and tail left out)."""
        if len(self.arrivals) < 10:
            return 0.0
        low, high = int(len(self.arrivals) * STEADY_TRIM), int(len(self.arrivals) * (1 - STEADY_TRIM)) - 1
        span = self.arrivals[high] - self.arrivals[low]
        return (high - low) / span if span > 0 else 0.0


def drain(pipeline: Pipeline, backlog: int, seconds: float) -> Drain:
    """Start the worker on the backlog and wait until the subscriber has every pending event (or `seconds`,
    start-up included, passed); then watch the worker's queue for TAIL_SECONDS."""
    pipeline.reset_subscriber()
    started = pipeline.start_worker()
    seen = pipeline.wait_for_deliveries(backlog, seconds)
    queued, watched = pipeline.queued_tasks(), time.monotonic()
    arrivals = sorted(pipeline.arrivals())
    time.sleep(max(TAIL_SECONDS - (time.monotonic() - watched), 0.0))
    left = pipeline.queued_tasks()
    tail_rate = (queued - left) / (time.monotonic() - watched)
    return Drain(backlog=backlog, started=started, arrivals=arrivals, duplicates=seen["duplicates"],
                 queued_tasks=queued, tail_rate=tail_rate, tail_left=left)


def run_event_pipeline(budget: Budget) -> Section:
    """The idle lag, the intake against its baseline and a backlog's drain, per store."""
    plan = Plan.for_budget(budget)
    section_started = time.monotonic()
    section_deadline = section_started + plan.section_seconds

    def progress(text: str) -> None:
        print(f"  [{time.monotonic() - section_started:5.1f} s] {text}", flush=True)

    section = Section(
        "9. Event pipeline",
        "The gateway under gunicorn (`config/gunicorn.py`, 2 workers) receiving Ongoing order webhooks at "
        f"`POST {WEBHOOK_PATH}` (HTTP Basic); its event worker started as `make run` starts it (`python -m "
        "gateway.events.worker`, the configuration's worker threads) delivering each event, signed, to a "
        "subscriber that answers 204 at once and notes each arrival's `time.time()` by event id "
        "(bench/fast_subscriber.py, one gunicorn process, 16 threads). One gateway, worker and subscriber with the "
        "SQLite store, one with `[events] redis_url` on a redis-server started for the run (no persistence); all "
        "on free 127.0.0.1 ports of this machine. In this order: **lag** (from a Python client, requests with "
        "keep-alive): the workers started on empty stores and warmed up by one webhook each, then one webhook at a "
        f"time, the stores taking turns, {plan.lag_gap[0] * 1000:.0f} to {plan.lag_gap[1] * 1000:.0f} ms apart "
        "after each arrival, so the queue is idle whenever one is sent; each 202 is matched to its arrival by the "
        "event id of the reply (the client asks the subscriber to tell it when that id arrives); lag = arrival "
        "minus the moment the client had read the 202, one clock. Then the workers are stopped. **Intake** (from "
        f"wrk, pinned to CPU {WRK_CPU}; the servers share the machine with it): 202s per second over "
        f"{plan.intake_seconds} s runs at concurrency 1 and 16, every request a webhook of its own (a unique "
        f"`webhookEventId`, spread over {ORDERS:,} orders), against bench/accept_app.py (the same gunicorn "
        "settings and workers; reads the body and answers 202 with a small JSON: no authentication, validation or "
        "storing), the baseline and the gateways taking turns; no worker runs, so nothing is delivered while "
        "intake is measured. **Backlog**: the intake's events stay pending; the store is topped up with the "
        "worker still stopped, in the section's process, through the calls the webhook route makes (the Ongoing "
        "backend's `read_webhook`, the store's `add_event`, the queue's `nudge`), spread over orders alike, until "
        f"{plan.backlog:,} deliveries are pending; then the worker is started and timed until the subscriber has "
        "them all. Its delivery throughput is the drain's steady part: the arrivals between the "
        f"{STEADY_TRIM:.0%} and the {1 - STEADY_TRIM:.0%} mark, start-up and tail left out.",
    )
    with tempfile.TemporaryDirectory(prefix="gateway-bench-events-") as scratch:
        folder = Path(scratch)
        with running_redis_server(folder) as redis_server:
            if redis_server.url is None:
                print(f"  Redis figures skipped: {redis_server.unavailable}", flush=True)
            with running_pipelines(folder, redis_server.url) as (baseline, pipelines):
                ids = Identifiers()
                threads = pipelines["sqlite"].service.settings.events.worker_threads
                progress("lag ...")
                for pipeline in pipelines.values():
                    pipeline.start_worker()
                try:
                    lags = measure_lag(pipelines, plan, ids)
                finally:
                    for pipeline in pipelines.values():
                        pipeline.stop_worker()
                progress("intake ...")
                intake_results = intake(section, folder, plan, baseline, pipelines, ids)
                fills: dict[str, Fill] = {}
                drains: dict[str, Drain] = {}
                for index, (name, pipeline) in enumerate(pipelines.items()):
                    # each store gets an equal part of the time left, the last one what the first left over
                    share = (section_deadline - time.monotonic()) / (len(pipelines) - index)
                    progress(f"{name}: a backlog of {plan.backlog:,} (within {share:.0f} s) ...")
                    fills[name] = fill_backlog(pipeline, plan.backlog, ids,
                                               min(plan.fill_seconds, max(share * FILL_SHARE, 1.0)))
                    seconds = share - fills[name].seconds - TAIL_SECONDS - 1.0  # a second to stop the worker
                    try:
                        drains[name] = drain(pipeline, fills[name].pending,
                                             min(WORKER_START_SECONDS + plan.drain_seconds, max(seconds, 5.0)))
                    finally:
                        pipeline.stop_worker()
                progress("stopping the servers ...")
    progress("done")
    report(section, plan, lags, intake_results, fills, drains, redis_server, threads)
    return section


def report(section: Section, plan: Plan, lags: dict[str, Lag], intake_results: dict[tuple[str, int], WrkResult],
           fills: dict[str, Fill], drains: dict[str, Drain], redis_server: RedisServer, threads: int) -> None:
    """The tables, figures, verdicts and notes of what was measured (`threads`: the worker's consumer threads)."""
    figures = section.figures
    table = section.table(f"draining a backlog (at least {plan.backlog:,} deliveries pending, stored with the worker "
                          "stopped; then the worker started)",
                          ["store", "pending", "of which from the intake", "delivered",
                           "worker start → first delivery s", "worker start → last delivery s", "events/s, whole drain",
                           "delivery throughput, events/s (steady part)", "tasks queued at the last delivery",
                           "queue empty ≈ s later", "duplicates"])
    for name, result in drains.items():
        fill, key = fills[name], f"events.{name}.drain"
        figures[f"{key}_events"], figures[f"{key}_delivered"] = result.backlog, result.delivered
        figures[f"{key}_seconds"], figures[f"{key}_per_s"] = result.seconds, result.rate
        figures[f"{key}_startup"], figures[f"{key}_queued_tasks"] = result.startup, result.queued_tasks
        figures[f"{key}_queue_empty_in"] = result.queue_empty_in
        figures[f"events.{name}.delivery_per_s"] = result.steady_rate
        if fill.stored:
            figures[f"events.{name}.store_in_process_per_s"] = fill.rate
        table.add(name, f"{result.backlog:,}", f"{fill.before:,}",
                  f"{result.delivered:,}" + ("" if result.finished else " (deadline)"), f"{result.startup:.2f}",
                  f"{result.seconds:.2f}", f"{result.rate:,.0f}", f"{result.steady_rate:,.0f}",
                  f"{result.queued_tasks:,}", result.queue_empty_shown, result.duplicates)
    table = section.table("lag from the webhook's 202 to the subscriber's receipt, idle queue (Python client)",
                          ["store", "p50 ms", "p99 ms", "max ms", "count", "lost", "the webhook's round trip p50 ms"])
    for name, result in lags.items():
        key = f"events.{name}.lag"
        p50, p99 = percentile(result.lags, 0.5), percentile(result.lags, 0.99)
        most = max(result.lags) if result.lags else float("nan")
        figures[f"{key}_p50"], figures[f"{key}_p99"], figures[f"{key}_max"] = p50, p99, most
        figures[f"{key}_count"], figures[f"{key}_lost"] = len(result.lags), result.lost
        table.add(name, milliseconds(p50), milliseconds(p99), milliseconds(most), len(result.lags), result.lost,
                  milliseconds(percentile(result.round_trips, 0.5)))

    for name in lags:
        details, passed = [], True
        for concurrency in CONCURRENCIES:
            gateway, base = intake_results[name, concurrency], intake_results["baseline", concurrency]
            share = gateway.rate / base.rate if base.rate else 0.0
            passed = passed and share >= INTAKE_TARGET and gateway.errors == 0 and base.errors == 0
            margin = (f"{(share - INTAKE_TARGET) * 100:.0f} points over" if share >= INTAKE_TARGET
                      else f"{(INTAKE_TARGET - share) * 100:.0f} points under")
            errors = f", {wrk_errors(gateway)} errors" if gateway.errors else ""
            details.append(f"c{concurrency}: {share:.0%} ({gateway.rate:,.0f} vs {base.rate:,.0f}/s, {margin}{errors})")
        section.judge(f"webhook intake ({name}) ≥ {INTAKE_TARGET:.0%} of the baseline's 202s/s at concurrency 1 "
                      "and 16", passed, "; ".join(details))
    for name, result in lags.items():
        p50, p99 = figures[f"events.{name}.lag_p50"], figures[f"events.{name}.lag_p99"]
        shown = (f"p50 {milliseconds(p50)} ms (p99 {milliseconds(p99)} ms, {len(result.lags)} webhooks"
                 f"{f', {result.lost} lost' if result.lost else ''})")
        if p50 <= LAG_TARGET:
            detail = f"{shown}, {milliseconds(LAG_TARGET - p50)} ms under"
        else:
            detail = f"{shown}, {p50 / LAG_TARGET:.1f}x the target, {milliseconds(p50 - LAG_TARGET)} ms over"
        section.judge(f"lag from 202 to delivery ({name}) ≤ {LAG_TARGET * 1000:.0f} ms p50, idle queue",
                      p50 <= LAG_TARGET and result.lost == 0, detail)
    notes(section, plan, lags, intake_results, fills, drains, redis_server, threads)


def notes(section: Section, plan: Plan, lags: dict[str, Lag], intake_results: dict[tuple[str, int], WrkResult],
          fills: dict[str, Fill], drains: dict[str, Drain], redis_server: RedisServer, threads: int) -> None:
    """What the figures say beyond the tables (`threads`: the worker's consumer threads)."""
    if redis_server.url is None:
        section.note(f"Redis figures were skipped: {redis_server.unavailable}.")
    base = intake_results["baseline", 1].rate
    for name, fill in fills.items():
        gateway = intake_results[name, 1].rate
        if not (fill.stored and gateway and base):
            continue
        whole, floor, stored = 1000 / gateway, 1000 / base, 1000 / fill.rate
        section.note(
            f"Where a webhook's time goes ({name}): at concurrency 1 the gateway takes {whole:.2f} ms per webhook "
            f"(1 / its 202s per second), the baseline {floor:.2f} ms; reading the payload with the Ongoing backend "
            f"(validation included), storing the event and queueing its delivery take {stored:.2f} ms of it, timed "
            f"in the section's process without HTTP and on one thread while the backlog was topped up "
            f"({fill.rate:,.0f}/s); the other {max(whole - floor - stored, 0.0):.2f} ms are the rest of the request "
            "in the gateway: Flask and the app's request hooks, the Basic check, reading the body, metrics and the "
            "access log line.")
    if ("sqlite", 16) in intake_results and ("redis", 16) in intake_results:
        sqlite, shared = intake_results["sqlite", 16], intake_results["redis", 16]
        section.note(
            f"At concurrency 16 the SQLite gateway's intake p99 is {milliseconds(sqlite.p99)} ms against "
            f"{milliseconds(shared.p99)} ms with Redis (p50 {milliseconds(sqlite.p50)} and "
            f"{milliseconds(shared.p50)} ms): every webhook commits to the event file (synced to disk, "
            "`synchronous = FULL`) and to the queue file, and SQLite lets one writer at a time into each.")
    for name, result in drains.items():
        if not result.finished:
            section.note(f"The {name} drain reached its deadline: {result.delivered:,} of {result.backlog:,} events "
                         f"arrived in {result.seconds:.1f} s; the section's {plan.section_seconds:g} s were spent.")
    busy = {name: result for name, result in drains.items() if result.queued_tasks}
    if busy:
        listed = "; ".join(f"{name}: {result.queued_tasks:,} tasks, " + (
            f"gone within {TAIL_SECONDS:g} s" if not result.tail_left else
            f"shrinking by {result.tail_rate:,.0f}/s, so about {result.queue_empty_in:.0f} s more")
            for name, result in busy.items())
        section.note(
            "When the last event of the backlog arrived, the worker's queue still held nearly a task per event "
            f"({listed}): every webhook nudges its order's stream, the first task of a stream delivers all that "
            "stream holds and the others find nothing left. The queue is first in, first out, so a webhook that "
            "arrives right after a drain waits behind those tasks.")
    if "sqlite" in lags:
        section.note(
            f"The SQLite queue is polled: each of the worker's {threads} consumer threads looks again 0.05 s after "
            "finding nothing, then 1.15 times longer each time up to 0.5 s (gateway/events/worker.py: `initial_delay`, "
            "`max_delay`; huey's backoff), so the SQLite lag depends on how long the queue was idle. These lone "
            f"webhooks came {plan.lag_gap[0] * 1000:.0f} to {plan.lag_gap[1] * 1000:.0f} ms after the previous arrival "
            "plus the other store's turn; after about 4 s of silence every thread waits the full 0.5 s between "
            "looks and a webhook can wait that long for its delivery to start. With Redis the threads block on "
            "the queue (BRPOP) and take a task as soon as it is queued.")
    if min(len(result.lags) for result in lags.values()) < 100:
        section.note("With fewer than 100 lone webhooks per store, the p99 of the lag is its maximum.")


def main() -> None:
    """Run this section alone."""
    # A SIGTERM unwinds like Ctrl-C, so every server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    budget = Budget.from_command_line(__doc__.splitlines()[0])
    started = time.monotonic()
    section = run_event_pipeline(budget)
    print(section.as_markdown())
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
