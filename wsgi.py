"""The WSGI entry point: `gunicorn -c config/gunicorn.py wsgi:app` (configuration from GATEWAY_CONFIG)."""

import sys

from gateway import create_app
from gateway.errors import ConfigError

try:
    app = create_app()
except ConfigError as error:
    # One clear line instead of a traceback; 78 is EX_CONFIG.
    print(f"order gateway: configuration error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(78) from None
