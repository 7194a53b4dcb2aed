"""Gunicorn settings for the gateway (`gunicorn -c config/gunicorn.py wsgi:app`); flags override them."""

import hashlib
import os
import re
import shutil
import stat
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


def _default_metrics_root() -> Path:
    """As gateway.metrics.default_metrics_root (which cannot be imported before PROMETHEUS_MULTIPROC_DIR is set):
    this user's folder for this working directory in /dev/shm, where a full data disk cannot reach the mapped
    figures, else var/metrics."""
    shared_memory, fallback = Path("/dev/shm"), Path("var") / "metrics"  # noqa: S108 (a folder of our own, checked)
    if os.access(shared_memory, os.W_OK | os.X_OK):
        installation = hashlib.sha256(str(Path.cwd() / fallback).encode()).hexdigest()[:12]
        folder = shared_memory / f"order-gateway-metrics-{os.getuid()}-{installation}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            made = folder.lstat()
        except OSError:
            return fallback
        if stat.S_ISDIR(made.st_mode) and made.st_uid == os.getuid():
            return folder
    return fallback


# Prometheus metrics: every worker writes its figures under this directory and a scrape sums them, with those of
# the event workers beside it (prometheus-client's multiprocess mode, gateway/metrics.py). It must be set before the
# app, and so prometheus_client, is loaded. One fresh directory per server under the metrics root (named by its
# master's pid), so no figure of an earlier run counts and servers side by side keep their own; the directories of
# servers and event workers (`worker-<pid>`) no longer running are removed, never a running one's.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _metrics_root = Path(os.environ.get("GATEWAY_METRICS_DIR") or _default_metrics_root())
    for _old in _metrics_root.glob("*"):
        _pid = re.fullmatch(r"(?:worker-)?([0-9]+)", _old.name)
        if _pid and (int(_pid[1]) == os.getpid() or not _running(int(_pid[1]))):
            shutil.rmtree(_old, ignore_errors=True)
    _metrics_dir = _metrics_root / str(os.getpid())
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir.resolve())
workers = int(os.environ.get("WORKERS", "2"))
# gthread: a slow client or a hanging backend holds one thread, not the worker, and callers keep their connections
# alive; gevent held up as well, but under it the app's thread-local state (lxml parsers, watchdogs) is per
# greenlet (docs/architecture.md).
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

#: how long a stopping worker waits for the exchange journal's writer to write what is queued (worker_exit)
_JOURNAL_CLOSE_SECONDS = 5.0

# What one worker may hold open at once, beyond its clients, backend connections and stores (_open_files_needed).
#: threads of a worker's own beside gunicorn's: the journal's writer, the span exporter, a flush's waiter, spare
_BACKGROUND_THREADS = 4
#: the SQLite files of a worker without Redis: events, delivery queue, exchange journal, Idempotency-Keys, breakers
_SQLITE_FILES = 5
#: the Redis clients of a worker with Redis: events, delivery queue, journal, Idempotency-Keys, leases, heartbeat,
#: call locks, breakers
_REDIS_CLIENTS = 8
#: the listening socket, logs, pipes, the metrics files, the worker's heartbeat file, files being read, ...
_SPARE_FILES = 64


def _open_files_needed(cfg, settings) -> dict[str, int]:
    """About how many files one worker may hold open at once, by what holds them (gunicorn's `cfg`, the gateway's
    `settings`). RLIMIT_NOFILE counts per process: each worker has the whole limit, so workers do not multiply it."""
    threads = cfg.threads + _BACKGROUND_THREADS
    connections = settings.connections.values()
    if settings.events.redis_url:  # a thread uses one connection of a client's pool at a time
        stores = _REDIS_CLIENTS * threads
    else:
        # A file's pool (and the connection the master opened it with, inherited): each connection holds the file
        # and its WAL, the process the shared-memory index once; and one lock file per connection's call lock.
        per_file = 2 * (min(settings.stores.sqlite_pool_size, threads) + 1) + 1
        stores = _SQLITE_FILES * per_file + len(connections)
    return {
        # gthread keeps up to worker_connections clients (kept alive or waiting) and serves `threads` of them
        "client connections": max(cfg.worker_connections, cfg.threads),
        # a connection's pool keeps pool_size; its bulkhead lets max_concurrent_calls run, beyond the pool if larger
        "backend connections": sum(max(each.pool_size, each.max_concurrent_calls) for each in connections),
        "stores and locks": stores,
        "other": _SPARE_FILES,
    }


def _raise_open_files_limit(server) -> None:
    """Raise the soft limit of open files toward the hard one for what a worker may need (twice the estimate, as
    it is one); refuse to start when the hard limit is below the estimate. Workers inherit the master's limits.

    systemd starts services with a soft limit of 1024, for old programs' select(); a worker with 1000 client
    connections and a pool of SQLite connections per store needs more, and at the limit every accept(), connect()
    and open() fails with EMFILE, and gunicorn's worker exits on it.
    """
    import resource
    import sys

    needed = _open_files_needed(server.cfg, server.app.wsgi().config["GATEWAY_SETTINGS"])
    total = sum(needed.values())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = float("inf") if hard == resource.RLIM_INFINITY else hard
    if ceiling < total:
        shares = ", ".join(f"{count} {what}" for what, count in needed.items())
        server.log.error("cannot start: a worker may need about %s open files (%s), more than the hard limit of %s; "
                         "raise it (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower threads and "
                         "worker_connections", total, shares, hard)
        sys.exit(1)
    target = int(min(ceiling, 2 * total))
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        server.log.info("open files: soft limit raised from %s to %s (a worker may need about %s; hard limit %s)",
                        soft, target, total, "unlimited" if hard == resource.RLIM_INFINITY else hard)


def on_starting(server):
    """Refuse to start, with a clear line, when another server listens on an address already (or port 0 is asked),
    or when the hard limit of open files is below what a worker may need; raise the soft limit toward it.

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
    _raise_open_files_limit(server)


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
    """Write the exchanges a stopping worker still queues for the journal (its writer is a daemon thread, and
    lingers 50 ms for more), within _JOURNAL_CLOSE_SECONDS; then export the spans it still holds."""
    from gateway import tracing

    # gunicorn calls this in the master too, for a worker that vanished: only the worker's own app is closed here
    app = getattr(worker, "wsgi", None) if worker.pid == os.getpid() else None
    recorder = getattr(app, "extensions", {}).get("order_gateway_journal")
    if recorder is not None:
        recorder.close(timeout=_JOURNAL_CLOSE_SECONDS)
    tracing.shutdown()


def child_exit(server, worker):
    """A worker that is gone keeps its counters in the sums, but its gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
