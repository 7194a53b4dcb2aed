"""What the production features cost a request together, and each one, without contention.

In process (Flask's test client, one thread), `PATCH /orders/SO-1006 {"status": "released"}` to a gateway whose
Ongoing transport answers from memory: once with everything on — an authenticated caller with a fresh
Idempotency-Key, the goods-owner lock, the breaker and the bulkhead, the exchange journal, a JSON log line per call
and per request written (to /dev/null) — and once with all of them off (no callers, no key, the connection's lock,
breaker and bulkhead guards left out of its `guards`, no journal, no log handler). What stays in both is the gateway
itself: validation, translation, the reply, its metrics and trace context. Then each feature alone switched off from
"everything on": what the request saves without it is what it costs. Once with the embedded coordination (SQLite,
lock files) and once with `[events] redis_url` (Redis for the key store, the journal, the lock and the breaker's
state), on a redis-server started for the run.

Run alone: `python -m bench.features_cost [--quick]`.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flask import Flask

from bench.caller_cost import DOCUMENT, URL, canned_reply, close_app, gateway_config
from bench.measure import Budget, Section, microseconds, percentile, time_cases_interleaved
from bench.profile_hotspots import CannedTransport
from bench.resilience_cost import running_redis_server
from bench.workload import CONNECTIONS, DEMO_KEY
from gateway import create_app, logs
from gateway.connections import BreakerGuard, BulkheadGuard, CallGuard, CallLockGuard
from gateway.rest.idempotency import HEADER
from gateway.runtime import gateway_of

BACKEND = "ongoing"
TOTAL_TARGET_NS = 300_000
FEATURES = ("authentication + Idempotency-Key", "goods-owner lock", "breaker + bulkhead", "exchange journal",
            "JSON logs")
#: the connection's guards that make a feature, switched off by leaving them out of `Connection.guards`
GUARDS: dict[str, tuple[type[CallGuard], ...]] = {"goods-owner lock": (CallLockGuard,),
                                                  "breaker + bulkhead": (BreakerGuard, BulkheadGuard)}


class Variants:
    """Two in-process gateways (with callers, and anonymous) whose features are switched per request."""

    def __init__(self, folder: Path, redis_url: str | None, stack: ExitStack) -> None:
        transports = {CONNECTIONS[BACKEND]: CannedTransport(canned_reply(folder / "reply"))}

        def gateway(name: str, **variant: Any) -> Flask:
            app = create_app(gateway_config(folder / name, redis_url=redis_url, **variant), transports=transports)
            stack.callback(close_app, app)
            return app

        self.with_callers, self.anonymous = gateway("callers"), gateway("anonymous", anonymous=True)
        self.keys = itertools.count()
        # the log handler gunicorn's logger would add, writing where nothing is kept
        self.sink = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115 - closed by the stack
        self.handler = logs._prepare(logging.StreamHandler(self.sink), "json")
        self.root = logging.getLogger()
        self.saved_level = self.root.level
        stack.callback(self._remove_handler)
        self.originals = {id(app): self._connection(app).__dict__.copy() for app in (self.with_callers,
                                                                                    self.anonymous)}

    @staticmethod
    def _connection(app: Flask) -> Any:
        return gateway_of(app).connections.resolve(CONNECTIONS[BACKEND])

    def _remove_handler(self) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.saved_level)

    def request(self, *, off: frozenset[str]) -> None:
        """One PATCH with the features in `off` switched off."""
        authenticated = "authentication + Idempotency-Key" not in off
        app = self.with_callers if authenticated else self.anonymous
        connection, original = self._connection(app), self.originals[id(app)]
        # the connection's guards are its extension point: a feature switched off is its guard left out
        left_out = {guard for feature, guards in GUARDS.items() if feature in off for guard in guards}
        connection.guards = [guard for guard in original["guards"] if type(guard) not in left_out]
        connection.recorder = None if "exchange journal" in off else original["recorder"]
        if "JSON logs" in off:
            self.root.removeHandler(self.handler)
        elif self.handler not in self.root.handlers:
            self.root.addHandler(self.handler)
            self.root.setLevel(logging.INFO)
        headers = {"Authorization": f"Bearer {DEMO_KEY}", HEADER: f'"cost-{next(self.keys)}"'} if authenticated else {}
        response = app.test_client().patch(URL, json=DOCUMENT, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"PATCH {URL} answered {response.status_code}: {response.get_data()[:300]!r}")

    def check(self) -> None:
        """Each variant succeeds; with everything on, the journal, the log and the key store are written."""
        stream = io.StringIO()
        self.handler.setStream(stream)
        try:
            self.request(off=frozenset())
        finally:
            self.handler.setStream(self.sink)
        if '"logger": "gateway.backends"' not in stream.getvalue():
            raise RuntimeError("no JSON log line was written with everything on")
        self.request(off=frozenset(FEATURES))
        recorder = gateway_of(self.with_callers).recorder
        recorder.flush(timeout=5)
        if not recorder.journal.list(limit=1):
            raise RuntimeError("the journal recorded nothing with everything on")


def run_features_cost(budget: Budget) -> Section:
    """Everything on against everything off, and each feature's share, with SQLite and with Redis."""
    section = Section(
        "10. Production features together",
        __doc__.split("\n\n", 1)[1].split("\n\nRun alone")[0].replace("\n", " ")
        + f" p50 and p90 in µs of up to {budget.caller_rounds} requests per case, the cases interleaved.",
    )
    table = section.table("per request, µs (p50 / p90)", ("coordination", "case", "p50", "p90", "saved at p50"))
    rounds = budget.caller_rounds
    with tempfile.TemporaryDirectory(prefix="bench-features-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        (folder / "redis").mkdir()
        redis = stack.enter_context(running_redis_server(folder / "redis"))
        coordinations = {"embedded": None, **({"redis": redis.url} if redis.url else {})}
        if not redis.url:
            section.note(f"No Redis figures: {redis.unavailable}.")
        for coordination, url in coordinations.items():
            variants = Variants(folder / coordination, url, stack)
            variants.check()
            cases = {"everything on": lambda v=variants: v.request(off=frozenset()),
                     "everything off": lambda v=variants: v.request(off=frozenset(FEATURES))}
            for feature in FEATURES:
                cases[f"without {feature}"] = lambda v=variants, f=feature: v.request(off=frozenset({f}))
            timings = time_cases_interleaved(cases, rounds=rounds, seconds=budget.caller_seconds / 2,
                                             warmup_rounds=50, block=20)
            p50 = {name: percentile(values, 0.5) for name, values in timings.items()}
            for name, values in timings.items():
                saved = "" if name == "everything on" else microseconds(p50["everything on"] - p50[name])
                table.add(coordination, name, microseconds(p50[name]), microseconds(percentile(values, 0.9)), saved)
                section.figures[f"{coordination}: {name} p50 ns"] = p50[name]
            total = p50["everything on"] - p50["everything off"]
            section.figures[f"{coordination}: all features p50 ns"] = total
            store = "SQLite" if coordination == "embedded" else "Redis"
            detail = (f"{microseconds(total)} µs p50 ({microseconds(p50['everything on'])} on vs "
                      f"{microseconds(p50['everything off'])} off)")
            section.judge(f"all production features together ({store}) add ≤ {TOTAL_TARGET_NS // 1000} µs p50 to a "
                          "PATCH (in process)", total <= TOTAL_TARGET_NS,
                          detail + (f", {microseconds(TOTAL_TARGET_NS - total)} µs under" if total <= TOTAL_TARGET_NS
                                    else f", {total / TOTAL_TARGET_NS:.1f}x the target"))
    section.note("Each *without* row saves what that feature costs with the others on; the savings need not add up "
                 "to the whole (the features share work: one SQLite connection, one log record's context).")
    return section


def main() -> None:
    """Print this section alone."""
    print(run_features_cost(Budget.from_command_line(__doc__.splitlines()[0])).as_markdown())


if __name__ == "__main__":
    main()
