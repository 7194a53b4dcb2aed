"""Gunicorn settings for the gateway (`gunicorn -c config/gunicorn.py wsgi:app`); flags override them."""

import os
import re
import shutil
from pathlib import Path

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")


def _running(pid: int) -> bool:
    """Whether a process with this id runs (as gateway.metrics.process_running: the app is not loaded yet)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


# Prometheus metrics: every worker writes its figures under this directory and a scrape sums them, with those of
# the event workers beside it (prometheus-client's multiprocess mode, gateway/metrics.py). It must be set before the
# app, and so prometheus_client, is loaded. One fresh directory per server under the metrics root (named by its
# master's pid), so no figure of an earlier run counts and servers side by side keep their own; the directories of
# servers and event workers (`worker-<pid>`) no longer running are removed, never a running one's.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _metrics_root = Path(os.environ.get("GATEWAY_METRICS_DIR") or Path("var") / "metrics")
    for _old in _metrics_root.glob("*"):
        _pid = re.fullmatch(r"(?:worker-)?([0-9]+)", _old.name)
        if _pid and (int(_pid[1]) == os.getpid() or not _running(int(_pid[1]))):
            shutil.rmtree(_old, ignore_errors=True)
    _metrics_dir = _metrics_root / str(os.getpid())
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir.resolve())
workers = int(os.environ.get("WORKERS", "2"))
# gthread: a slow client or a hanging backend holds one thread, not the worker, and callers keep their connections
# alive; gevent held up as well, but under it the app's per-thread SQLite connections leak (docs/architecture.md).
worker_class = "gthread"
# A thread serves one request, or holds one client still sending its headers. The kernel may hand all of a burst
# to one worker, so 96: 64 such clients plus every connection's bulkhead full (3 x 8 calls), with room to spare.
threads = int(os.environ.get("GATEWAY_THREADS", "96"))
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new connections over them by
# their addresses. With the one shared socket the worker that wakes first takes a whole burst: kept-alive
# connections then stay on one worker and its interpreter lock while the others idle (bench section 2 saw all 16
# connections of a run on one of two workers, at 40 % of the spread throughput).
reuse_port = True
# Connections one worker keeps at once (in requests, kept alive or waiting for data); beyond it, it stops accepting.
worker_connections = 1000
keepalive = 5
# Only the worker's main loop has to check in within this; a request waiting on a slow backend does not count
# (requests are bounded by the gateway's own request_timeout and call deadlines).
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", "30"))
# Longer than [gateway] request_timeout (60 s by default), a request's whole budget: a restart lets the requests in
# flight finish instead of cutting their backend calls off with an unknown outcome.
graceful_timeout = 65
accesslog = "-"
# One JSON object per line (GATEWAY_LOG_FORMAT=text for a terminal) for gunicorn's records, the app's and each
# request's access line, which carries the request id, caller, trace id, connection, order ids, status and durations.
logger_class = "gateway.logs.GunicornLogger"
# Load the app once before forking: XSDs and templates are compiled a single time.
preload_app = True
# The sandboxes run beside the gateway; neither needs gunicorn's runtime control socket, and two
# servers would otherwise share its default path.
control_socket_disable = True


def on_starting(server):
    """Refuse to start, with a clear line, when another server listens on an address already (or port 0 is asked).

    With reuse_port the workers bind, not the master: a port another program holds would make every worker fail at
    boot, one after another without end, and a second gateway of the same user would share the port silently.
    """
    import socket
    import sys

    for address in server.cfg.address:
        if not isinstance(address, tuple):  # a unix socket or an inherited descriptor: nothing to share
            continue
        host, port = address[0], int(address[1])
        if port == 0:
            server.log.error("cannot listen on %s:0: each worker would listen on a port of its own; name a port", host)
            sys.exit(1)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                server.log.error("cannot listen on %s:%s: %s (another server listens there)", host, port,
                                 error.strerror)
                sys.exit(1)


def pre_fork(server, worker):
    """Freeze the preloaded app's objects before forking, so a worker's garbage collections leave the pages
    it shares with the master untouched (copy-on-write) instead of copying them all."""
    import gc

    gc.freeze()


def post_fork(server, worker):
    """Spans are exported by a thread of each worker's own (when OTEL_EXPORTER_OTLP_ENDPOINT is set): threads do
    not survive a fork, so it starts here."""
    from gateway import tracing

    tracing.configure_from_environment("order-gateway")


def worker_exit(server, worker):
    """Export the spans a stopping worker still holds."""
    from gateway import tracing

    tracing.shutdown()


def child_exit(server, worker):
    """A worker that is gone keeps its counters in the sums, but its gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
