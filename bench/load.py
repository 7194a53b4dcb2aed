"""End to end over HTTP: the gateway under gunicorn against its bounds, per backend, at concurrency 1, 4, 16 and 64.

Three targets take the same repeatable updates side by side: the gateway (PATCH /orders/<id>), the passthrough
app (bench/passthrough_app.py: the same gunicorn settings forwarding a pre-rendered document, no translation) and
the sandbox itself (direct: the pre-rendered document, signed as the gateway signs it). The load comes from wrk
(bench/wrk.py): `concurrency` keep-alive connections, each sending its next request as soon as the previous reply
is read, pinned to the machine's last CPU.

The Python load generator below (`generate_load`: a pool of threads, each with its own keep-alive requests.Session,
bounded by a request count and a deadline) is not used by this section; section 3 (bench/memory.py) drives its
load with it.

Run alone: `python -m bench.load [--quick] [--chart PATH]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench import live_profile
from bench.measure import Budget, Section, milliseconds, percentile
from bench.passthrough_app import transport_auth
from bench.servers import Deployment
from bench.workload import DEMO_KEY, REPEATABLE
from bench.wrk import WrkRequest, WrkResult, run_wrk, write_script, wrk_binary

TARGETS = ("gateway", "passthrough", "direct")
CONCURRENCIES = (1, 4, 16, 64)
#: the smoke run's concurrencies: the two ends of the range
QUICK_CONCURRENCIES = (1, 64)
#: the concurrencies the throughput target is judged at
JUDGED_CONCURRENCIES = (1, 16, 64)
REQUEST_TIMEOUT = 15.0
THROUGHPUT_TARGET = 0.90  # of the passthrough's requests/s
ADDED_LATENCY_TARGET = 0.0005  # seconds over direct, at p50 and concurrency 1
#: seconds per wrk run (wrk's -d counts whole seconds): the shortest at low concurrency, where replies take
#: milliseconds; longer from concurrency 16 on, where the slowest target's replies take a good part of a second
#: and the requests still in flight when wrk stops are not counted
SHORT_RUN_SECONDS = 1
LONG_RUN_SECONDS = 2
LONG_RUN_CONCURRENCY = 16
FULL_REPETITIONS = 2
#: seconds of load the gateway and the passthrough take at the highest concurrency before a backend's runs, so
#: their threads and connection pools exist before anything is measured
WARMUP_SECONDS = 1
WARMED_TARGETS = ("gateway", "passthrough")
#: the gateway's own functions the live profile lists
LIVE_TOP = 12
#: After a run the servers finish the requests wrk left in flight: at most `concurrency` of them, done in about
#: one typical latency (Little's law), so the wait is the run's p90, at most this.
DRAIN_SECONDS = 1.5
#: The Ongoing sandbox serves one goods owner's calls one after another, as Ongoing does: a call that overlaps
#: another waits its overlap delay (ONGOING_OVERLAP_DELAY_SECONDS, 2 s) and is refused, and while it waits it still
#: counts as in progress, so under load every call behind it overlaps too and the sandbox stalls for the rest of
#: the run. The gateway holds a lock per goods owner; the passthrough and direct calls do not, and now and then
#: (about once in a full run, at concurrency 16 or 64) two of theirs meet. Such a run is measured again, at most
#: this many times: each costs the refused calls' drain (up to 16 s at concurrency 64) and the run.
OVERLAP_REPEATS = 1
OVERLAP_DELAY_SECONDS = 2.0
OVERLAP_SETTLE_SECONDS = 30.0  # the longest wait for the refused calls left in the sandbox to drain

#: send(session, index) -> HTTP status of the index-th request
Sender = Callable[[requests.Session, int], int]


@dataclass(frozen=True)
class LoadPlan:
    """What section 2 runs for a budget: which concurrencies, how long and how often."""

    concurrencies: tuple[int, ...]
    short_seconds: int  # per wrk run below LONG_RUN_CONCURRENCY
    long_seconds: int  # per wrk run from LONG_RUN_CONCURRENCY on
    repetitions: int  # per backend, concurrency and target
    warmup_seconds: int  # per backend and warmed target; 0 for none

    @classmethod
    def for_budget(cls, budget: Budget) -> LoadPlan:
        """The full plan (about 140 s), or a smoke test of every code path (about 25 s)."""
        if budget.quick:
            return cls(QUICK_CONCURRENCIES, SHORT_RUN_SECONDS, SHORT_RUN_SECONDS, 1, 0)
        return cls(CONCURRENCIES, SHORT_RUN_SECONDS, LONG_RUN_SECONDS, FULL_REPETITIONS, WARMUP_SECONDS)

    def seconds(self, concurrency: int) -> int:
        """How long one run at this concurrency lasts."""
        return self.long_seconds if concurrency >= LONG_RUN_CONCURRENCY else self.short_seconds


@dataclass(frozen=True)
class MeasuredRun:
    """One wrk run and the CPU time the servers spent meanwhile (the drain after it included)."""

    load: WrkResult
    server_cpu: float  # seconds, the target's gunicorn workers (the sandbox's for direct)
    sandbox_cpu: float  # seconds, the sandbox's worker


@dataclass(frozen=True)
class TargetFigures:
    """One (backend, concurrency, target) over its repetitions."""

    measured: tuple[MeasuredRun, ...]

    @property
    def runs(self) -> tuple[WrkResult, ...]:
        """wrk's figures of each run."""
        return tuple(run.load for run in self.measured)

    def cpu_per_request(self, which: str = "server") -> float:
        """Seconds of CPU per completed request: the target's workers ("server") or the sandbox's ("sandbox")."""
        spent = sum(run.server_cpu if which == "server" else run.sandbox_cpu for run in self.measured)
        return spent / self.requests if self.requests else 0.0

    @property
    def requests(self) -> int:
        """Completed requests of every run."""
        return sum(run.requests for run in self.runs)

    @property
    def errors(self) -> int:
        """Failed requests of every run (statuses ≥ 400, socket errors, timeouts)."""
        return sum(run.errors for run in self.runs)

    @property
    def rate(self) -> float:
        """Requests per second over the runs' summed wall time."""
        seconds = sum(run.seconds for run in self.runs)
        return self.requests / seconds if seconds else 0.0

    def latency(self, name: str) -> float:
        """A latency percentile in seconds ("p50", "p90", "p99"): the median of the runs' own."""
        return statistics.median(getattr(run, name) for run in self.runs)


