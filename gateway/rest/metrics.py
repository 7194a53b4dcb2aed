"""GET /metrics, and the HTTP figures every request adds to it.

The scope metrics:read protects it unless [gateway] open_metrics says a scraper may read it without a key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, g, request
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway import metrics
from gateway.rest.auth import METRICS, Policy
from gateway.rest.endpoints import endpoint
from gateway.rest.queries import IgnoredQuery
from gateway.runtime import current_gateway

if TYPE_CHECKING:
    from gateway.connections import Connection
    from gateway.events.store import EventStore
    from gateway.jobs import JobStore

blueprint = Blueprint("metrics", __name__)
log = logging.getLogger("gateway.metrics")
UNMATCHED_ROUTE = "unmatched"  # a path no route serves: one label, however many such paths are asked for


def _start_clock() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    started = g.get("metrics_started")
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
    method = request.method if request.method in _METHODS else "other"
    metrics.child(metrics.http_requests, route, method, str(response.status_code)).inc()
    if started is not None:
        metrics.child(metrics.http_request_duration, route, method).observe(time.perf_counter() - started)
    return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class CurrentStateCollector:
    """Figures read from the stores at each scrape: pending deliveries per subscriber, each connection's breaker
    state, and each connection's active update jobs (queued or sending) with the age of its oldest. One that cannot
    be read is left out of that scrape, counted and logged by its kind only (an error's text may hold a URL)."""

    def __init__(self, store: EventStore, subscribers: Sequence[str], connections: Mapping[str, Connection], *,
                 jobs: JobStore) -> None:
        self.store = store
        self.subscribers = list(subscribers)
        self.connections = connections
        self.jobs = jobs

    def collect(self) -> Iterable[Metric]:
        """The gauges as the stores answer now."""
        pending = self._pending()
        if pending is not None:
            yield pending
        yield self._breakers()
        yield from self._active_jobs()

    def _pending(self) -> GaugeMetricFamily | None:
        try:
            counts = self.store.pending_counts(self.subscribers)
        except Exception as error:
            self._unreadable("events_pending", "the event store", error)
            return None
        family = GaugeMetricFamily(f"{metrics.PREFIX}_events_pending",
                                   "Deliveries not yet delivered or dead, by subscriber.", labels=("subscriber",))
        for subscriber in self.subscribers:
            family.add_metric((subscriber,), counts.get(subscriber, 0))
        return family

    def _breakers(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{metrics.PREFIX}_breaker_state",
                                   "A connection's circuit breaker: 1 for its current state, 0 for the others.",
                                   labels=("connection", "state"))
        for name, connection in self.connections.items():
            try:
                current = connection.breaker_state()["state"].replace("-", "_")
            except Exception as error:
                self._unreadable("breaker_state", f"the breaker of connection {name!r}", error)
                continue
            for state in metrics.BREAKER_STATES:
                family.add_metric((name, state), 1.0 if state == current else 0.0)
        return family

    def _active_jobs(self) -> list[GaugeMetricFamily]:
        """Per configured connection (a bounded label: jobs of a connection no longer configured are not shown),
        its jobs queued or sending and how long ago the oldest of them was accepted; 0 for a connection with
        none."""
        try:
            summary = self.jobs.active_summary()
        except Exception as error:
            self._unreadable(JOB_FIGURES, "the job store", error)
            return []
        now = time.time()
        queued = GaugeMetricFamily(f"{metrics.PREFIX}_{JOB_FIGURES[0]}",
                                   "Update jobs queued or sending, by connection (counted up to 100 000).",
                                   labels=("connection",))
        oldest = GaugeMetricFamily(f"{metrics.PREFIX}_{JOB_FIGURES[1]}",
                                   "Seconds since the oldest update job queued or sending was accepted, by "
                                   "connection (0: none).", labels=("connection",))
        for name in self.connections:
            count, accepted_at = summary.get(name, (0, None))
            queued.add_metric((name,), count)
            oldest.add_metric((name,), max(now - accepted_at, 0.0) if accepted_at is not None else 0.0)
        return [queued, oldest]

    @staticmethod
    def _unreadable(figures: str | tuple[str, ...], what: str, error: Exception) -> None:
        figures = (figures,) if isinstance(figures, str) else figures
        for figure in figures:
            metrics.unreadable_figures.labels(figure).inc()
        log.warning("metrics: %s could not be read (%s); %s left out of this scrape", what,
                    type(error).__name__, " and ".join(figures) + (" is" if len(figures) == 1 else " are"))


#: the figures read from the job store, named as they are counted when it cannot be read
JOB_FIGURES = ("jobs_queued", "job_oldest_queued_age_seconds")


def init_app(app: Flask) -> None:
    """Count every request; registered first, so its reply hook runs last and sees the final status."""
    app.before_request(_start_clock)
    app.after_request(_count_request)
    app.register_blueprint(blueprint)


@blueprint.get("/metrics")
# counts and states per connection, for the operators' monitoring: not scoped per caller
@endpoint("get", "/metrics", "Prometheus metrics of every gateway process", tags=["operations"],
          policy=Policy(METRICS, connection_data=False), query=IgnoredQuery, reply_media_type="text/plain",
          reply={"type": "string"}, replies={200: "the metrics in Prometheus' text format"},
          problems={401: "no valid API key", 403: "the key lacks the scope metrics:read", 500: "the gateway failed"})
def show_metrics(query: dict):
    """Requests, backend calls, webhooks, Idempotency-Key replays, journal failures and the event worker's
    deliveries and update jobs, summed over the processes; pending deliveries, breaker states and active update jobs
    as the stores say now."""
    events = current_gateway().events
    current = CurrentStateCollector(events.store, list(events.settings.subscribers),
                                    current_gateway().connections.by_name, jobs=events.jobs)
    body, media_type = metrics.exposition(current)
    return Response(body, status=200, headers={"Content-Type": media_type})
