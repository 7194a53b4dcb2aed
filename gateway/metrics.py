"""The gateway's Prometheus metrics (prometheus-client), one prefix, base units, `_total` counters.

Under gunicorn every worker is a process of its own: prometheus-client's multiprocess mode, switched on by
PROMETHEUS_MULTIPROC_DIR (config/gunicorn.py sets it, under var/, and empties it at start), lets each worker write
its figures to files there and any worker sum them all for a scrape. Without it (tests, `flask run`) the figures are
the process's own. No label takes an unbounded value: routes are URL rules, not paths; no order or request ids.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "order_gateway"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: OpenTelemetry's advised buckets for HTTP durations, in seconds
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

http_requests = Counter(f"{PREFIX}_http_requests_total", "HTTP requests answered, by route, method and status.",
                        ("route", "method", "status"))
http_request_duration = Histogram(f"{PREFIX}_http_request_duration_seconds",
                                  "Time to answer an HTTP request, by route and method.", ("route", "method"),
                                  buckets=DURATION_BUCKETS)
backend_calls = Counter(f"{PREFIX}_backend_calls_total",
                        "Calls to backends (each attempt), by connection, backend, operation and outcome.",
                        ("connection", "backend", "operation", "outcome"))
backend_call_duration = Histogram(f"{PREFIX}_backend_call_duration_seconds",
                                  "Duration of a call to a backend, by connection, backend and operation.",
                                  ("connection", "backend", "operation"), buckets=DURATION_BUCKETS)
webhooks_received = Counter(f"{PREFIX}_webhooks_received_total",
                            "Webhooks received, by connection and result (stored, duplicate, rejected).",
                            ("connection", "result"))
idempotency_replays = Counter(f"{PREFIX}_idempotency_replays_total",
                              "Replies replayed for a repeated Idempotency-Key.")
journal_failures = Counter(f"{PREFIX}_journal_failures_total",
                           "Backend exchanges the journal could not record (dropped or failed).")


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its media type: every worker's when in multiprocess mode."""
    if os.environ.get(MULTIPROCESS_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