def wrk_version() -> str:
    """wrk's version as it prints it (`wrk debian/4.1.0-3+b2 [epoll]` -> `debian/4.1.0-3+b2`)."""
    finished = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True,  # noqa: S603
                              timeout=10, check=False)
    words = (finished.stdout or finished.stderr).split()
    return words[1] if len(words) > 1 else "(unknown version)"


def load_cpu() -> int:
    """The CPU wrk is pinned to: the last one this process may run on."""
    return max(os.sched_getaffinity(0))


def gateway_requests(backend: str) -> list[WrkRequest]:
    """PATCH /orders/<id> with the backend's repeatable canonical document, as the demo caller, one per order."""
    workload = REPEATABLE[backend]
    body = json.dumps(workload.document()).encode("utf-8")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {DEMO_KEY}"}
    return [WrkRequest("PATCH", f"/orders/{order_id}", body, headers) for order_id in workload.order_ids]


def passthrough_requests(backend: str) -> list[WrkRequest]:
    """The same canonical documents to the passthrough app, which reads them and forwards the pre-rendered ones."""
    workload = REPEATABLE[backend]
    body = json.dumps(workload.document()).encode("utf-8")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {DEMO_KEY}"}
    return [WrkRequest("PATCH", f"/{backend}/{order_id}", body, headers) for order_id in workload.order_ids]


def direct_requests(documents: dict, backend: str) -> list[WrkRequest]:
    """The pre-rendered documents as the sandbox receives them from the gateway, authenticated now.

    SellerCenter's signature covers a Timestamp the sandbox accepts for a few minutes, so these are built just
    before each run.
    """
    entry = documents[backend]
    auth = transport_auth(entry["auth"])
    built = []
    for order_id in REPEATABLE[backend].order_ids:
        request = entry["orders"][order_id]
        prepared = requests.Request(request["method"], request["url"], headers=request["headers"],
                                    data=request["body"].encode("utf-8"), auth=auth).prepare()
        # wrk writes Host and Content-Length itself
        headers = {name: value for name, value in prepared.headers.items()
                   if name.lower() not in ("host", "content-length")}
        built.append(WrkRequest(prepared.method, prepared.path_url, prepared.body, headers))
    return built


