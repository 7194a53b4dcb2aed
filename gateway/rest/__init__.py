"""The REST layer: body limits, request ids, trace context, problem+json errors, metrics, the order endpoints,
webhooks, events, the API docs, and the last scrub of every JSON reply."""

from flask import Flask, Response

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
    webhooks,
)

SCRUBBED_MEDIA_TYPES = frozenset({"application/json", problems.PROBLEM_MEDIA_TYPE})


def scrub_json_reply(response: Response) -> Response:
    """Mask any secret a JSON reply still holds (a backend's success message echoing it, say)."""
    if response.mimetype in SCRUBBED_MEDIA_TYPES and not response.direct_passthrough:
        data = response.get_data()
        clean = problems.scrubber().scrub_bytes(data)
        if clean is not data and clean != data:
            response.set_data(clean)
    return response


def init_app(app: Flask) -> None:
    """Attach the REST layer to the app."""
    metrics.init_app(app)
    traces.init_app(app)
    request_ids.init_logging(app)
    app.before_request(common.start_request_budget)
    limits.init_app(app)
    auth.init_app(app, app.config["GATEWAY_SETTINGS"])
    idempotency.init_app(app)
    request_ids.init_app(app)
    problems.init_app(app)
    app.after_request(scrub_json_reply)
    app.register_blueprint(orders.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(docs.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(exchanges.blueprint)
    # Flask's own static route: the gateway has no static folder, so a known caller gets a 404
    endpoints.declare_route(app, "static", auth.Policy(auth.KNOWN, connection_data=False))
