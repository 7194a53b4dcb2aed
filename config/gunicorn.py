"""Gunicorn settings for the gateway (`gunicorn -c config/gunicorn.py wsgi:app`); flags override them."""

import os

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "2"))
# Longer than any connection's read_timeout, so a slow backend is answered with 504, not a killed worker.
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", "75"))
graceful_timeout = 20
keepalive = 5
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
# Load the app once before forking: XSDs and templates are compiled a single time.
preload_app = True
# The sandboxes run beside the gateway; neither needs gunicorn's runtime control socket, and two
# servers would otherwise share its default path.
control_socket_disable = True


def pre_fork(server, worker):
    """Freeze the preloaded app's objects before forking, so a worker's garbage collections leave the pages
    it shares with the master untouched (copy-on-write) instead of copying them all."""
    import gc

    gc.freeze()
