"""What the production features cost a request, all together and each alone, in process and without contention.

`PATCH /orders/SO-1006 {"status": "released"}` through Flask's test client (one thread) of a gateway built with
`create_app(config, transports=...)` whose Ongoing connection (the backend with a call lock, so every guard is
there) has a fake transport answering from memory with the reply the sandbox app gives that request. Once with
everything on — an authenticated caller with a fresh Idempotency-Key, every guard of the connection
(`Connection.guards`: breaker, bulkhead, call lock, and any other, each known by its `name`), the exchange journal,
a JSON log line per call and per request written to /dev/null — and once with all of them off (anonymous caller
without a key, no guard, no journal, no log handler). What stays in both is the gateway itself: validation,
translation, the reply, its metrics and trace context. Then each feature alone switched off from "everything on":
what the request saves without it is what it costs. Once with the embedded coordination (SQLite, lock files) and
once with `[events] redis_url` (Redis for the key store, the journal, the lock and the breaker's state), on a
redis-server started for the run (skipped, and said so, without one).

Run alone: `python -m bench.features [--quick]`.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flask import Flask

import sandbox
from bench.measure import Budget, Section, microseconds, percentile, time_cases_interleaved
from bench.servers import running_redis
from bench.workload import (
    DEMO_KEY,
    NO_BACKEND,
    TYPICAL,
    configured_connections,
    parsed_config,
    rendered_request,
    sandbox_reply,
)
from gateway import create_app, logs
from gateway.runtime import gateway_of
from gateway.transport import BackendReply, OutboundRequest

WORKLOAD = TYPICAL["ongoing"]
URL = f"/orders/{WORKLOAD.order_id(0)}"
CALLERS = "authentication + Idempotency-Key"
JOURNAL, LOGS = "exchange journal", "JSON logs"
ALL_TARGET_US, CALLERS_TARGET_US = 300.0, 200.0


class CannedTransport:
    """A Transport (gateway/transport.py) that answers every request with the same reply and sends nothing."""

    def __init__(self, reply: BackendReply) -> None:
        self.reply = reply

    def send(self, request: OutboundRequest, deadline: object = None) -> BackendReply:
        """The canned reply."""
        return self.reply

    def close(self) -> None:
        """Nothing to release."""


def canned_reply(folder: Path) -> BackendReply:
    """The sandbox's reply to the workload's update, produced by its app in process."""
    connection = configured_connections(NO_BACKEND, folder)[WORKLOAD.backend]
    try:
        return sandbox_reply(sandbox.create_app().test_client(), connection, rendered_request(connection, WORKLOAD))
    finally:
        connection.close()


class Variants:
    """Two in-process gateways (with callers, and anonymous) whose features are switched per request."""

    def __init__(self, folder: Path, redis_url: str | None, stack: ExitStack) -> None:
        (folder / "reply").mkdir(parents=True, exist_ok=True)
        transports = {WORKLOAD.connection: CannedTransport(canned_reply(folder / "reply"))}
        self.apps = {}
        for authenticated in (True, False):
            config = parsed_config(NO_BACKEND, folder / ("callers" if authenticated else "anonymous"), redis_url)
            if not authenticated:
                del config["callers"]
                config["gateway"]["allow_anonymous"] = True
            app = self.apps[authenticated] = create_app(config, transports=transports)
            stack.callback(gateway_of(app).close)
        self.originals = {authenticated: (list(self.connection(app).guards), self.connection(app).recorder)
                          for authenticated, app in self.apps.items()}
        self.guards = [guard.name for guard in self.originals[True][0]]
        self.features = (CALLERS, *(f"{name} guard" for name in self.guards), JOURNAL, LOGS)
        self.keys = itertools.count()
        # the log handler a gunicorn worker has, writing where nothing is kept
        self.handler = logging.StreamHandler(stack.enter_context(open(os.devnull, "w")))  # noqa: SIM115
        self.handler.setFormatter(logs.formatter("json"))
        self.handler.addFilter(logs.ContextFilter())
        self.root, level = logging.getLogger(), logging.getLogger().level
        stack.callback(lambda: (self.root.removeHandler(self.handler), self.root.setLevel(level)))

    @staticmethod
    def connection(app: Flask) -> Any:
        """The app's connection of the workload."""
        return gateway_of(app).connections.resolve(WORKLOAD.connection)

    def request(self, off: frozenset[str]) -> None:
        """One PATCH with the features in `off` switched off."""
        authenticated = CALLERS not in off
        app = self.apps[authenticated]
        connection, (guards, recorder) = self.connection(app), self.originals[authenticated]
        connection.guards = [guard for guard in guards if f"{guard.name} guard" not in off]
        connection.recorder = None if JOURNAL in off else recorder
        if LOGS in off:
            self.root.removeHandler(self.handler)
        elif self.handler not in self.root.handlers:
            self.root.addHandler(self.handler)
            self.root.setLevel(logging.INFO)
        headers = ({"Authorization": f"Bearer {DEMO_KEY}", "Idempotency-Key": f'"cost-{next(self.keys)}"'}
                   if authenticated else {})
        response = app.test_client().patch(URL, json=WORKLOAD.document(), headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"PATCH {URL} answered {response.status_code}: {response.get_data()[:300]!r}")


def run_features(budget: Budget) -> Section:
    """Everything on against everything off, and each feature alone off, with SQLite and with Redis."""
    method = __doc__.split("\n\n", 1)[1].split("\n\nRun alone")[0].replace("\n", " ")
    section = Section("4. Production features, in process", method + f" p50 and p90 in µs of up to "
                      f"{budget.feature_rounds} requests per case, the cases interleaved in blocks of 20.")
    table = section.table("per request, µs", ("coordination", "case", "p50", "p90", "saved at p50"))
    with tempfile.TemporaryDirectory(prefix="bench-features-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        redis_url, why = stack.enter_context(running_redis(folder / "redis"))
        coordinations = {"SQLite": None, **({"Redis": redis_url} if redis_url else {})}
        if redis_url is None:
            table.add("Redis", f"skipped: {why}", "", "", "")
        for store, url in coordinations.items():
            variants = Variants(folder / store, url, stack)
            cases = {"everything on": frozenset(), "everything off": frozenset(variants.features),
                     **{f"without {feature}": frozenset({feature}) for feature in variants.features}}
            timings = time_cases_interleaved({name: lambda off=off, v=variants: v.request(off) for name, off in
                                              cases.items()}, rounds=budget.feature_rounds,
                                             seconds=budget.feature_seconds, warmup_rounds=50, block=20)
            p50 = {name: percentile(values, 0.5) for name, values in timings.items()}
            for name, values in timings.items():
                saved = "" if name == "everything on" else microseconds(p50["everything on"] - p50[name])
                table.add(store, name, microseconds(p50[name]), microseconds(percentile(values, 0.9)), saved)
            everything = (p50["everything on"] - p50["everything off"]) / 1000
            section.judge_at_most(f"all production features together ({store}) ≤ 300 µs at p50", everything,
                                  ALL_TARGET_US, "µs", f"{microseconds(p50['everything on'])} on vs "
                                                        f"{microseconds(p50['everything off'])} off")
            callers = (p50["everything on"] - p50[f"without {CALLERS}"]) / 1000
            section.judge_at_most(f"{CALLERS} ({store}) ≤ 200 µs at p50", callers, CALLERS_TARGET_US, "µs")
    return section


def main() -> None:
    """Print this section alone."""
    print(run_features(Budget.from_command_line(__doc__.splitlines()[0])).as_markdown())


if __name__ == "__main__":
    main()
