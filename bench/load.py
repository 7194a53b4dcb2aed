"""End to end over HTTP: the gateway under gunicorn against its bounds, per backend, at concurrency 1, 16 and 64.

Three targets take the same repeatable updates side by side: the gateway (PATCH /orders/<id>), the passthrough
app (bench/passthrough_app.py: the same gunicorn settings forwarding a pre-rendered document, no translation) and
the sandbox itself (direct: the pre-rendered document, signed as the gateway signs it). The load comes from wrk
(bench/wrk.py): `concurrency` keep-alive connections, each sending its next request as soon as the previous reply
is read, pinned to the machine's last CPU. Then py-spy samples the gateway's workers under load at concurrency 1
(bench/live_profile.py), to explain a miss.

Run alone: `python -m bench.load [--quick] [--chart PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import live_profile
from bench.measure import Budget, Section, milliseconds
from bench.servers import Deployment, Server
from bench.workload import DEMO_KEY, REPEATABLE, configured_connections, prepared_request, rendered_request
from bench.wrk import WrkRequest, WrkResult, run_wrk, write_script

TARGETS = ("gateway", "passthrough", "direct")
THROUGHPUT_TARGET = 0.80  # of the passthrough's requests/s, at every judged concurrency
ADDED_P50_TARGET = 0.0005  # seconds over the passthrough at p50, concurrency 1
EXTRA_CPU_TARGET = 0.0005  # seconds of the gateway's workers' CPU per request over the passthrough's, concurrency 1
LONG_RUN_CONCURRENCY = 16  # from here on a run lasts budget.load_seconds[1]
WARMUP_SECONDS = 1
#: after a run the servers finish what wrk left in flight (which it does not count): the run's p90, at most this
DRAIN_SECONDS = 1.5
REQUEST_TIMEOUT = 15.0


@dataclass(frozen=True)
class MeasuredRun:
    """One wrk run and the CPU time the target's workers spent meanwhile (the drain after it included)."""

    load: WrkResult
    server_cpu: float  # seconds, the target's gunicorn workers (the sandbox's for direct)


@dataclass(frozen=True)
class TargetFigures:
    """One (backend, concurrency, target) over its repetitions."""

    runs: tuple[MeasuredRun, ...]

    @property
    def requests(self) -> int:
        """Completed requests of every run."""
        return sum(run.load.requests for run in self.runs)

    @property
    def errors(self) -> int:
        """Failed requests of every run (statuses ≥ 400, socket errors, timeouts)."""
        return sum(run.load.errors for run in self.runs)

    @property
    def rate(self) -> float:
        """Requests per second over the runs' summed wall time."""
        seconds = sum(run.load.seconds for run in self.runs)
        return self.requests / seconds if seconds else 0.0

    @property
    def cpu_per_request(self) -> float:
        """Seconds of the target's workers' CPU per completed request."""
        return sum(run.server_cpu for run in self.runs) / self.requests if self.requests else 0.0

    def latency(self, name: str) -> float:
        """A latency percentile in seconds ("p50", "p90", "p99"): the median of the runs' own."""
        return statistics.median(getattr(run.load, name) for run in self.runs)


def concurrencies(budget: Budget) -> tuple[int, ...]:
    """The concurrencies measured: the judged ones, or the two ends of the range in a smoke run."""
    return (1, 64) if budget.quick else (1, 16, 64)


