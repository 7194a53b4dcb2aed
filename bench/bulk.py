"""Bulk: one PATCH /orders with 500 items against 500 single PATCHes sent one after another, per backend.

Ongoing carries one order per UpdateOrder call (sent in sequence inside the gateway); Speed4Trade and
SellerCenter carry up to `max_orders_per_call` (100 in config/sandbox.toml) per call. Run alone:
`python -m bench.bulk [--quick]`.
"""

from __future__ import annotations

import statistics
import time

import requests

from bench.load import REQUEST_TIMEOUT, keep_alive_session
from bench.measure import Budget, Section
from bench.servers import Deployment
from bench.workload import REPEATABLE

BULK_TIMEOUT = 120.0
SINGLES_DEADLINE = 120.0  # seconds for one series of single updates


def time_bulk_update(session: requests.Session, base_url: str, backend: str, items: int) -> float:
    """Seconds for one PATCH /orders with `items` repeatable updates; fails unless every item succeeded."""
    document = REPEATABLE[backend].bulk_document(items)
    started = time.perf_counter()
    reply = session.patch(f"{base_url}/orders", json=document, timeout=BULK_TIMEOUT)
    seconds = time.perf_counter() - started
    body = reply.json()
    if reply.status_code != 200 or body.get("succeeded") != items:
        raise RuntimeError(f"{backend} bulk: HTTP {reply.status_code}, {body.get('failed')} of {items} failed")
    return seconds


def time_single_updates(session: requests.Session, base_url: str, backend: str, items: int) -> float:
    """Seconds for `items` single PATCH /orders/<id>, each sent when the previous one was answered."""
    workload = REPEATABLE[backend]
    document = workload.document()
    started = time.perf_counter()
    for index in range(items):
        if time.perf_counter() - started > SINGLES_DEADLINE:
            raise RuntimeError(f"{backend}: {index} single updates took more than {SINGLES_DEADLINE:g} s")
        reply = session.patch(f"{base_url}/orders/{workload.order_id(index)}", json=document, timeout=REQUEST_TIMEOUT)
        if reply.status_code != 200:
            raise RuntimeError(f"{backend} single update {index}: HTTP {reply.status_code}")
    return time.perf_counter() - started


def run_bulk(deployment: Deployment, budget: Budget) -> Section:
    """Milliseconds per item, bulk and single, per backend."""
    items = budget.bulk_items
    section = Section(
        "4. Bulk",
        f"Per backend: one `PATCH /orders` with {items} items (`max_bulk_items` 500; Speed4Trade and SellerCenter "
        f"`max_orders_per_call` 100, so {-(-items // 100)} backend calls; Ongoing {items} calls in sequence) against "
        f"{items} single `PATCH /orders/<id>` sent one after another from one client. Median of "
        f"{budget.bulk_repetitions} repetition(s), bulk and singles alternating; every item must succeed.",
    )
    table = section.table("milliseconds per item", ["backend", "bulk ms/item", "single ms/item",
                                                    "single ÷ bulk", "bulk call s"])
    with keep_alive_session() as session:
        for backend in REPEATABLE:
            seconds: dict[str, list[float]] = {"bulk": [], "single": []}
            for repetition in range(budget.bulk_repetitions):
                for kind in ("bulk", "single") if repetition % 2 == 0 else ("single", "bulk"):
                    timer = time_bulk_update if kind == "bulk" else time_single_updates
                    seconds[kind].append(timer(session, deployment.gateway.url, backend, items))
            bulk, single = statistics.median(seconds["bulk"]), statistics.median(seconds["single"])
            table.add(backend, f"{bulk / items * 1000:.3f}", f"{single / items * 1000:.3f}", f"{single / bulk:.1f}x",
                      f"{bulk:.2f}")
    return section


def main() -> None:
    """Run this section alone against a fresh deployment."""
    from bench.servers import running_deployment

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    with running_deployment(gateway_workers=2, with_passthrough=False) as deployment:
        print(run_bulk(deployment, budget).as_markdown())


if __name__ == "__main__":
    main()
