"""The WSGI entry point: `gunicorn wsgi:app` (configuration from GATEWAY_CONFIG, else config/sandbox.toml)."""

from gateway import create_app

app = create_app()
