"""Bulk: the cost per item of PATCH /orders with 10, 100 and 500 items against single PATCHes, per backend.

Ongoing carries one order per UpdateOrder call (sent in sequence inside the gateway); Speed4Trade and
SellerCenter carry up to `max_orders_per_call` (100 in config/sandbox.toml) per call. Every size updates the
same number of items per repetition (the largest bulk's), so small bulks are timed over many requests. One
client (Python requests, one keep-alive session) sends every request, each when the previous one was answered.
Run alone: `python -m bench.bulk [--quick]`.
"""

from __future__ import annotations

import statistics
import time

import requests

from bench.load import REQUEST_TIMEOUT, keep_alive_session
from bench.measure import Budget, Section
from bench.servers import Deployment
from bench.workload import REPEATABLE, configured_connections
from gateway.canonical.schema import load_order_update

BULK_SIZES = (10, 100, 500)
BULK_TIMEOUT = 120.0
SERIES_DEADLINE = 30.0  # seconds for one series of requests (one size, one repetition)
#: no repetition starts that would (judging by the longest so far) end after this many seconds of the section
SECTION_SECONDS = 36.0
SINGLE = 1  # the "size" of single updates in the tables and figures


def time_bulk_updates(session: requests.Session, base_url: str, backend: str, size: int, items: int) -> float:
    """Seconds for `items` repeatable updates sent as PATCH /orders of `size` items each; every item must succeed."""
    document = REPEATABLE[backend].bulk_document(size)
    started = time.perf_counter()
    for sent in range(0, items, size):
        if time.perf_counter() - started > SERIES_DEADLINE:
            raise RuntimeError(f"{backend}: {sent} items in bulks of {size} took more than {SERIES_DEADLINE:g} s")
        reply = session.patch(f"{base_url}/orders", json=document, timeout=BULK_TIMEOUT)
        body = reply.json()
        if reply.status_code != 200 or body.get("succeeded") != size:
            raise RuntimeError(f"{backend} bulk of {size}: HTTP {reply.status_code}, {body.get('failed')} failed")
    return time.perf_counter() - started


def time_single_updates(session: requests.Session, base_url: str, backend: str, items: int) -> float:
    """Seconds for `items` single PATCH /orders/<id>, each sent when the previous one was answered."""
    workload = REPEATABLE[backend]
    document = workload.document()
    started = time.perf_counter()
    for index in range(items):
        if time.perf_counter() - started > SERIES_DEADLINE:
            raise RuntimeError(f"{backend}: {index} single updates took more than {SERIES_DEADLINE:g} s")
        reply = session.patch(f"{base_url}/orders/{workload.order_id(index)}", json=document, timeout=REQUEST_TIMEOUT)
        if reply.status_code != 200:
            raise RuntimeError(f"{backend} single update {index}: HTTP {reply.status_code}")
    return time.perf_counter() - started


def orders_per_call(deployment: Deployment) -> dict[str, int]:
    """Backend -> how many orders one backend call carries, as the gateway's configuration plans it."""
    connections = configured_connections(deployment.sandbox.url, deployment.folder)
    try:
        return {backend: connections[backend].check(
                    load_order_update(workload.order_ids[0], workload.document())).operation.call_size
                for backend, workload in REPEATABLE.items()}
    finally:
        for connection in connections.values():
            connection.close()


def measure_series(deployment: Deployment, budget: Budget, sizes: tuple[int, ...],
                   items: int) -> tuple[dict[tuple[str, int], list[float]], int]:
    """(backend, size) -> seconds of each repetition's series (size 1: single updates), and the repetitions run.

    Repetitions go over every backend in turn, the sizes in alternating order; none starts that would (judging by
    the longest so far) end after SECTION_SECONDS.
    """
    kinds = (SINGLE, *sizes)
    seconds: dict[tuple[str, int], list[float]] = {}
    started, longest, repetitions = time.monotonic(), 0.0, 0
    with keep_alive_session() as session:
        while repetitions < budget.bulk_repetitions:
            began = time.monotonic()
            for backend in REPEATABLE:
                for size in kinds if repetitions % 2 == 0 else tuple(reversed(kinds)):
                    if size == SINGLE:
                        taken = time_single_updates(session, deployment.gateway.url, backend, items)
                    else:
                        taken = time_bulk_updates(session, deployment.gateway.url, backend, size, items)
                    seconds.setdefault((backend, size), []).append(taken)
            repetitions += 1
            longest = max(longest, time.monotonic() - began)
            if time.monotonic() - started + longest > SECTION_SECONDS:
                break
    return seconds, repetitions


def run_bulk(deployment: Deployment, budget: Budget) -> Section:
    """Milliseconds per item, for bulks of each size and for single updates, per backend."""
    sizes = tuple(size for size in BULK_SIZES if size <= budget.bulk_items) or (budget.bulk_items,)
    items = max(sizes)
    per_call = orders_per_call(deployment)
    seconds, repetitions = measure_series(deployment, budget, sizes, items)
    series = ", ".join(f"{items // size} x {size}" for size in sizes)
    cut = (f" ({budget.bulk_repetitions} planned: another would have ended after the section's "
           f"{SECTION_SECONDS:g} s)" if repetitions < budget.bulk_repetitions else "")
    section = Section(
        "4. Bulk",
        f"Per backend: `PATCH /orders` with {', '.join(map(str, sizes))} items (`max_bulk_items` 500; Ongoing's "
        "UpdateOrder carries one order, so one backend call per item, sent in sequence inside the gateway; "
        "Speed4Trade and SellerCenter carry `max_orders_per_call` orders per call) against single "
        f"`PATCH /orders/<id>`. Each repetition sends {items} items per size ({series}) and {items} single "
        "updates, one request after another from one client (Python requests, one keep-alive session), sizes in "
        f"alternating order; median of {repetitions} repetition(s){cut}; every item must succeed. "
        "ms per item is a series' wall time over its items, the client's own cost per request included.",
    )
    table = section.table("milliseconds per item", ["backend", "items per request", "backend calls per request",
                                                    "requests per repetition", "ms per item", "single ÷ this"])
    for backend in REPEATABLE:
        single = statistics.median(seconds[backend, SINGLE]) / items
        section.figures[f"{backend} single s per item"] = single
        for size in (SINGLE, *sizes):
            per_item = statistics.median(seconds[backend, size]) / items
            if size != SINGLE:
                section.figures[f"{backend} bulk {size} s per item"] = per_item
            table.add(backend, "1 (single PATCH)" if size == SINGLE else size, -(-size // per_call[backend]),
                      items // size, f"{per_item * 1000:.3f}", f"{single / per_item:.1f}x")
    return section


def main() -> None:
    """Run this section alone against a fresh deployment."""
    from bench.servers import running_deployment

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    with running_deployment(gateway_workers=2, with_passthrough=False) as deployment:
        print(run_bulk(deployment, budget).as_markdown())


if __name__ == "__main__":
    main()
