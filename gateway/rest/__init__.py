"""The REST layer: body limits, request ids, trace context, problem+json errors, metrics, the order endpoints,
webhooks, events, the API docs, and the last scrub of every JSON reply."""

from flask import Flask, Response, request

from gateway import logs, tracing
from gateway.readiness import ReadinessChecks
from gateway.rest import (
    auth,
    common,
    docs,
    endpoints,
    events,
    exchanges,
    health,
    idempotency,
    limits,
    metrics,
    orders,
    problems,
    request_ids,
    traces,
    updates,
    webhooks,
)
from gateway.runtime import gateway_of

SCRUBBED_MEDIA_TYPES = frozenset({"application/json", problems.PROBLEM_MEDIA_TYPE})


def begin_request() -> None:
    """Begin serving a request, before anything can log or read it: its span (the caller's trace continued, or a
    new one), its log fields (which name the trace), its time budget's clock, and the refusal of a body BoundedBody
    flagged (413) or could not read (400)."""
    traces.start_server_span()
    # the request's log fields: records made while serving it carry them, and so does its access line
    request.environ[logs.ENVIRON_KEY] = logs.start_request(request_id=request_ids.current_request_id(),
                                                           trace_id=tracing.current_trace_id())
    common.request_budget()
    limits.refuse_oversized_body()


def finish_reply(response: Response) -> Response:
    """Finish every reply: the last scrub of a JSON one (a backend's success message may echo a secret), the request
    id echoed, the connection closed after a body that was not read to its end, and the status noted on the
    request's span."""
    if response.mimetype in SCRUBBED_MEDIA_TYPES and not response.direct_passthrough:
        data = response.get_data()
        clean = problems.scrubber().scrub_bytes(data)
        if clean is not data and clean != data:
            response.set_data(clean)
    response.headers[request_ids.HEADER] = request_ids.current_request_id()
    if request.environ.get(limits.CUT_OFF):  # the connection is unusable after a body refused or not read to its end
        response.headers["Connection"] = "close"
    return traces.note_status(response)


def end_request(error: BaseException | None = None) -> None:
    """Once the request is answered: forget its log fields, then end its span."""
    logs.end_request()
    traces.end_server_span(error)


def init_app(app: Flask) -> None:
    """Attach the REST layer to the app: the metrics' clock and count around everything (registered first, their
    reply hook runs last and sees the final status), then the request's beginning, its caller, and its reply's
    finish."""
    metrics.init_app(app)
    limits.init_app(app)
    app.before_request(begin_request)
    app.teardown_request(end_request)
    auth.init_app(app, app.config["GATEWAY_SETTINGS"])
    idempotency.init_app(app)
    gateway_of(app).readiness_checks = ReadinessChecks()
    problems.init_app(app)
    app.after_request(finish_reply)
    app.register_blueprint(orders.blueprint)
    app.register_blueprint(updates.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(docs.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(exchanges.blueprint)
    # Flask's own static route: the gateway has no static folder, so a known caller gets a 404
    endpoints.declare_route(app, "static", auth.Policy(auth.KNOWN, connection_data=False))
