"""The REST layer: request ids, problem+json errors and the order endpoints."""

from flask import Flask

from gateway.rest import orders, problems, request_ids


def init_app(app: Flask) -> None:
    """Attach the REST layer to the app."""
    request_ids.init_app(app)
    problems.init_app(app)
    app.register_blueprint(orders.blueprint)
