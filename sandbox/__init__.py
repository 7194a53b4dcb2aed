"""Simulators of the order backends the gateway talks to, served by one Flask application."""

from pathlib import Path

from flask import Flask

from sandbox import ongoing

DEFAULT_ONGOING_DATA = Path(__file__).parent / "data" / "ongoing.json"


def create_app(config: dict | None = None) -> Flask:
    """Build the sandbox application: defaults, then SANDBOX_* environment variables, then `config`."""
    app = Flask(__name__)
    app.config.from_mapping(
        ONGOING_DATA=str(DEFAULT_ONGOING_DATA),
        ONGOING_SERVICE_PATH="/ongoing/Service.asmx",
        # The simulated services take single orders; anything larger is not a request they expect.
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.config.from_prefixed_env("SANDBOX")
    if config is not None:
        app.config.from_mapping(config)
    ongoing.init_app(app)
    return app
