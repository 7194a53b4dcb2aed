"""The gateway's Prometheus metrics (prometheus-client), one prefix, base units, `_total` counters.

Under gunicorn every worker is a process of its own: prometheus-client's multiprocess mode, switched on by
PROMETHEUS_MULTIPROC_DIR, lets each process write its figures to files there and any worker sum them all for a
scrape. Every directory lies under one metrics root (GATEWAY_METRICS_DIR, by default var/metrics): config/gunicorn.py
gives each server `<root>/<master pid>`, the event worker (gateway/events/worker.py) writes to `<root>/worker-<pid>`,
and a scrape merges the server's own directory with every worker's, so one GET /metrics shows the deliveries too.
Without it (tests, `flask run`) the figures are the process's own. What the stores know at the moment of a scrape
(pending deliveries, breaker states) is read then by `CurrentStateCollector`, never kept in files.
No label takes an unbounded value: routes are URL rules, not paths; subscribers and connections come from the
configuration; no order or request ids.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from gateway.connections import Connection
    from gateway.events.store import EventStore

PREFIX = "order_gateway"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
ROOT_VARIABLE = "GATEWAY_METRICS_DIR"
DEFAULT_ROOT = Path("var") / "metrics"
WORKER_DIR_PREFIX = "worker-"
#: the directories under the root: a server's `<master pid>` or an event worker's `worker-<pid>`
PROCESS_DIR = re.compile(r"(?:worker-)?([0-9]+)")
#: OpenTelemetry's advised buckets for HTTP durations, in seconds
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: from a delivery made at once to one that waited out an hour of retries, in seconds
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
               3600.0)
#: the states of a breaker as label values (pybreaker's "half-open" with an underscore, as Prometheus labels go)
BREAKER_STATES = ("closed", "open", "half_open")

log = logging.getLogger("gateway.metrics")

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
event_deliveries = Counter(f"{PREFIX}_event_deliveries_total",
                           "Attempts to deliver an event, by subscriber and outcome (delivered, failed: to be "
                           "retried, dead).", ("subscriber", "outcome"))
event_delivery_lag = Histogram(f"{PREFIX}_event_delivery_lag_seconds",
                               "Time from storing an event to delivering it, by subscriber.", ("subscriber",),
                               buckets=LAG_BUCKETS)
unreadable_figures = Counter(f"{PREFIX}_metrics_unreadable_total",
                             "Scrapes that left a figure out because its store could not be read, by figure.",
                             ("figure",))


def metrics_root() -> Path:
    """The directory every process's metrics directory lies in (GATEWAY_METRICS_DIR, by default var/metrics)."""
    return Path(os.environ.get(ROOT_VARIABLE) or DEFAULT_ROOT)


def process_running(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def prepare_worker_dir(root: Path, pid: int) -> Path:
    """A fresh `<root>/worker-<pid>` for an event worker's figures; those of workers no longer running, and one
    left by an earlier process with this pid, are removed first."""
    for old in root.glob(f"{WORKER_DIR_PREFIX}*"):
        match = PROCESS_DIR.fullmatch(old.name)
        if match and (int(match[1]) == pid or not process_running(int(match[1]))):
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"{WORKER_DIR_PREFIX}{pid}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


class MergedFilesCollector:
    """The figures in the files of one multiprocess directory and of every event worker's beside it, each metric
    family once (its samples summed as prometheus-client's MultiProcessCollector sums one directory's)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def files(self) -> list[str]:
        """The figure files to merge."""
        return (glob.glob(os.path.join(self.path, "*.db"))
                + glob.glob(os.path.join(self.path.parent, f"{WORKER_DIR_PREFIX}*", "*.db")))

    def collect(self) -> Iterable[Metric]:
        """Merge the files as they are now."""
        try:
            return multiprocess.MultiProcessCollector.merge(self.files(), accumulate=True)
        except FileNotFoundError:  # a dead worker's directory was removed between listing and reading: list again
            return multiprocess.MultiProcessCollector.merge(self.files(), accumulate=True)


class _ThisProcess:
    """The figures of this process (prometheus-client's default registry), for a scrape without multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        """Every metric this process registered."""
        return REGISTRY.collect()


class CurrentStateCollector:
    """Figures read from the stores at each scrape: pending deliveries per subscriber and each connection's breaker
    state. One that cannot be read is left out of that scrape, counted and logged by its kind only (an error's text
    may hold a URL)."""

    def __init__(self, store: EventStore, subscribers: Sequence[str], connections: Mapping[str, Connection]) -> None:
        self.store = store
        self.subscribers = list(subscribers)
        self.connections = connections

    def collect(self) -> Iterable[Metric]:
        """The gauges as the stores answer now."""
        pending = self._pending()
        if pending is not None:
            yield pending
        yield self._breakers()

    def _pending(self) -> GaugeMetricFamily | None:
        try:
            counts = self.store.pending_counts(self.subscribers)
        except Exception as error:
            self._unreadable("events_pending", "the event store", error)
            return None
        family = GaugeMetricFamily(f"{PREFIX}_events_pending",
                                   "Deliveries not yet delivered or dead, by subscriber.", labels=("subscriber",))
        for subscriber in self.subscribers:
            family.add_metric((subscriber,), counts.get(subscriber, 0))
        return family

    def _breakers(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{PREFIX}_breaker_state",
                                   "A connection's circuit breaker: 1 for its current state, 0 for the others.",
                                   labels=("connection", "state"))
        for name, connection in self.connections.items():
            try:
                current = connection.breaker_state()["state"].replace("-", "_")
            except Exception as error:
                self._unreadable("breaker_state", f"the breaker of connection {name!r}", error)
                continue
            for state in BREAKER_STATES:
                family.add_metric((name, state), 1.0 if state == current else 0.0)
        return family

    @staticmethod
    def _unreadable(figure: str, what: str, error: Exception) -> None:
        unreadable_figures.labels(figure).inc()
        log.warning("metrics: %s could not be read (%s); %s is left out of this scrape", what,
                    type(error).__name__, figure)


def exposition(*current: object) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its media type: every process's when in multiprocess mode,
    with the figures of the `current` collectors read now (before the files, so their failures count at once)."""
    registry = CollectorRegistry()
    for collector in current:
        registry.register(collector)
    path = os.environ.get(MULTIPROCESS_VARIABLE)
    registry.register(MergedFilesCollector(path) if path else _ThisProcess())
    return generate_latest(registry), CONTENT_TYPE_LATEST
