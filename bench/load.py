"""End to end over HTTP: the gateway under gunicorn against its bounds, per backend, at concurrency 1 and 16.

Three targets take the same repeatable updates side by side: the gateway (PATCH /orders/<id>), the passthrough
app (bench/passthrough_app.py: the same gunicorn settings forwarding a pre-rendered document, no translation) and
the sandbox itself (direct: the pre-rendered document sent by the load generator). The load generator is a pool
of threads, each with its own keep-alive requests.Session, bounded by a request count and a deadline.

Run alone: `python -m bench.load [--quick]`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from bench.measure import Budget, Section, milliseconds, percentile
from bench.passthrough_app import transport_auth
from bench.servers import Deployment
from bench.workload import DEMO_KEY, REPEATABLE

TARGETS = ("gateway", "passthrough", "direct")
CONCURRENCIES = (1, 16)
REQUEST_TIMEOUT = 15.0
THROUGHPUT_TARGET = 0.80  # of the passthrough's requests/s
ADDED_LATENCY_TARGET = 0.001  # seconds over direct, at p50 and concurrency 1

#: send(session, index) -> HTTP status of the index-th request
Sender = Callable[[requests.Session, int], int]


@dataclass
class LoadResult:
    """What one load run saw."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str | None = None

    @property
    def rate(self) -> float:
        """Completed requests per second of wall time."""
        return self.requests / self.seconds if self.seconds else 0.0

    def latency(self, fraction: float) -> float:
        """A latency percentile in seconds."""
        return percentile(self.latencies, fraction)

    def merged(self, other: LoadResult) -> LoadResult:
        """Two runs as one (their wall times added)."""
        return LoadResult(self.requests + other.requests, self.errors + other.errors, self.seconds + other.seconds,
                          self.latencies + other.latencies, self.first_error or other.first_error)


def keep_alive_session() -> requests.Session:
    """A client session that reuses its connection and ignores proxies from the environment."""
    session = requests.Session()
    session.trust_env = False
    # The gateway wants the demo caller's key; the sandboxes and the passthrough ignore it.
    session.headers["Authorization"] = f"Bearer {DEMO_KEY}"
    return session


def generate_load(send: Sender, *, concurrency: int, max_requests: int, max_seconds: float) -> LoadResult:
    """Run `send` from `concurrency` threads until `max_requests` were sent or `max_seconds` passed."""
    tickets = itertools.count()
    deadline = time.monotonic() + max_seconds
    result = LoadResult()
    lock = threading.Lock()

    def client() -> None:
        latencies: list[float] = []
        errors = 0
        first_error = None
        with keep_alive_session() as session:
            while time.monotonic() < deadline:
                index = next(tickets)
                if index >= max_requests:
                    break
                started = time.perf_counter()
                try:
                    status = send(session, index)
                except requests.RequestException as error:
                    status, first_error = 0, first_error or f"{type(error).__name__}: {error}"
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
                    first_error = first_error or f"HTTP {status}"
        with lock:
            result.requests += len(latencies)
            result.errors += errors
            result.latencies.extend(latencies)
            result.first_error = result.first_error or first_error

    threads = [threading.Thread(target=client, name=f"load-{n}") for n in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + REQUEST_TIMEOUT + 5)
    result.seconds = time.perf_counter() - started
    return result


def gateway_sender(base_url: str, backend: str) -> Sender:
    """PATCH /orders/<id> on the gateway with the backend's repeatable canonical document."""
    workload = REPEATABLE[backend]
    document = workload.document()

    def send(session: requests.Session, index: int) -> int:
        return session.patch(f"{base_url}/orders/{workload.order_id(index)}", json=document,
                             timeout=REQUEST_TIMEOUT).status_code
    return send


def passthrough_sender(base_url: str, backend: str) -> Sender:
    """The same canonical document to the passthrough app, which forwards the pre-rendered one."""
    workload = REPEATABLE[backend]
    document = workload.document()

    def send(session: requests.Session, index: int) -> int:
        return session.patch(f"{base_url}/{backend}/{workload.order_id(index)}", json=document,
                             timeout=REQUEST_TIMEOUT).status_code
    return send


def direct_sender(documents: dict, backend: str) -> Sender:
    """The pre-rendered document straight to the sandbox, authenticated as the gateway authenticates."""
    workload = REPEATABLE[backend]
    entry = documents[backend]
    auth = transport_auth(entry["auth"])
    rendered = {order_id: {**request, "body": request["body"].encode("utf-8")}
                for order_id, request in entry["orders"].items()}

    def send(session: requests.Session, index: int) -> int:
        request = rendered[workload.order_id(index)]
        return session.request(request["method"], request["url"], headers=request["headers"], data=request["body"],
                               auth=auth, timeout=REQUEST_TIMEOUT, allow_redirects=False).status_code
    return send


def senders(deployment: Deployment, backend: str) -> dict[str, Sender]:
    """Target name -> its sender for this backend."""
    documents = json.loads(deployment.documents.read_text())
    return {
        "gateway": gateway_sender(deployment.gateway.url, backend),
        "passthrough": passthrough_sender(deployment.passthrough.url, backend),
        "direct": direct_sender(documents, backend),
    }


