"""The REST layer: request ids, problem+json errors, the order endpoints, webhooks, events and the API docs."""

from flask import Flask

from gateway.rest import docs, events, orders, problems, request_ids, webhooks


def init_app(app: Flask) -> None:
    """Attach the REST layer to the app."""
    request_ids.init_app(app)
    problems.init_app(app)
    app.register_blueprint(orders.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(docs.blueprint)
