"""A simulator of Speed4Trade CONNECT's SOAP updateOrderStatus call, with its own data, schema and wire format."""

from pathlib import Path

from flask import Flask

from sandbox.outages import init_service_controls
from sandbox.speed4trade.store import ConnectStore
from sandbox.speed4trade.update_order_status import UpdateOrderStatusSchema
from sandbox.speed4trade.views import EXTENSION_KEY, VENDOR, create_blueprint


def init_app(app: Flask) -> None:
    """Load SPEED4TRADE_DATA, compile the schema, and serve at SPEED4TRADE_SERVICE_PATH in SPEED4TRADE_NAMESPACE,
    with an outage switch and a call log."""
    app.extensions[EXTENSION_KEY] = {
        "store": ConnectStore(Path(app.config["SPEED4TRADE_DATA"])),
        "schema": UpdateOrderStatusSchema(),
        "namespace": app.config["SPEED4TRADE_NAMESPACE"],
    }
    init_service_controls(app, VENDOR)
    app.register_blueprint(create_blueprint(app.config["SPEED4TRADE_SERVICE_PATH"]))