class LoadTargets:
    """Per backend, the three targets' base URLs and their wrk scripts."""

    def __init__(self, deployment: Deployment, folder: Path) -> None:
        self.folder = folder
        self.documents = json.loads(deployment.documents.read_text())
        self.urls = {"gateway": deployment.gateway.url, "passthrough": deployment.passthrough.url,
                     "direct": deployment.sandbox.url}
        self.servers = {"gateway": deployment.gateway, "passthrough": deployment.passthrough,
                        "direct": deployment.sandbox}
        self.sandbox = deployment.sandbox
        self.scripts: dict[tuple[str, str], Path] = {}
        self.sandbox_url = deployment.sandbox.url
        #: (target, concurrency, calls refused) of each Ongoing run measured again
        self.overlapping_runs: list[tuple[str, int, int]] = []

    def requests(self, backend: str, target: str) -> list[WrkRequest]:
        """The rotation of requests wrk sends the target (direct ones freshly signed)."""
        if target == "direct":
            return direct_requests(self.documents, backend)
        return (gateway_requests if target == "gateway" else passthrough_requests)(backend)

    def script(self, backend: str, target: str) -> Path:
        """The target's script; direct gets a freshly signed one every time."""
        if target == "direct":
            return write_script(self.folder, requests=self.requests(backend, target))
        key = backend, target
        if key not in self.scripts:
            self.scripts[key] = write_script(self.folder, requests=self.requests(backend, target))
        return self.scripts[key]

    def check_every_request_succeeds(self) -> None:
        """Each request of every rotation answers 2xx from its target before anything is measured: a baseline that
        answers errors (an app that fails fast) would make any comparison with it meaningless."""
        with keep_alive_session() as session:
            for backend in REPEATABLE:
                for target in TARGETS:
                    for request in self.requests(backend, target):
                        reply = session.request(request.method, self.urls[target] + request.path, data=request.body,
                                                headers=dict(request.headers or {}), timeout=REQUEST_TIMEOUT)
                        if not 200 <= reply.status_code < 300:
                            raise RuntimeError(f"{backend}, {target}: {request.method} {request.path} answered "
                                               f"HTTP {reply.status_code}: {reply.text[:500]}")

    def run(self, backend: str, target: str, *, connections: int, seconds: int) -> MeasuredRun:
        """One wrk run against the target, then the time its servers need to finish what wrk left in flight, with
        the CPU time the target's workers and the sandbox's spent over both.

        An Ongoing run during which the sandbox refused overlapping calls is measured again (OVERLAP_REPEATS).
        """
        attempt = 0
        while True:
            before = self.ongoing_overlaps() if backend == "ongoing" else 0
            server_before, sandbox_before = self.servers[target].workers_cpu(), self.sandbox.workers_cpu()
            result = run_wrk(self.urls[target], self.script(backend, target), connections=connections,
                             seconds=seconds, threads=1, cpu=load_cpu())
            time.sleep(min(result.p90, DRAIN_SECONDS))
            measured = MeasuredRun(result, self.servers[target].workers_cpu() - server_before,
                                   self.sandbox.workers_cpu() - sandbox_before)
            refused = self.refused_since(before) if backend == "ongoing" else 0
            if refused:
                self.overlapping_runs.append((target, connections, refused))
            if not refused or attempt == OVERLAP_REPEATS:
                return measured
            attempt += 1

    def ongoing_overlaps(self) -> int:
        """How many overlapping Ongoing calls the sandbox has refused since it started (or was reset)."""
        reply = requests.get(f"{self.sandbox_url}/ongoing/concurrency", timeout=OVERLAP_SETTLE_SECONDS)
        reply.raise_for_status()
        return sum(owner["overlaps"] for owner in reply.json()["goods_owners"].values())

    def refused_since(self, before: int) -> int:
        """Overlapping Ongoing calls refused since `before` was read, once none is left waiting its delay."""
        count = self.ongoing_overlaps()
        deadline = time.monotonic() + OVERLAP_SETTLE_SECONDS
        while count > before and time.monotonic() < deadline:
            # a refusal still waiting its delay is counted within one delay: no change, none is left
            time.sleep(OVERLAP_DELAY_SECONDS + 0.1)
            latest = self.ongoing_overlaps()
            if latest == count:
                break
            count = latest
        return count - before


