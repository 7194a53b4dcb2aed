"""Update jobs: what `Prefer: respond-async` costs and buys at the door, and how fast the event worker drains a
backlog of queued jobs per backend.

Acceptance: the gateway under gunicorn (`config/gunicorn.py`, 2 workers) and the sandbox, as section 2 starts them;
wrk sends section 2's repeatable `PATCH /orders/<id>` per backend at concurrency 1 and 16, once synchronously (the
backend's reply) and once with `Prefer: respond-async` (the update checked, translated and stored as a job: 202),
taking turns. No event worker runs, so the jobs only queue, in the run's own scratch folder.

Drain: per backend in turn, jobs of the same updates added to a fresh job store in one transaction (as
gateway/rest/updates.py queue_updates builds them) and the lane woken, then the real worker process
(`python -m gateway.events.worker`, the same configuration) sends them to the sandbox while the store is polled
until none is active. A connection is one lane whose jobs go out one at a time in the order accepted (Ongoing's
synchronous calls also wait for one another, under its call lock); each job's completion event is stored and
delivered to the demo subscriber meanwhile, on the worker's other threads. A few jobs per backend go first, unmeasured,
so the worker is up and its connections warm.

Run alone: `python -m bench.jobs [--quick]`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.measure import Budget, Section, milliseconds
from bench.servers import Deployment, running_deployment, running_event_worker
from bench.workload import (
    DEMO_KEY,
    REPEATABLE,
    SANDBOX,
    Workload,
    environment_without_backend_urls,
    parsed_config,
    sandbox_urls,
)
from bench.wrk import WrkRequest, WrkResult, run_wrk, write_script
from gateway.backends import BACKENDS
from gateway.canonical import load_order_update, update_document
from gateway.config import load_settings
from gateway.connections import Connection
from gateway.events import EventService
from gateway.jobs import DONE, JobStore, NewJob

MODES = ("synchronous", "respond-async")
CONCURRENCIES = (1, 16)
#: after a run the gateway finishes what wrk left in flight (which it does not count): the run's p90, at most this
DRAIN_SECONDS = 1.5
REQUEST_TIMEOUT = 15.0
#: jobs queued per backend for the drain (a smoke run queues a tenth)
DRAIN_JOBS = 1_000
#: jobs per backend sent before the measured ones: the worker is up, its connections and the sandbox warm
WARMUP_JOBS = 5
#: how long one backend's drain may take before the run gives up on it (and says how far it got)
DRAIN_DEADLINE_SECONDS = 120.0
POLL_SECONDS = 0.05
CALLER = "bench"


@dataclass(frozen=True)
class DrainResult:
    """One backend's queued jobs after the worker sent them (or after the deadline)."""

    jobs: int
    states: Counter[str]
    sending_seconds: float  # the first job's first attempt to the last job's finish
    wall_seconds: float  # queued and woken to no job active, as the polling saw it

    @property
    def rate(self) -> float:
        """Jobs that ended done per second of sending."""
        return self.states[DONE] / self.sending_seconds if self.sending_seconds else 0.0


def measured_backends(budget: Budget) -> dict[str, Workload]:
    """Every backend's repeatable workload; Ongoing's alone in a smoke run."""
    return dict(list(REPEATABLE.items())[:1]) if budget.quick else dict(REPEATABLE)


def patch_requests(workload: Workload, mode: str) -> list[WrkRequest]:
    """The rotation wrk sends: section 2's updates of the workload's orders, with `Prefer: respond-async` or not."""
    body = json.dumps(workload.document()).encode("utf-8")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {DEMO_KEY}",
               **({"Prefer": "respond-async"} if mode == "respond-async" else {})}
    return [WrkRequest("PATCH", f"/orders/{order_id}", body, headers) for order_id in workload.order_ids]