class LoadTargets:
    """Per backend, the three targets' servers and the requests wrk sends each."""

    def __init__(self, deployment: Deployment, folder: Path) -> None:
        self.folder = folder
        self.servers: dict[str, Server] = {"gateway": deployment.gateway, "passthrough": deployment.passthrough,
                                           "direct": deployment.sandbox}
        self.connections = configured_connections(deployment.sandbox.url, folder)
        self.scripts: dict[tuple[str, str], Path] = {}

    def close(self) -> None:
        """Release the connections the direct requests are rendered with."""
        for connection in self.connections.values():
            connection.close()

    def requests(self, kind: str, target: str) -> list[WrkRequest]:
        """The rotation of requests wrk sends the target: the canonical document to the gateway and the
        passthrough, the rendered request to the sandbox (signed now: SellerCenter's signature ages)."""
        workload = REPEATABLE[kind]
        if target == "direct":
            built = []
            for index in range(len(workload.order_ids)):
                prepared = prepared_request(self.connections[kind],
                                            rendered_request(self.connections[kind], workload, index))
                headers = {name: value for name, value in prepared.headers.items()
                           if name.lower() not in ("host", "content-length")}  # wrk writes them itself
                built.append(WrkRequest(prepared.method, prepared.path_url, prepared.body, headers))
            return built
        body = json.dumps(workload.document()).encode("utf-8")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {DEMO_KEY}"}
        prefix = "/orders" if target == "gateway" else f"/{kind}"
        return [WrkRequest("PATCH", f"{prefix}/{order_id}", body, headers) for order_id in workload.order_ids]

    def script(self, kind: str, target: str) -> Path:
        """The target's wrk script; direct gets a freshly signed one every time."""
        if target == "direct" or (kind, target) not in self.scripts:
            self.scripts[kind, target] = write_script(self.folder, requests=self.requests(kind, target))
        return self.scripts[kind, target]

    def check_every_request_succeeds(self) -> None:
        """Each request of every rotation answers 2xx before anything is measured: a baseline that answers errors
        (an app that fails fast) would make any comparison with it meaningless."""
        with requests.Session() as session:
            session.trust_env = False
            for kind in REPEATABLE:
                for target in TARGETS:
                    for request in self.requests(kind, target):
                        reply = session.request(request.method, self.servers[target].url + request.path,
                                                data=request.body, headers=dict(request.headers or {}),
                                                timeout=REQUEST_TIMEOUT)
                        if not 200 <= reply.status_code < 300:
                            raise RuntimeError(f"{kind}, {target}: {request.method} {request.path} answered "
                                               f"HTTP {reply.status_code}: {reply.text[:500]}")

    def run(self, kind: str, target: str, *, connections: int, seconds: int) -> MeasuredRun:
        """One wrk run against the target, then the time its servers need to finish what wrk left in flight, with
        the CPU time the target's workers spent over both."""
        server = self.servers[target]
        before = server.workers_cpu()
        result = run_wrk(server.url, self.script(kind, target), connections=connections, seconds=seconds,
                         cpu=max(os.sched_getaffinity(0)))
        time.sleep(min(result.p90, DRAIN_SECONDS))
        return MeasuredRun(result, server.workers_cpu() - before)


def measure_targets(targets: LoadTargets, budget: Budget) -> dict[tuple[str, int, str], TargetFigures]:
    """(backend, concurrency, target) -> its figures; targets in alternating order over the repetitions."""
    results = {}
    for kind in REPEATABLE:
        if not budget.quick:
            for target in ("gateway", "passthrough"):  # threads and connection pools exist before anything counts
                targets.run(kind, target, connections=64, seconds=WARMUP_SECONDS)
        for concurrency in concurrencies(budget):
            seconds = budget.load_seconds[concurrency >= LONG_RUN_CONCURRENCY]
            runs: dict[str, list[MeasuredRun]] = {target: [] for target in TARGETS}
            for repetition in range(budget.load_repetitions):
                for target in TARGETS if repetition % 2 == 0 else reversed(TARGETS):
                    runs[target].append(targets.run(kind, target, connections=concurrency, seconds=seconds))
            for target in TARGETS:
                results[kind, concurrency, target] = TargetFigures(tuple(runs[target]))
    return results