def check_every_order_succeeds(deployment: Deployment) -> set[str]:
    """Each repeatable update answers 200 through the gateway, so the load measures successes only.

    Returns the Connection headers the gateway answered with (how its workers treat keep-alive).
    """
    connection_headers = set()
    with keep_alive_session() as session:
        for backend, workload in REPEATABLE.items():
            for order_id in workload.order_ids:
                reply = session.patch(f"{deployment.gateway.url}/orders/{order_id}", json=workload.document(),
                                      timeout=REQUEST_TIMEOUT)
                if reply.status_code != 200:
                    raise RuntimeError(f"{backend}: {order_id} answered HTTP {reply.status_code}: {reply.text}")
                connection_headers.add(reply.headers.get("Connection", "(none)"))
    return connection_headers


def run_end_to_end(deployment: Deployment, budget: Budget) -> Section:
    """Requests/s and latency of gateway, passthrough and direct, per backend and concurrency."""
    section = Section(
        "2. End to end over HTTP",
        "The gateway (gunicorn, `config/gunicorn.py`: 2 gthread workers with keep-alive) beside the "
        "passthrough app (same gunicorn settings, forwards a pre-rendered document with one pooled session) and "
        "direct calls to the sandbox (gunicorn, 1 worker, 8 threads). The load generator runs in the benchmark's "
        f"process: threads with their own keep-alive sessions, at most {budget.load_requests} requests or "
        f"{budget.load_seconds:g} s per target and repetition, {budget.load_repetitions} repetition(s) in "
        "alternating target order after a warm-up. "
        "Latency is the client's (request sent to reply read). Everything shares the machine's 2 cores.",
    )
    connection_headers = check_every_order_succeeds(deployment)
    if "close" in {header.lower() for header in connection_headers}:
        section.note("The gateway's gunicorn workers answer `Connection: close` (sync workers keep no connection "
                     "alive, whatever `keepalive` says), so every request to the gateway and to the passthrough "
                     "opens a new TCP connection; direct calls reuse theirs (the sandbox runs gthread workers).")
    table = section.table("throughput and latency",
                          ["backend", "concurrency", "target", "requests", "errors", "req/s", "p50 ms", "p99 ms"])
    results: dict[tuple[str, int, str], LoadResult] = {}
    for backend in REPEATABLE:
        by_target = senders(deployment, backend)
        for concurrency in CONCURRENCIES:
            for send in by_target.values():  # warm-up: connections, pools, caches of every process
                generate_load(send, concurrency=concurrency, max_requests=max(50, 4 * concurrency), max_seconds=1.0)
            merged = {target: LoadResult() for target in TARGETS}
            for repetition in range(budget.load_repetitions):
                order = TARGETS if repetition % 2 == 0 else tuple(reversed(TARGETS))
                for target in order:
                    merged[target] = merged[target].merged(generate_load(
                        by_target[target], concurrency=concurrency, max_requests=budget.load_requests,
                        max_seconds=budget.load_seconds))
            for target in TARGETS:
                result = results[backend, concurrency, target] = merged[target]
                section.figures[f"{backend} {concurrency} {target} p50"] = result.latency(0.5)
                section.figures[f"{backend} {concurrency} {target} rate"] = result.rate
                table.add(backend, concurrency, target, result.requests, result.errors, f"{result.rate:.0f}",
                          milliseconds(result.latency(0.5)), milliseconds(result.latency(0.99)))
                if result.errors:
                    section.note(f"{backend} at concurrency {concurrency}, {target}: {result.errors} errors, "
                                 f"the first: {result.first_error}")

    bounds = section.table("the gateway against its bounds",
                           ["backend", "concurrency", "gateway req/s ÷ passthrough req/s",
                            "gateway p50 - passthrough p50 (ms)", "gateway p50 - direct p50 (ms)"])
    for backend in REPEATABLE:
        for concurrency in CONCURRENCIES:
            gateway, passthrough, direct = (results[backend, concurrency, target] for target in TARGETS)
            share = gateway.rate / passthrough.rate if passthrough.rate else 0.0
            bounds.add(backend, concurrency, f"{share:.0%}",
                       milliseconds(gateway.latency(0.5) - passthrough.latency(0.5)),
                       milliseconds(gateway.latency(0.5) - direct.latency(0.5)))
            section.judge(
                f"{backend}, concurrency {concurrency}: gateway throughput ≥ {THROUGHPUT_TARGET:.0%} of passthrough",
                share >= THROUGHPUT_TARGET,
                f"{share:.0%} ({gateway.rate:.0f} vs {passthrough.rate:.0f} req/s; "
                f"{(share - THROUGHPUT_TARGET) * 100:+.1f} points against the target)",
            )
    for backend in REPEATABLE:
        gateway, direct = results[backend, 1, "gateway"], results[backend, 1, "direct"]
        added = gateway.latency(0.5) - direct.latency(0.5)
        section.judge(
            f"{backend}, concurrency 1: gateway adds ≤ {ADDED_LATENCY_TARGET * 1000:g} ms at p50 over direct",
            added <= ADDED_LATENCY_TARGET,
            f"adds {milliseconds(added)} ms ({milliseconds(gateway.latency(0.5))} vs "
            f"{milliseconds(direct.latency(0.5))} ms; {milliseconds(added - ADDED_LATENCY_TARGET)} ms "
            "against the target)",
        )
    return section


def main() -> None:
    """Run this section alone against a fresh deployment."""

    from bench.servers import running_deployment

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    with running_deployment(gateway_workers=2, with_passthrough=True) as deployment:
        print(run_end_to_end(deployment, budget).as_markdown())


if __name__ == "__main__":
    main()
