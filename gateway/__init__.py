"""The order gateway: one JSON REST API in front of several order backends."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from gateway import events, rest
from gateway.backends import BACKENDS
from gateway.config import DEFAULT_CONFIG_PATH, load_settings, read_config_file
from gateway.connections import Connections


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from `test_config` (a parsed configuration) or the TOML file named by GATEWAY_CONFIG."""
    app = Flask(__name__)
    if test_config is None:
        settings = read_config_file(os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH, BACKENDS)
    else:
        settings = load_settings(test_config, "<test configuration>", BACKENDS)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        GATEWAY_SETTINGS=settings,
    )
    app.json.sort_keys = False
    app.extensions["order_gateway"] = Connections(settings, BACKENDS)
    events.init_app(app, settings)
    rest.init_app(app)
    return app