def measure_targets(targets: LoadTargets, plan: LoadPlan) -> dict[tuple[str, int, str], TargetFigures]:
    """(backend, concurrency, target) -> its figures; targets in alternating order over the repetitions."""
    results = {}
    for backend in REPEATABLE:
        if plan.warmup_seconds:
            for target in WARMED_TARGETS:
                targets.run(backend, target, connections=max(plan.concurrencies), seconds=plan.warmup_seconds)
        for concurrency in plan.concurrencies:
            runs: dict[str, list[MeasuredRun]] = {target: [] for target in TARGETS}
            for repetition in range(plan.repetitions):
                for target in TARGETS if repetition % 2 == 0 else tuple(reversed(TARGETS)):
                    runs[target].append(targets.run(backend, target, connections=concurrency,
                                                    seconds=plan.seconds(concurrency)))
            for target in TARGETS:
                results[backend, concurrency, target] = TargetFigures(tuple(runs[target]))
    return results


@dataclass
class LoadResult:
    """What one run of the Python load generator saw."""

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


def introduction(plan: LoadPlan) -> str:
    """What section 2 ran, for its text."""
    warmup = (f"after {plan.warmup_seconds} s of warm-up of the gateway and the passthrough at concurrency "
              f"{max(plan.concurrencies)}" if plan.warmup_seconds else "without a warm-up")
    if plan.short_seconds == plan.long_seconds:
        lengths = f"{plan.short_seconds} s"
    else:
        lengths = (f"{plan.short_seconds} s ({plan.long_seconds} s from concurrency {LONG_RUN_CONCURRENCY} on, "
                   "where replies take up to a good part of a second)")
    cores = os.cpu_count() or 1
    averaged = {1: "from the one run", 2: "the mean of the two runs' own"}.get(plan.repetitions,
                                                                              "the median of the runs' own")
    return (
        "The gateway (gunicorn, `config/gunicorn.py`: 2 gthread workers with keep-alive) beside the passthrough "
        "app (same gunicorn settings, forwards a pre-rendered document with one pooled session) and direct calls "
        "to the sandbox (gunicorn, 1 worker, 8 threads, the pre-rendered document signed as the gateway signs it). "
        f"The load comes from wrk {wrk_version()} (`bench/wrk.py`, one wrk thread): `concurrency` keep-alive "
        "connections, each sending its next request as soon as the previous reply is read, round robin over the "
        "backend's repeatable orders. "
        f"Per backend and concurrency, {plan.repetitions} run(s) of {lengths} per target in alternating "
        f"target order, {warmup}; after each run the servers get as long as its p90 latency (at most "
        f"{DRAIN_SECONDS:g} s) to finish the requests wrk left in flight, which it does not count. "
        f"wrk is pinned to CPU {load_cpu()} with taskset; on this {cores}-core machine "
        "the servers (gateway or passthrough workers and the sandbox) are not pinned and still share that CPU "
        "with it, so wrk's own CPU time comes out of theirs. "
        "req/s is every run's requests over their summed duration; p50 and p99 are wrk's latencies (request "
        f"written to reply read), {averaged}; errors are statuses ≥ 400, socket errors and timeouts."
    )


def record_figures(section: Section, results: dict[tuple[str, int, str], TargetFigures]) -> None:
    """Name every (backend, concurrency, target)'s figures: `<backend> <concurrency> <target> rate|p50|p90|p99|…`."""
    for (backend, concurrency, target), result in results.items():
        prefix = f"{backend} {concurrency} {target}"
        section.figures[f"{prefix} rate"] = result.rate
        for name in ("p50", "p90", "p99"):
            section.figures[f"{prefix} {name}"] = result.latency(name)
        section.figures[f"{prefix} requests"] = float(result.requests)
        section.figures[f"{prefix} errors"] = float(result.errors)
        section.figures[f"{prefix} cpu per request"] = result.cpu_per_request()
        section.figures[f"{prefix} sandbox cpu per request"] = result.cpu_per_request("sandbox")


