"""Memory: the resident set of one gateway worker (gunicorn --workers 1) as requests accumulate.

Every backend's repeatable updates in turn, from 4 client threads with keep-alive sessions; RSS (and USS) of the
worker process is read with psutil at each checkpoint. Run alone: `python -m bench.memory [--quick]`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from bench.measure import Budget, Section
from bench.servers import Deployment
from bench.workload import DEMO_KEY, REPEATABLE

CONCURRENCY = 4
MB = 10**6
RSS_TARGET_MB = 80.0
#: RSS moves by about this much between readings without any leak (allocator arenas, caches warming up)
GROWTH_NOISE_MB = 2.0


class MixedLoad:
    """PATCH /orders/<id> of every backend's repeatable updates in turn, each thread with its own session."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.workloads = list(REPEATABLE.values())
        self.local = threading.local()

    def send(self, index: int, deadline: float) -> bool | None:
        """The index-th request: whether it succeeded, or None when the deadline had passed (nothing sent)."""
        if time.monotonic() >= deadline:
            return None
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False
            session.headers["Authorization"] = f"Bearer {DEMO_KEY}"
        workload = self.workloads[index % len(self.workloads)]
        order_id = workload.order_id(index // len(self.workloads))
        try:
            reply = session.patch(f"{self.base_url}/orders/{order_id}", json=workload.document(), timeout=15)
        except requests.RequestException:
            return False
        return reply.status_code == 200


def run_memory(deployment: Deployment, budget: Budget) -> Section:
    """RSS of the single worker at each checkpoint of requests served."""
    section = Section(
        "3. Memory",
        f"RSS and USS (MB = 10⁶ bytes) of the one worker of a gateway started with `--workers 1` (same "
        f"`config/gunicorn.py`), read with psutil after each checkpoint; the load is every backend's repeatable "
        f"updates in turn from {CONCURRENCY} threads, the whole bounded to {budget.memory_seconds:g} s. RSS counts "
        "the pages the worker shares with the preloaded master (copy-on-write); USS only its own.",
    )
    (worker_pid,) = deployment.gateway.worker_pids()
    worker = psutil.Process(worker_pid)
    load = MixedLoad(deployment.gateway.url)
    table = section.table("RSS of the worker", ["requests served", "errors", "RSS MB", "USS MB"])
    deadline = time.monotonic() + budget.memory_seconds
    served = errors = 0
    rss: dict[int, float] = {}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for checkpoint in budget.memory_checkpoints:
            outcomes = [outcome for outcome in pool.map(lambda index: load.send(index, deadline),
                                                        range(served, checkpoint)) if outcome is not None]
            served += len(outcomes)
            errors += outcomes.count(False)
            rss[served] = worker.memory_info().rss / MB
            table.add(f"{served:,}", errors, f"{rss[served]:.1f}", f"{worker.memory_full_info().uss / MB:.1f}")
            if served < checkpoint:
                table.add(f"stopped: the {budget.memory_seconds:g} s bound was reached", "", "", "")
                break
    if deployment.gateway.worker_pids() != [worker_pid]:
        table.add("the worker was replaced during the run: the figures are of the first one", "", "", "")
    first, last = min(rss), max(rss)
    peak = max(rss.values())
    section.judge_at_most("worker RSS < 80 MB", peak, RSS_TARGET_MB, "MB", "peak")
    section.judge_at_most(f"worker RSS flat from {first:,} to {last:,} requests (growth ≤ {GROWTH_NOISE_MB:g} MB)",
                          rss[last] - rss[first], GROWTH_NOISE_MB, "MB", f"{rss[first]:.1f} → {rss[last]:.1f} MB")
    return section


def main() -> None:
    """Run this section alone against a fresh single-worker gateway."""
    from bench.servers import running_deployment

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    with running_deployment(gateway_workers=1, with_passthrough=False) as deployment:
        print(run_memory(deployment, budget).as_markdown())


if __name__ == "__main__":
    main()
