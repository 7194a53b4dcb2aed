"""Memory: the resident set of one gateway worker (gunicorn --workers 1) as requests accumulate.

The repeatable updates of all three backends, in turn, from 4 client threads; RSS (psutil) of the worker
process is read at each checkpoint. Run alone: `python -m bench.memory [--quick]`.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import requests

from bench.load import gateway_sender, generate_load
from bench.measure import Budget, Section
from bench.servers import Deployment
from bench.workload import REPEATABLE, parsed_config
from gateway.runtime import gateway_of

CONCURRENCY = 4
RSS_TARGET_BYTES = 80 * 10**6
#: RSS moves by about this much between samples without any leak (allocator arenas, caches warming up)
GROWTH_NOISE_BYTES = 2 * 10**6
MB = 10**6


def mixed_sender(base_url: str):
    """The gateway's repeatable updates of every backend, one backend after the other."""
    backends = list(REPEATABLE)
    by_backend = [gateway_sender(base_url, backend) for backend in backends]

    def send(session: requests.Session, index: int) -> int:
        return by_backend[index % len(backends)](session, index // len(backends))
    return send


def unique_memory_around_full_collection(freeze: bool) -> tuple[int, int]:
    """In a forked child: USS before and after gc.collect(), optionally with gc.freeze() before the fork."""
    if freeze:
        gc.freeze()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, like a gunicorn worker forked from the preloaded master
        process = psutil.Process()
        before = process.memory_full_info().uss
        gc.collect()
        os.write(writer, json.dumps([before, process.memory_full_info().uss]).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        before, after = json.loads(pipe.read())
    os.waitpid(pid, 0)
    if freeze:
        gc.unfreeze()
    return before, after


def probe_copy_on_write() -> dict[str, tuple[int, int]]:
    """Build the gateway app as gunicorn's preload does, then fork, with and without gc.freeze()."""
    from gateway import create_app

    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        app = create_app(parsed_config("http://127.0.0.1:9", Path(scratch)))
        try:
            return {"without gc.freeze()": unique_memory_around_full_collection(freeze=False),
                    "with gc.freeze() before the fork": unique_memory_around_full_collection(freeze=True)}
        finally:
            gateway_of(app).connections.close()
            gateway_of(app).events.close()


def measure_copy_on_write(section: Section) -> None:
    """Run the probe in a fresh interpreter (this one holds the benchmark's own objects) and tabulate it."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.submit(probe_copy_on_write).result(timeout=120)
    table = section.table("a forked copy of the preloaded app: USS before and after one full garbage collection",
                          ["fork", "USS before MB", "USS after gc.collect() MB"])
    for label, (before, after) in results.items():
        table.add(label, f"{before / MB:.1f}", f"{after / MB:.1f}")


def run_memory(deployment: Deployment, budget: Budget) -> Section:
    """RSS of the single worker at each checkpoint of requests served."""
    section = Section(
        "3. Memory",
        f"RSS of the one worker of a gateway started with `--workers 1` (same `config/gunicorn.py`), read with "
        f"psutil after each checkpoint; the load is the three backends' repeatable updates in turn from "
        f"{CONCURRENCY} threads, the whole bounded to {budget.memory_seconds:g} s. MB = 10⁶ bytes. RSS counts the "
        "pages the worker shares with the preloaded master (copy-on-write); USS only its own.",
    )
    (worker_pid,) = deployment.gateway.worker_pids()
    worker = psutil.Process(worker_pid)
    send = mixed_sender(deployment.gateway.url)
    table = section.table("RSS of the worker", ["requests served", "errors", "RSS MB", "USS MB"])
    table.add(0, 0, f"{worker.memory_info().rss / MB:.1f}", f"{worker.memory_full_info().uss / MB:.1f}")
    deadline = time.monotonic() + budget.memory_seconds
    served, errors = 0, 0
    samples: dict[int, int] = {}
    unique: dict[int, int] = {}
    for checkpoint in budget.memory_checkpoints:
        result = generate_load(send, concurrency=CONCURRENCY, max_requests=checkpoint - served,
                               max_seconds=max(0.0, deadline - time.monotonic()))
        served += result.requests
        errors += result.errors
        samples[served], unique[served] = worker.memory_info().rss, worker.memory_full_info().uss
        table.add(served, errors, f"{samples[served] / MB:.1f}", f"{unique[served] / MB:.1f}")
        if result.errors:
            section.note(f"{result.errors} errors before {served} requests; the first: {result.first_error}")
        if served < checkpoint:
            section.note(f"stopped at {served} requests: the {budget.memory_seconds:g} s bound was reached")
            break
    if deployment.gateway.worker_pids() != [worker_pid]:
        section.note("the worker was replaced during the run; the figures are of the first worker")

    first, last = min(samples), max(samples)
    growth = samples[last] - samples[first]
    peak = max(samples.values())
    section.judge(f"worker RSS < {RSS_TARGET_BYTES // MB} MB", peak < RSS_TARGET_BYTES,
                  f"peak {peak / MB:.1f} MB ({(peak - RSS_TARGET_BYTES) / MB:+.1f} MB against the target)")
    section.judge(f"growth from {first} to {last} requests within noise (≤ {GROWTH_NOISE_BYTES // MB} MB)",
                  growth <= GROWTH_NOISE_BYTES, f"{growth / MB:+.2f} MB ({samples[first] / MB:.1f} → "
                  f"{samples[last] / MB:.1f} MB; {growth / max(1, last - first):.0f} bytes per request)")
    unique_growth = unique[last] - unique[first]
    if unique_growth > GROWTH_NOISE_BYTES and growth <= GROWTH_NOISE_BYTES:
        section.note(f"USS grew by {unique_growth / MB:.1f} MB while RSS did not: pages the worker shared with the "
                     "preloaded master became its own (copy-on-write). Likely cause: a full garbage collection, which "
                     "writes to the header of every object it visits, including those loaded before the fork. With "
                     "several workers that memory is no longer shared (see the fork probe).")
    measure_copy_on_write(section)
    return section


def main() -> None:
    """Run this section alone against a fresh single-worker gateway."""
    from bench.servers import running_deployment

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    with running_deployment(gateway_workers=1, with_passthrough=False) as deployment:
        print(run_memory(deployment, budget).as_markdown())


if __name__ == "__main__":
    main()