def check_every_request_is_answered(gateway_url: str, workloads: dict[str, Workload]) -> None:
    """Each request of every rotation answers as it should before anything is measured: 200 synchronously; 202 with
    `Preference-Applied: respond-async` and a Location asynchronously."""
    with requests.Session() as session:
        session.trust_env = False
        for kind, workload in workloads.items():
            for mode in MODES:
                for request in patch_requests(workload, mode):
                    reply = session.request(request.method, gateway_url + request.path, data=request.body,
                                            headers=dict(request.headers or {}), timeout=REQUEST_TIMEOUT)
                    accepted = (reply.status_code == 202 and reply.headers.get("Preference-Applied") == "respond-async"
                                and reply.headers.get("Location", "").startswith("/updates/"))
                    if not (accepted if mode == "respond-async" else 200 <= reply.status_code < 300):
                        raise RuntimeError(f"{kind}, {mode}: {request.method} {request.path} answered HTTP "
                                           f"{reply.status_code} {dict(reply.headers)}: {reply.text[:500]}")


def measure_acceptance(deployment: Deployment, workloads: dict[str, Workload], budget: Budget,
                       folder: Path) -> dict[tuple[str, int, str], WrkResult]:
    """(backend, concurrency, mode) -> wrk's figures; the modes take turns."""
    scripts = {(kind, mode): write_script(folder, requests=patch_requests(workload, mode))
               for kind, workload in workloads.items() for mode in MODES}
    results = {}
    for kind in workloads:
        for turn, concurrency in enumerate(CONCURRENCIES):
            for mode in MODES if turn % 2 == 0 else reversed(MODES):
                result = run_wrk(deployment.gateway.url, scripts[kind, mode], connections=concurrency,
                                 seconds=budget.load_seconds[concurrency > 1], cpu=max(os.sched_getaffinity(0)))
                time.sleep(min(result.p90, DRAIN_SECONDS))
                results[kind, concurrency, mode] = result
    return results


def queued_updates(connection: Connection, workload: Workload, count: int, request_id: str) -> list[NewJob]:
    """`count` jobs of the workload's updates, round robin over its orders, as queue_updates stores a single
    PATCH's: one job per call."""
    jobs = []
    for index in range(count):
        planned = connection.check(load_order_update(workload.order_id(index), workload.document()))
        for operation, updates in connection.calls([planned]):
            jobs.append(NewJob(
                id=f"upd_bench_{request_id}_{index:05d}", lane=connection.name, connection=connection.name,
                backend=connection.kind, operation=operation.name,
                order_ids=tuple(update.order_id for update in updates),
                items=tuple({"order_id": update.order_id, "document": update_document(update)} for update in updates),
                idempotent=operation.is_idempotent(updates), caller=CALLER, request_id=request_id))
    return jobs


def drain(service: EventService, connection: Connection, jobs: Sequence[NewJob], request_id: str,
          worker_alive: Callable[[], None]) -> DrainResult:
    """Store the jobs, wake their lane, and wait until none of the connection's jobs is active."""
    store: JobStore = service.jobs
    started = time.monotonic()
    store.add_jobs(jobs)
    service.job_queue.nudge(connection.name)
    deadline = started + DRAIN_DEADLINE_SECONDS
    while connection.name in store.active_summary() and time.monotonic() < deadline:
        worker_alive()
        time.sleep(POLL_SECONDS)
    wall = time.monotonic() - started
    stored = store.list_jobs(connection=connection.name, request_id=request_id, limit=len(jobs))
    states = Counter(job["state"] for job in stored)
    first_attempts = [job["attempts"][0]["at"] for job in stored if job["attempts"]]
    finishes = [job["finished_at"] for job in stored if job["finished_at"] is not None]
    sending = max(finishes) - min(first_attempts) if finishes and first_attempts else 0.0
    return DrainResult(len(jobs), states, sending, wall)