def run_end_to_end(deployment: Deployment, budget: Budget) -> Section:
    """Requests/s, latency and CPU of gateway, passthrough and direct per backend and concurrency; the live profile."""
    short, long = budget.load_seconds
    section = Section(
        "2. End to end over HTTP",
        "The gateway (gunicorn, `config/gunicorn.py`: 2 gthread workers with keep-alive) beside the passthrough "
        "(same gunicorn settings, forwards a pre-rendered document with one pooled session, a call-locked backend "
        "one call at a time under the gateway's file lock) and direct calls to the sandbox (gunicorn, 1 worker, 8 "
        "threads). wrk (one thread, pinned to the last CPU, which the servers share on 2 cores), keep-alive, round "
        f"robin over each backend's repeatable orders; per backend and concurrency {budget.load_repetitions} "
        f"run(s) of {short} s ({long} s from concurrency {LONG_RUN_CONCURRENCY} on) per target in alternating "
        "order. req/s over the runs' summed time; p50/p99 wrk's (median of the runs'); CPU is the target's "
        "gunicorn workers' user + system time per request (psutil), the drain after each run included.",
    )
    with tempfile.TemporaryDirectory(prefix="wrk-", dir=deployment.folder) as scratch:
        targets = LoadTargets(deployment, Path(scratch))
        try:
            targets.check_every_request_succeeds()
            results = measure_targets(targets, budget)
            profiles = {kind: live_profile.record_while(
                deployment.gateway.process.pid, budget.profile_seconds, Path(scratch) / f"live_{kind}.raw",
                lambda kind=kind: targets.run(kind, "gateway", connections=1, seconds=budget.profile_seconds))
                for kind in REPEATABLE}
        finally:
            targets.close()

    table = section.table("throughput, latency and CPU per request (wrk)",
                          ["backend", "concurrency", "target", "requests", "errors", "req/s", "p50 ms", "p99 ms",
                           "workers' CPU ms/request"])
    for (kind, concurrency, target), result in results.items():
        section.figures[f"{kind} {concurrency} {target} rate"] = result.rate
        section.figures[f"{kind} {concurrency} {target} p99"] = result.latency("p99")
        table.add(kind, concurrency, target, result.requests, result.errors, f"{result.rate:.0f}",
                  milliseconds(result.latency("p50")), milliseconds(result.latency("p99")),
                  "(the sandbox's)" if target == "direct" else milliseconds(result.cpu_per_request))
    bounds = section.table("the gateway against its bounds", [
        "backend", "concurrency", "gateway ÷ passthrough req/s", "p50 added over passthrough ms",
        "p50 added over direct ms", "extra CPU over passthrough ms/request"])
    for kind in REPEATABLE:
        for concurrency in concurrencies(budget):
            gateway, passthrough, direct = (results[kind, concurrency, target] for target in TARGETS)
            bounds.add(kind, concurrency, f"{gateway.rate / passthrough.rate:.0%}",
                       milliseconds(gateway.latency("p50") - passthrough.latency("p50")),
                       milliseconds(gateway.latency("p50") - direct.latency("p50")),
                       milliseconds(gateway.cpu_per_request - passthrough.cpu_per_request))
    for kind in REPEATABLE:
        gateway, passthrough, direct = (results[kind, 1, target] for target in TARGETS)
        section.judge_at_most(f"{kind}: extra CPU per request over the passthrough, concurrency 1, ≤ 0.5 ms",
                              (gateway.cpu_per_request - passthrough.cpu_per_request) * 1000, 0.5, "ms",
                              f"{milliseconds(gateway.cpu_per_request)} vs "
                              f"{milliseconds(passthrough.cpu_per_request)} ms")
        for concurrency in concurrencies(budget):
            gateway_c, passthrough_c = results[kind, concurrency, "gateway"], results[kind, concurrency, "passthrough"]
            section.judge_at_least(f"{kind}: throughput ≥ 80% of the passthrough's, concurrency {concurrency}",
                                   gateway_c.rate / passthrough_c.rate, THROUGHPUT_TARGET,
                                   f"{gateway_c.rate:.0f} vs {passthrough_c.rate:.0f} req/s")
        over_direct = milliseconds(gateway.latency("p50") - direct.latency("p50"))
        section.judge_at_most(f"{kind}: ≤ 0.5 ms added at p50 over the passthrough, concurrency 1",
                              (gateway.latency("p50") - passthrough.latency("p50")) * 1000, 0.5, "ms",
                              f"{over_direct} ms over direct")
    live_profile.describe(section, profiles)
    return section


def main(arguments: Sequence[str] | None = None) -> None:
    """Run this section alone against a fresh deployment; `--chart PATH` also draws its scaling chart."""
    from bench.chart import draw_scaling_chart
    from bench.servers import running_deployment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of the work, for smoke tests")
    parser.add_argument("--chart", type=Path, help="where to draw the scaling chart (PNG); none by default")
    options = parser.parse_args(arguments)
    with running_deployment(gateway_workers=2, with_passthrough=True) as deployment:
        section = run_end_to_end(deployment, Budget.smoke() if options.quick else Budget.full())
    if options.chart:
        draw_scaling_chart(section, options.chart)
    print(section.as_markdown())


if __name__ == "__main__":
    main()