def run_end_to_end(deployment: Deployment, budget: Budget) -> Section:
    """Requests/s and latency of gateway, passthrough and direct, per backend and concurrency, from wrk."""
    plan = LoadPlan.for_budget(budget)
    section = Section("2. End to end over HTTP", introduction(plan))
    connection_headers = check_every_order_succeeds(deployment)
    if "close" in {header.lower() for header in connection_headers}:
        section.note("The gateway's gunicorn workers answer `Connection: close` (sync workers keep no connection "
                     "alive, whatever `keepalive` says), so every request to the gateway and to the passthrough "
                     "opens a new TCP connection; direct calls reuse theirs (the sandbox runs gthread workers).")
    with tempfile.TemporaryDirectory(prefix="wrk-", dir=deployment.folder) as scratch:
        targets = LoadTargets(deployment, Path(scratch))
        targets.check_every_request_succeeds()
        results = measure_targets(targets, plan)
        live = profile_live_workers(deployment, targets, live_profile.SECONDS if not budget.quick else 1)
    record_figures(section, results)
    section.figures["ongoing overlapping runs"] = float(len(targets.overlapping_runs))

    table = section.table("throughput and latency (wrk), and the CPU time the servers spent per request",
                          ["backend", "concurrency", "target", "requests", "errors", "req/s", "p50 ms", "p99 ms",
                           "target's workers CPU ms/request", "sandbox CPU ms/request"])
    for (backend, concurrency, target), result in results.items():
        table.add(backend, concurrency, target, result.requests, result.errors, f"{result.rate:.0f}",
                  milliseconds(result.latency("p50")), milliseconds(result.latency("p99")),
                  "(the sandbox)" if target == "direct" else milliseconds(result.cpu_per_request()),
                  milliseconds(result.cpu_per_request("sandbox")))
        if result.errors:
            kinds = ", ".join(f"{sum(getattr(run, kind) for run in result.runs)} {kind.replace('_', ' ')}"
                              for kind in ("non_2xx", "socket_errors", "timeouts"))
            section.note(f"{backend} at concurrency {concurrency}, {target}: {result.errors} errors ({kinds}).")

    bounds = section.table("the gateway against its bounds",
                           ["backend", "concurrency", "gateway req/s ÷ passthrough req/s",
                            "gateway p50 - passthrough p50 (ms)", "gateway p50 - direct p50 (ms)",
                            "gateway CPU - passthrough CPU (ms/request)"])
    for backend in REPEATABLE:
        for concurrency in plan.concurrencies:
            gateway, passthrough, direct = (results[backend, concurrency, target] for target in TARGETS)
            share = gateway.rate / passthrough.rate if passthrough.rate else 0.0
            added = gateway.latency("p50") - direct.latency("p50")
            section.figures[f"{backend} {concurrency} gateway share"] = share
            section.figures[f"{backend} {concurrency} gateway added p50"] = added
            bounds.add(backend, concurrency, f"{share:.0%}",
                       milliseconds(gateway.latency("p50") - passthrough.latency("p50")), milliseconds(added),
                       milliseconds(gateway.cpu_per_request() - passthrough.cpu_per_request()))

    section.note(
        "Ongoing serves one goods owner's calls one after another, and the gateway holds a lock per goods owner "
        "(shared by its workers) to keep to it; so does the passthrough (a lock file shared by its workers), which "
        "makes it the bound of a gateway that keeps the rule. Direct calls hold none: above concurrency 1 they send "
        "Ongoing many calls at once, which the real Ongoing would refuse and the benchmark's sandbox is told to "
        "serve (`SANDBOX_ONGOING_REFUSE_OVERLAPPING_CALLS=false`).")
    if targets.overlapping_runs:
        runs = "; ".join(f"{target} at concurrency {concurrency}: {refused} refused"
                         for target, concurrency, refused in targets.overlapping_runs)
        section.note(
            f"During {len(targets.overlapping_runs)} Ongoing run(s) the sandbox refused overlapping calls ({runs}). "
            f"A refused call waits {OVERLAP_DELAY_SECONDS:g} s in progress, so every call behind it overlaps as "
            f"well and the sandbox stalls for the rest of the run: such a run was measured again (at most "
            f"{OVERLAP_REPEATS} time(s)) once the refusals had drained; a run refused every time is kept as it was.")

    for backend in REPEATABLE:
        for concurrency in (c for c in plan.concurrencies if c in JUDGED_CONCURRENCIES):
            gateway, passthrough = (results[backend, concurrency, target] for target in ("gateway", "passthrough"))
            share = section.figures[f"{backend} {concurrency} gateway share"]
            section.judge(
                f"{backend}, concurrency {concurrency}: gateway throughput ≥ {THROUGHPUT_TARGET:.0%} of passthrough",
                share >= THROUGHPUT_TARGET,
                f"{share:.0%} ({gateway.rate:.0f} vs {passthrough.rate:.0f} req/s; "
                f"{(share - THROUGHPUT_TARGET) * 100:+.1f} points against the target)",
            )
    for backend in REPEATABLE:
        gateway, direct = results[backend, 1, "gateway"], results[backend, 1, "direct"]
        added = section.figures[f"{backend} 1 gateway added p50"]
        section.judge(
            f"{backend}, concurrency 1: gateway adds ≤ {ADDED_LATENCY_TARGET * 1000:g} ms at p50 over direct",
            added <= ADDED_LATENCY_TARGET,
            f"adds {milliseconds(added)} ms ({milliseconds(gateway.latency('p50'))} vs "
            f"{milliseconds(direct.latency('p50'))} ms; {milliseconds(added - ADDED_LATENCY_TARGET)} ms "
            "against the target)",
        )
    describe_live_profiles(section, live)
    return section


