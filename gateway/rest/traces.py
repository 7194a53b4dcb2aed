"""Each request's server span: the caller's trace continued (W3C traceparent/tracestate) or a new one started.

The span is current while the request is served, so backend calls (gateway.connections) and stored events
(gateway.rest.webhooks) carry it on, and the request's log lines name its trace id.
"""

from __future__ import annotations

from flask import Response, g, request
from opentelemetry.trace import SpanKind

from gateway import tracing


def start_server_span() -> None:
    """Continue the caller's trace, or start one, for this request."""
    route = request.url_rule.rule if request.url_rule is not None else None
    headers = {name: request.headers.getlist(name) for name in tracing.HEADERS if name in request.headers}
    attributes = {"http.request.method": request.method, "url.path": request.path}
    if route is not None:
        attributes["http.route"] = route
    g.server_span = tracing.start_span(f"{request.method} {route}" if route else request.method,
                                       kind=SpanKind.SERVER, parent=tracing.incoming_context(headers),
                                       attributes=attributes)


def note_status(response: Response) -> Response:
    """The reply's status on the span."""
    started = g.get("server_span")
    if started is not None and started[0].is_recording():
        started[0].set_attribute("http.response.status_code", response.status_code)
        g.server_span_error = f"HTTP {response.status_code}" if response.status_code >= 500 else None
    return response


def end_server_span(error: BaseException | None = None) -> None:
    """End the request's span once it is answered."""
    started = g.pop("server_span", None)
    if started is not None:
        tracing.end_span(*started, error=type(error).__name__ if error is not None else g.get("server_span_error"))
