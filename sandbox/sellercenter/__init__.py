"""A simulator of Rocket SellerCenter's OMS API call UpdateOrderInformation: signed JSON, per-order results."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask

from sandbox.outages import init_service_controls
from sandbox.sellercenter.rate_limit import CallsPerMinuteLimit
from sandbox.sellercenter.store import SellerCenterStore
from sandbox.sellercenter.views import EXTENSION_KEY, VENDOR, create_blueprint


def _system_clock() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def init_app(app: Flask) -> None:
    """Load SELLERCENTER_DATA and serve the OMS API at SELLERCENTER_SERVICE_PATH with the configured limits, an
    outage switch and a call log."""
    window_seconds = int(app.config["SELLERCENTER_TIMESTAMP_WINDOW_SECONDS"])
    if window_seconds < 0:
        raise ValueError(f"SELLERCENTER_TIMESTAMP_WINDOW_SECONDS must not be negative, not {window_seconds}.")
    clock = app.config.get("SELLERCENTER_CLOCK") or _system_clock
    if not callable(clock):
        raise TypeError("SELLERCENTER_CLOCK must be a callable that returns an aware datetime.")
    app.extensions[EXTENSION_KEY] = {
        "store": SellerCenterStore(Path(app.config["SELLERCENTER_DATA"])),
        "timestamp_window": timedelta(seconds=window_seconds),
        "rate_limit": CallsPerMinuteLimit(int(app.config["SELLERCENTER_RATE_LIMIT_PER_MINUTE"])),
        "clock": clock,
    }
    init_service_controls(app, VENDOR)
    app.register_blueprint(create_blueprint(app.config["SELLERCENTER_SERVICE_PATH"]))