def profile_live_workers(deployment: Deployment, targets: LoadTargets,
                         seconds: int) -> dict[tuple[str, str], live_profile.LiveProfile | str]:
    """(backend, "gateway") -> py-spy's profile of the gateway's workers under wrk at concurrency 1 for `seconds`
    (not counted in the figures above), or why there is none."""
    live_profile.PROFILES.mkdir(exist_ok=True)
    profiles: dict[tuple[str, str], live_profile.LiveProfile | str] = {}
    server = targets.servers["gateway"]
    for backend in REPEATABLE:
        profile = profiles[backend, "gateway"] = live_profile.record_while(
            server.process.pid, seconds, targets.folder / f"live_gateway_{backend}.raw",
            lambda backend=backend: targets.run(backend, "gateway", connections=1, seconds=seconds))
        if isinstance(profile, live_profile.LiveProfile):
            (live_profile.PROFILES / f"live_gateway_{backend}.txt").write_text(live_profile.report_text(
                profile, f"the gateway's workers under wrk at concurrency 1, {backend}"))
    return profiles


def describe_live_profiles(section: Section, profiles: dict[tuple[str, str], live_profile.LiveProfile | str]) -> None:
    """The live profiles' layers, threads and the gateway's own functions, as tables of the section."""
    failed = {why for why in profiles.values() if isinstance(why, str)}
    for why in sorted(failed):
        section.note(f"No live profile: {why}.")
    for backend in REPEATABLE:
        gateway = profiles.get((backend, "gateway"))
        if not isinstance(gateway, live_profile.LiveProfile) or not gateway.samples:
            continue
        layers = section.table(
            f"{backend}: where the gateway workers' CPU goes under wrk at concurrency 1 (py-spy, {gateway.samples} "
            f"samples of a thread holding the interpreter lock; report: bench/profiles/live_gateway_{backend}.txt)",
            ["layer (innermost frame)", "share"])
        for name, share in gateway.by_layer():
            layers.add(name, f"{share:.1%}")
        threads = section.table(f"{backend}: the gateway's samples by thread", ["thread", "share"])
        for name, share in gateway.by_thread():
            threads.add(name, f"{share:.1%}")
        own = section.table(f"{backend}: the gateway's own functions by share of the samples",
                            ["rank", "inclusive share", "function", "self share", "function"])
        inclusive, itself = gateway.gateway_functions(LIVE_TOP), gateway.gateway_self_time(LIVE_TOP)
        for rank in range(max(len(inclusive), len(itself))):
            wide = inclusive[rank] if rank < len(inclusive) else ("", 0.0)
            narrow = itself[rank] if rank < len(itself) else ("", 0.0)
            own.add(rank + 1, f"{wide[1]:.1%}", wide[0], f"{narrow[1]:.1%}", narrow[0])
        section.figures[f"{backend} live top self share"] = itself[0][1] if itself else 0.0
        if itself:
            section.hot_spots[f"live_{backend}"] = [(name, share) for name, share in itself]
        section.figures[f"{backend} live samples"] = float(gateway.samples)
        for name, share in gateway.by_layer():
            section.figures[f"{backend} live layer {name}"] = share
        for name, share in gateway.by_thread():
            section.figures[f"{backend} live thread {name}"] = share


def main(arguments: Sequence[str] | None = None) -> None:
    """Run this section alone against a fresh deployment; `--chart PATH` also draws its scaling chart."""
    from bench.chart import draw_scaling_chart
    from bench.servers import running_deployment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of the work, for smoke tests")
    parser.add_argument("--chart", type=Path, help="where to draw the scaling chart (PNG); none by default")
    options = parser.parse_args(arguments)
    budget = Budget.smoke() if options.quick else Budget.full()
    with running_deployment(gateway_workers=2, with_passthrough=True) as deployment:
        section = run_end_to_end(deployment, budget)
    if options.chart:
        draw_scaling_chart(section, options.chart)
    print(section.as_markdown())


if __name__ == "__main__":
    main()
