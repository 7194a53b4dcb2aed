"""Simulators of the order backends the gateway talks to, served by one Flask application."""

from pathlib import Path

from flask import Flask

from sandbox import ongoing, sellercenter, speed4trade

DEFAULT_ONGOING_DATA = Path(__file__).parent / "data" / "ongoing.json"
DEFAULT_SPEED4TRADE_DATA = Path(__file__).parent / "data" / "speed4trade.json"
DEFAULT_SELLERCENTER_DATA = Path(__file__).parent / "data" / "sellercenter.json"


def create_app(config: dict | None = None) -> Flask:
    """Build the sandbox application: defaults, then SANDBOX_* environment variables, then `config`."""
    app = Flask(__name__)
    app.config.from_mapping(
        ONGOING_DATA=str(DEFAULT_ONGOING_DATA),
        ONGOING_SERVICE_PATH="/ongoing/Service.asmx",
        SPEED4TRADE_DATA=str(DEFAULT_SPEED4TRADE_DATA),
        SPEED4TRADE_SERVICE_PATH="/speed4trade/",
        # CONNECT's real target namespace is not public; the sandbox uses one of its own.
        SPEED4TRADE_NAMESPACE="urn:order-gateway-sandbox:speed4trade",
        SELLERCENTER_DATA=str(DEFAULT_SELLERCENTER_DATA),
        SELLERCENTER_SERVICE_PATH="/sellercenter/oms-api/",
        SELLERCENTER_TIMESTAMP_WINDOW_SECONDS=300,
        # 0 is no limit; a positive number simulates the platform's rate limit (E429).
        SELLERCENTER_RATE_LIMIT_PER_MINUTE=0,
        # A zero-argument callable returning an aware datetime; None is the system clock.
        SELLERCENTER_CLOCK=None,
        # The simulated services take a few orders per call; anything larger is not a request they expect.
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.config.from_prefixed_env("SANDBOX")
    if config is not None:
        app.config.from_mapping(config)
    ongoing.init_app(app)
    speed4trade.init_app(app)
    sellercenter.init_app(app)
    return app
