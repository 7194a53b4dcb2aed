"""Event pipeline: webhook intake of the gateway against a server that only answers 202, with the SQLite and with
the Redis store.

The gateway under gunicorn (`config/gunicorn.py`, 2 workers), once with the SQLite store and once with `[events]
redis_url` (a redis-server of the run's own; skipped, and said so, when none is installed), beside
bench/accept_app.py under the same settings: it reads the body and answers 202, nothing stored. wrk sends Ongoing
order webhooks, each with a `webhookEventId` of its own (so each is stored), at concurrency 1 and 16, the targets
taking turns. No event worker runs: what is measured is the intake alone.

Run alone: `python -m bench.events [--quick]`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from pathlib import Path

from bench.measure import Budget, Section, milliseconds
from bench.servers import gunicorn_like_the_gateway, running_redis
from bench.workload import (
    NO_BACKEND,
    SANDBOX,
    default_of,
    environment_without_backend_urls,
    recent_ongoing_timestamp,
    sandbox_urls,
    write_config_copy,
)
from bench.wrk import WrkResult, run_wrk, write_script

WEBHOOKS = SANDBOX["ongoing"]
WEBHOOK_PATH = f"/webhooks/ongoing/{WEBHOOKS.name}"
WORKERS = 2
CONCURRENCIES = (1, 16)
INTAKE_TARGET = 0.50  # of the baseline's 202s per second, at each concurrency
#: the webhooks spread over this many orders, as an order's webhooks come (created, status changes, picked)
ORDERS = 2_000
#: a webhook as Ongoing sends it: its id, then its order twice (id and number)
TEMPLATE = ('{"webhookEventId": %d, "system": "bench", "timestamp": "' + recent_ongoing_timestamp() + '", '
            '"orderId": %d, "orderNumber": "SO-%d", "webhookTemplate": "OrderStatusChanged", '
            '"orderStatus": {"number": 300}}')


def basic_authorization() -> str:
    """The Authorization header of the sandbox configuration's webhook credentials (HTTP Basic)."""
    settings = WEBHOOKS.table["webhooks"]
    credentials = f"{default_of(settings['username'])}:{default_of(settings['password'])}"
    return "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


def run_event_pipeline(budget: Budget) -> Section:
    """202s per second of the gateway's webhook intake against the baseline's, per store and concurrency."""
    section = Section("5. Event pipeline", __doc__.split("\n\n", 1)[1].split("\n\nRun alone")[0].replace("\n", " ")
                      + f" {budget.intake_seconds} s per run; wrk pinned to the last CPU, which the servers share.")
    table = section.table("webhook intake, no worker running (wrk, a webhook of its own per request)",
                          ["target", "concurrency", "202s/s", "of the baseline", "p50 ms", "p99 ms", "errors"])
    results: dict[tuple[str, int], WrkResult] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-events-") as scratch, contextlib.ExitStack() as stack:
        folder = Path(scratch)
        redis_url, why = stack.enter_context(running_redis(folder / "redis"))
        stores = {"SQLite": None, **({"Redis": redis_url} if redis_url else {})}
        if redis_url is None:
            table.add(f"Redis skipped: {why}", "", "", "", "", "", "")
        env = {**environment_without_backend_urls(), **sandbox_urls(NO_BACKEND),
               "GATEWAY_METRICS_DIR": str(folder / "metrics")}
        servers = {}
        for name, app, store in (("baseline", "bench.accept_app:app", None),
                                 *((f"gateway, {store}", "wsgi:app", url) for store, url in stores.items())):
            # config/gunicorn.py sizes the open-files limit from the gateway's settings: the baseline reads them too
            config = write_config_copy(folder / name.replace(", ", "-"), store)
            servers[name] = gunicorn_like_the_gateway(name, app, WORKERS, {**env, "GATEWAY_CONFIG": str(config)},
                                                      folder)
            stack.callback(servers[name].stop)
        for server in servers.values():
            server.wait_until_serving("/")
        headers = {"Content-Type": "application/json", "Authorization": basic_authorization()}
        for block, (concurrency, name) in enumerate(((c, n) for c in CONCURRENCIES for n in servers), start=1):
            order = f"{block * 10_000} + n % {ORDERS}"
            script = write_script(folder, body_template=TEMPLATE, method="POST", path=WEBHOOK_PATH,
                                  headers=headers, unique_base=block * 10_000_000, values=f"n, {order}, {order}")
            results[name, concurrency] = run_wrk(servers[name].url, script, connections=concurrency,
                                                 seconds=budget.intake_seconds, cpu=max(os.sched_getaffinity(0)))
    for concurrency in CONCURRENCIES:
        baseline = results["baseline", concurrency]
        for (name, at), result in results.items():
            if at == concurrency:
                share = "" if name == "baseline" else f"{result.rate / baseline.rate:.0%}"
                table.add(name, concurrency, f"{result.rate:,.0f}", share, milliseconds(result.p50),
                          milliseconds(result.p99), result.errors)
    for store in stores:
        for concurrency in CONCURRENCIES:
            gateway, baseline = results[f"gateway, {store}", concurrency], results["baseline", concurrency]
            errors = f", {gateway.errors} errors" if gateway.errors else ""
            section.judge_at_least(f"webhook intake ({store}) ≥ 50% of the no-storage baseline, concurrency "
                                   f"{concurrency}", gateway.rate / baseline.rate if not gateway.errors else 0.0,
                                   INTAKE_TARGET, f"{gateway.rate:,.0f} vs {baseline.rate:,.0f}/s{errors}")
    return section


def main() -> None:
    """Run this section alone."""
    print(run_event_pipeline(Budget.from_command_line(__doc__.splitlines()[0])).as_markdown())


if __name__ == "__main__":
    main()
