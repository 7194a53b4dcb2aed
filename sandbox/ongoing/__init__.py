"""A simulator of Ongoing WMS: its SOAP service (UpdateOrder, ProcessOrder), its order webhooks, its data."""

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flask import Flask

from sandbox.ongoing.concurrency import CallTracker
from sandbox.ongoing.model import ORDER_WEBHOOK_TRIGGERS, OrderEvent
from sandbox.ongoing.process_order import ProcessOrderTypes
from sandbox.ongoing.store import OngoingStore
from sandbox.ongoing.update_order import UpdateOrderSchema
from sandbox.ongoing.views import EXTENSION_KEY, VENDOR, create_blueprint
from sandbox.ongoing.webhook_payload import DEFAULT_WEBHOOK_TEMPLATES, render_order_webhook_payload
from sandbox.ongoing.webhook_sender import WebhookSender, build_webhook_auth, read_retry_delays
from sandbox.outages import init_service_controls


def _read_webhook_templates(setting: Mapping) -> dict[str, str]:
    """ONGOING_WEBHOOK_TEMPLATES over the defaults: a template name for each trigger."""
    if not isinstance(setting, Mapping) or not set(setting) <= set(ORDER_WEBHOOK_TRIGGERS):
        raise ValueError(f"ONGOING_WEBHOOK_TEMPLATES must map some of {', '.join(ORDER_WEBHOOK_TRIGGERS)} to names.")
    templates = {**DEFAULT_WEBHOOK_TEMPLATES, **setting}
    if not all(isinstance(name, str) and name for name in templates.values()):
        raise ValueError("ONGOING_WEBHOOK_TEMPLATES names must be non-empty strings.")
    return templates


def _read_webhook_timeout(setting: object) -> float:
    """ONGOING_WEBHOOK_TIMEOUT: the positive number of seconds one delivery attempt may take."""
    if isinstance(setting, bool) or not isinstance(setting, int | float) or setting <= 0:
        raise ValueError(f"ONGOING_WEBHOOK_TIMEOUT must be a positive number of seconds, not {setting!r}.")
    return float(setting)


def _read_seconds(name: str, setting: object) -> float:
    """A setting that is a non-negative number of seconds."""
    if isinstance(setting, bool) or not isinstance(setting, int | float) or not 0 <= setting < float("inf"):
        raise ValueError(f"{name} must be a non-negative number of seconds, not {setting!r}.")
    return float(setting)


def build_call_tracker(config: Mapping) -> CallTracker:
    """The tracker of each goods owner's calls, with ONGOING_CALL_SECONDS and ONGOING_OVERLAP_DELAY_SECONDS."""
    return CallTracker(
        call_seconds=_read_seconds("ONGOING_CALL_SECONDS", config["ONGOING_CALL_SECONDS"]),
        overlap_delay_seconds=_read_seconds("ONGOING_OVERLAP_DELAY_SECONDS", config["ONGOING_OVERLAP_DELAY_SECONDS"]),
        refuse_overlaps=bool(config["ONGOING_REFUSE_OVERLAPPING_CALLS"]),
    )


def _read_first_event_id(setting: object) -> int:
    """ONGOING_WEBHOOK_FIRST_EVENT_ID, or by default the Unix time in seconds, so a restart reuses no id."""
    if setting is None:
        return int(time.time())
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"ONGOING_WEBHOOK_FIRST_EVENT_ID must be a positive integer or None, not {setting!r}.")
    return setting


def build_webhook_sender(config: Mapping) -> WebhookSender:
    """The sender of the order webhooks, posting to ONGOING_WEBHOOK_URL (None: webhooks are off)."""
    return WebhookSender(
        url=config["ONGOING_WEBHOOK_URL"] or None,
        auth=build_webhook_auth(config["ONGOING_WEBHOOK_AUTH"]),
        retry_delays=read_retry_delays(config["ONGOING_WEBHOOK_RETRY_DELAYS"]),
        timeout=_read_webhook_timeout(config["ONGOING_WEBHOOK_TIMEOUT"]),
    )


def init_app(app: Flask) -> None:
    """Load ONGOING_DATA, read the schemas, serve at ONGOING_SERVICE_PATH (with an outage switch and a call log)
    and fire webhooks as configured."""
    sender = build_webhook_sender(app.config)
    calls = build_call_tracker(app.config)
    system_name = str(app.config["ONGOING_SYSTEM_NAME"])
    templates = _read_webhook_templates(app.config["ONGOING_WEBHOOK_TEMPLATES"])

    def send_order_webhooks(events: Sequence[OrderEvent]) -> None:
        """Render each event as Ongoing's payload and queue it for delivery."""
        sender.send([render_order_webhook_payload(event, system_name, templates) for event in events])

    app.extensions[EXTENSION_KEY] = {
        "store": OngoingStore(
            Path(app.config["ONGOING_DATA"]),
            publish_order_events=send_order_webhooks if sender.enabled else None,
            first_event_id=_read_first_event_id(app.config["ONGOING_WEBHOOK_FIRST_EVENT_ID"]),
        ),
        "schema": UpdateOrderSchema(),
        "process_order_types": ProcessOrderTypes(),
        "webhooks": sender,
        "calls": calls,
    }
    init_service_controls(app, VENDOR)
    app.register_blueprint(create_blueprint(app.config["ONGOING_SERVICE_PATH"]))