def measure_drain(deployment: Deployment, workloads: dict[str, Workload], count: int) -> dict[str, DrainResult]:
    """Backend -> its drain of `count` queued jobs by one worker process, the backends in turn."""
    folder = deployment.folder / "drain"
    raw = parsed_config(deployment.sandbox.url, folder)  # writes folder/gateway.toml, which the worker reads
    settings = load_settings(raw, str(folder / "gateway.toml"), BACKENDS)
    env = {**environment_without_backend_urls(), **sandbox_urls(deployment.sandbox.url),
           "GATEWAY_CONFIG": str(folder / "gateway.toml"), "GATEWAY_METRICS_DIR": str(folder / "metrics")}
    connections = {kind: Connection(settings.connections[SANDBOX[kind].name], BACKENDS[kind]) for kind in workloads}
    service = EventService(settings)
    results = {}
    try:
        with running_event_worker(env, folder) as worker:
            for kind, workload in workloads.items():
                warmup = f"warmup-{kind}"
                drain(service, connections[kind], queued_updates(connections[kind], workload, WARMUP_JOBS, warmup),
                      warmup, worker.check_running)
            for kind, workload in workloads.items():
                request_id = f"drain-{kind}"
                jobs = queued_updates(connections[kind], workload, count, request_id)
                results[kind] = drain(service, connections[kind], jobs, request_id, worker.check_running)
    finally:
        service.close()
        for connection in connections.values():
            connection.close()
    return results


def run_update_jobs(budget: Budget) -> Section:
    """Synchronous against accepted-as-job PATCHes per backend and concurrency; each backend's drain rate."""
    workloads = measured_backends(budget)
    count = DRAIN_JOBS // 10 if budget.quick else DRAIN_JOBS
    short, long = budget.load_seconds
    method = "\n\n".join(paragraph.replace("\n", " ") for paragraph in
                           __doc__.split("\n\nRun alone")[0].split("\n\n")[1:])
    section = Section("7. Update jobs", method + f" wrk runs last {short} s at concurrency 1 and {long} s at 16, "
                                                  f"pinned to the last CPU, which the servers share; "
                                                  f"{count:,} jobs per backend are drained"
                                                  + (" (a smoke run: Ongoing alone)." if budget.quick else "."))
    with running_deployment(gateway_workers=2, with_passthrough=False) as deployment, \
            tempfile.TemporaryDirectory(prefix="wrk-", dir=deployment.folder) as scratch:
        check_every_request_is_answered(deployment.gateway.url, workloads)
        accepted = measure_acceptance(deployment, workloads, budget, Path(scratch))
        drained = measure_drain(deployment, workloads, count)

    table = section.table("PATCH /orders/<id>: synchronous against Prefer: respond-async, no worker running (wrk)",
                          ["backend", "concurrency", "mode", "requests", "errors", "req/s", "of the synchronous",
                           "p50 ms", "p99 ms"])
    for kind in workloads:
        for concurrency in CONCURRENCIES:
            synchronous = accepted[kind, concurrency, "synchronous"]
            for mode in MODES:
                result = accepted[kind, concurrency, mode]
                section.figures[f"{kind} {concurrency} {mode} rate"] = result.rate
                table.add(kind, concurrency, "202 Accepted" if mode == "respond-async" else "200 synchronous",
                          result.requests, result.errors, f"{result.rate:,.0f}",
                          "" if mode == "synchronous" else f"{result.rate / synchronous.rate:.1f}x",
                          milliseconds(result.p50), milliseconds(result.p99))
    table = section.table(f"draining {count:,} queued jobs per backend (one worker process, one lane per connection, "
                          "its jobs one at a time)",
                          ["backend", "jobs", "done", "not done", "sending s", "jobs/s", "ms per job",
                           "queued to drained s", "synchronous req/s at concurrency 1"])
    for kind, result in drained.items():
        others = ", ".join(f"{n} {state}" for state, n in sorted(result.states.items()) if state != DONE)
        missing = result.jobs - sum(result.states.values())
        section.figures[f"{kind} drain rate"] = result.rate
        table.add(kind, f"{result.jobs:,}", f"{result.states[DONE]:,}",
                  (others or "0") + (f", {missing} not found" if missing else ""), f"{result.sending_seconds:.2f}",
                  f"{result.rate:,.0f}", milliseconds(1 / result.rate) if result.rate else "",
                  f"{result.wall_seconds:.2f}", f"{accepted[kind, 1, 'synchronous'].rate:,.0f}")
    return section


def main() -> None:
    """Run this section alone."""
    print(run_update_jobs(Budget.from_command_line(__doc__.splitlines()[0])).as_markdown())


if __name__ == "__main__":
    main()
