"""A demo subscriber: an internal service that receives the gateway's events, signed as Standard Webhooks."""

from flask import Flask
from standardwebhooks import Webhook

from sandbox.subscriber.inbox import SubscriberInbox
from sandbox.subscriber.views import EXTENSION_KEY, create_blueprint


def init_app(app: Flask) -> None:
    """Check SUBSCRIBER_SECRET and receive events at SUBSCRIBER_PATH."""
    app.extensions[EXTENSION_KEY] = {
        "verifier": Webhook(app.config["SUBSCRIBER_SECRET"]),
        "inbox": SubscriberInbox(),
    }
    app.register_blueprint(create_blueprint(app.config["SUBSCRIBER_PATH"]))
