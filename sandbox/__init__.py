"""Simulators of the order backends the gateway talks to, and a demo subscriber, served by one Flask application."""

import base64
from pathlib import Path

from flask import Flask

from sandbox import ongoing, sellercenter, speed4trade, subscriber

DEFAULT_ONGOING_DATA = Path(__file__).parent / "data" / "ongoing.json"
DEFAULT_SPEED4TRADE_DATA = Path(__file__).parent / "data" / "speed4trade.json"
DEFAULT_SELLERCENTER_DATA = Path(__file__).parent / "data" / "sellercenter.json"
DEFAULT_SUBSCRIBER_SECRET = "whsec_" + base64.b64encode(b"order-gateway-demo-subscriber-secret").decode("ascii")


def create_app(config: dict | None = None) -> Flask:
    """Build the sandbox application: defaults, then SANDBOX_* environment variables, then `config`."""
    app = Flask(__name__)
    app.config.from_mapping(
        ONGOING_DATA=str(DEFAULT_ONGOING_DATA),
        ONGOING_SERVICE_PATH="/ongoing/Service.asmx",
        # The Ongoing system's name, as its webhooks carry it in "system".
        ONGOING_SYSTEM_NAME="sandbox",
        # Where the order webhooks go; None turns them off.
        ONGOING_WEBHOOK_URL=None,
        # None, {"type": "basic", "username", "password"} or {"type": "token", "header", "token"}.
        ONGOING_WEBHOOK_AUTH={"type": "basic", "username": "ongoing-webhooks", "password": "webhook-demo-password"},
        # Ongoing's real template names are not public; these are the sandbox's own.
        ONGOING_WEBHOOK_TEMPLATES={
            "created": "OrderCreated",
            "status_changed": "OrderStatusChanged",
            "picked": "OrderPicked",
        },
        # Seconds before each retry of a failed delivery (Ongoing waits 1, 5, 15 and 30 minutes, and more).
        ONGOING_WEBHOOK_RETRY_DELAYS=[1, 5, 15, 30],
        ONGOING_WEBHOOK_TIMEOUT=5,
        # The first webhookEventId; None takes the Unix time in seconds at start, so that a receiver that
        # deduplicates by id and outlives the sandbox drops nothing after a restart.
        ONGOING_WEBHOOK_FIRST_EVENT_ID=None,
        # Seconds every authenticated UpdateOrder or ProcessOrder call takes to process, slept outside the data lock
        # so that overlapping calls are observable; 0 is no simulated work.
        ONGOING_CALL_SECONDS=0.0,
        # Ongoing serves one goods owner's calls one after another: a call that arrives while another for the same
        # goods owner is in progress waits this many seconds, then is refused with a timeout fault, unapplied.
        ONGOING_OVERLAP_DELAY_SECONDS=2.0,
        # Whether overlapping calls of one goods owner are refused (as Ongoing times them out); only tests of
        # the simulator's own locking turn it off.
        ONGOING_REFUSE_OVERLAPPING_CALLS=True,
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
        # The demo subscriber of the gateway's events, signed as Standard Webhooks with this secret.
        SUBSCRIBER_PATH="/subscriber/events",
        SUBSCRIBER_SECRET=DEFAULT_SUBSCRIBER_SECRET,
        # The simulated services take a few orders per call; anything larger is not a request they expect.
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.config.from_prefixed_env("SANDBOX")
    if config is not None:
        app.config.from_mapping(config)
    ongoing.init_app(app)
    speed4trade.init_app(app)
    sellercenter.init_app(app)
    subscriber.init_app(app)
    return app
