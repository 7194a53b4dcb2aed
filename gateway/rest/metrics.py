"""GET /metrics, and the HTTP figures every request adds to it.

The scope metrics:read protects it unless [gateway] open_metrics says a scraper may read it without a key.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request

from gateway import metrics
from gateway.rest.openapi import documented
from gateway.runtime import current_gateway

blueprint = Blueprint("metrics", __name__)
UNMATCHED_ROUTE = "unmatched"  # a path no route serves: one label, however many such paths are asked for


def _start_clock() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    started = g.get("metrics_started")
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
    method = request.method if request.method in _METHODS else "other"
    metrics.http_requests.labels(route, method, str(response.status_code)).inc()
    if started is not None:
        metrics.http_request_duration.labels(route, method).observe(time.perf_counter() - started)
    return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def init_app(app: Flask) -> None:
    """Count every request; registered first, so its reply hook runs last and sees the final status."""
    app.before_request(_start_clock)
    app.after_request(_count_request)
    app.register_blueprint(blueprint)


@blueprint.get("/metrics")
@documented("/metrics", "get", "Prometheus metrics of every gateway process", tags=["operations"],
            reply_media_type="text/plain", replies={200: ("the metrics in Prometheus' text format",
                                                          {"type": "string"})},
            problems={401: "no valid API key", 403: "the key lacks the scope metrics:read", 500: "the gateway failed"})
def show_metrics():
    """Requests, backend calls, webhooks, Idempotency-Key replays, journal failures and the event worker's
    deliveries, summed over the processes; pending deliveries and breaker states as the stores say now."""
    events = current_gateway().events
    current = metrics.CurrentStateCollector(events.store, list(events.settings.subscribers),
                                            current_gateway().connections.by_name)
    body, media_type = metrics.exposition(current)
    return Response(body, status=200, headers={"Content-Type": media_type})
