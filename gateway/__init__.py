"""The order gateway: one JSON REST API in front of several order backends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from gateway import console, events, rest
from gateway.backends import BACKENDS
from gateway.config import GatewaySettings, load_settings, read_configured_settings
from gateway.connections import Connections
from gateway.journal import open_exchange_journal
from gateway.journal.recorder import JournalRecorder
from gateway.runtime import Gateway, gateway_of
from gateway.scrubbing import Scrubber, install_log_scrubbing
from gateway.transport import Transport


def load_gateway_settings(test_config: Mapping[str, Any] | None = None) -> GatewaySettings:
    """`test_config` (a parsed configuration) validated, or the TOML file GATEWAY_CONFIG names."""
    if test_config is None:
        return read_configured_settings(BACKENDS)
    return load_settings(test_config, "<test configuration>", BACKENDS)


def create_app(test_config: Mapping[str, Any] | None = None, *,
               transports: Mapping[str, Transport] | None = None) -> Flask:
    """Build the app from `test_config` or GATEWAY_CONFIG's file; `transports` replace connections' HTTP."""
    settings = load_gateway_settings(test_config)
    app = _open_gateway(settings, transports)
    try:
        rest.init_app(app)
        console.init_app(app, settings)
    except BaseException:
        gateway_of(app).close()  # an app that cannot be built leaves nothing open
        raise
    return app


def create_worker_app(settings: GatewaySettings, *, transports: Mapping[str, Transport] | None = None) -> Flask:
    """The event worker's app: the gateway's scrubber, exchange journal, connections and event service, which send
    update jobs as the web processes send updates, without the REST layer and console (it serves no request)."""
    return _open_gateway(settings, transports)


def _open_gateway(settings: GatewaySettings, transports: Mapping[str, Transport] | None) -> Flask:
    """An app with its Gateway: the settings, scrubber, journal recorder, connections and event service."""
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        GATEWAY_SETTINGS=settings,
    )
    app.json.sort_keys = False
    scrubber = Scrubber.for_settings(settings)
    install_log_scrubbing(scrubber)
    journal = settings.journal
    recorder = JournalRecorder(
        open_exchange_journal(settings, max_age_seconds=journal.max_age_days * 86400, max_count=journal.max_count,
                              record_bodies=journal.record_bodies),
        record_bodies=journal.record_bodies, max_body_bytes=journal.max_body_bytes)
    gateway = Gateway(settings, scrubber=scrubber, recorder=recorder)
    gateway.init_app(app)
    try:
        gateway.connections = Connections(settings, BACKENDS, transports, recorder, scrubber)
        gateway.events = events.EventService(settings)
    except BaseException:
        gateway.close()  # an app that cannot be built leaves nothing open
        raise
    return app
