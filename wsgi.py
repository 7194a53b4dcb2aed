"""The WSGI entry point: `gunicorn -c config/gunicorn.py wsgi:app` (configuration from GATEWAY_CONFIG)."""

from gateway import create_app
from gateway.errors import ConfigError
from gateway.logs import report_fatal

try:
    app = create_app()
except ConfigError as error:
    # One clear line instead of a traceback; 78 is EX_CONFIG.
    report_fatal(f"order gateway: configuration error: {error}")
    raise SystemExit(78) from None
