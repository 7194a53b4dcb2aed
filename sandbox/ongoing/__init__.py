"""A simulator of Ongoing WMS's SOAP UpdateOrder service, with its own data, schema and wire format."""

from pathlib import Path

from flask import Flask

from sandbox.ongoing.store import OngoingStore
from sandbox.ongoing.update_order import UpdateOrderSchema
from sandbox.ongoing.views import EXTENSION_KEY, create_blueprint


def init_app(app: Flask) -> None:
    """Load the data file named by ONGOING_DATA, compile the schema, and serve at ONGOING_SERVICE_PATH."""
    app.extensions[EXTENSION_KEY] = {
        "store": OngoingStore(Path(app.config["ONGOING_DATA"])),
        "schema": UpdateOrderSchema(),
    }
    app.register_blueprint(create_blueprint(app.config["ONGOING_SERVICE_PATH"]))
