"""Gunicorn settings for the gateway (`gunicorn -c config/gunicorn.py wsgi:app`); flags override them."""

import hashlib
import os
import re
import shutil
import signal
import socket
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
#: how long a stopping worker goes on accepting until a worker started after it listens (_hand_over_listeners_on_stop)
_HANDOVER_SECONDS = 10.0
#: how long it then refuses new handshakes before it closes its sockets: those under way complete (a round trip)
_HANDSHAKE_SECONDS = 0.1
#: Linux's socket option that attaches a classic BPF filter to a socket (not in Python's socket module)
_SO_ATTACH_FILTER = 26

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


def _raise_open_files_limit(server, settings) -> str | None:
    """Raise the soft limit of open files toward the hard one for what a worker with these `settings` may need
    (twice the estimate, as it is one); when the hard limit is below the estimate, change nothing and return why a
    worker could not run. Workers inherit the master's limits.

    systemd starts services with a soft limit of 1024, for old programs' select(); a worker with 1000 client
    connections and a pool of SQLite connections per store needs more, and at the limit every accept(), connect()
    and open() fails with EMFILE, and gunicorn's worker exits on it.
    """
    import resource

    needed = _open_files_needed(server.cfg, settings)
    total = sum(needed.values())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = float("inf") if hard == resource.RLIM_INFINITY else hard
    if ceiling < total:
        shares = ", ".join(f"{count} {what}" for what, count in needed.items())
        return (f"a worker may need about {total} open files ({shares}), more than the hard limit of {hard}; "
                "raise it (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower threads and worker_connections")
    target = int(min(ceiling, 2 * total))
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        server.log.info("open files: soft limit raised from %s to %s (a worker may need about %s; hard limit %s)",
                        soft, target, total, "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return None


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
    refusal = _raise_open_files_limit(server, server.app.wsgi().config["GATEWAY_SETTINGS"])
    if refusal is not None:
        server.log.error("cannot start: %s", refusal)
        sys.exit(1)


def _close_app(server, app) -> None:
    """Release what the master's copy of a replaced app holds (stores, pools, the journal's recorder); workers
    still serving with their own copies are untouched. A failure is one line: the reload stands."""
    for name, extension in reversed(app.extensions.items()):
        close = getattr(extension, "close", None)
        if callable(close):
            try:
                close()
            except Exception as error:  # the master must outlive any of them
                server.log.warning("reload: closing the replaced app's %s failed: %s: %s", name,
                                   type(error).__name__, error)


def _reload_refusal(server, path: str | None):
    """(the app built from the configuration at `path`, None), or (None, why it cannot serve): the problems
    `python -m gateway check` finds, an error building the app, or a hard limit of open files below its needs."""
    from gateway import create_app
    from gateway.check import problems
    from gateway.errors import ConfigError

    found = problems(path)
    if found:
        return None, "; ".join(found)
    try:
        app = create_app()
    except ConfigError as error:
        return None, str(error)
    except Exception as error:  # the master must outlive any configuration
        return None, f"the gateway cannot be built from it: {type(error).__name__}: {error}"
    refusal = _raise_open_files_limit(server, app.config["GATEWAY_SETTINGS"])
    if refusal is not None:
        _close_app(server, app)
        return None, refusal
    return app, None


def on_reload(server):
    """`kill -HUP <master pid>` reloads GATEWAY_CONFIG's file: the master builds the app from it and the new workers
    gunicorn then forks serve with it, while the old ones finish their requests and stop.

    With preload_app the master holds the app, and gunicorn's HUP only reloads its own settings: left alone, the new
    workers would fork the old app. A configuration that fails `python -m gateway check` (gateway.check.problems),
    cannot be built, or needs more open files than the hard limit allows is refused in one line: the app in force
    stays, and the new workers serve with it as the old ones did (a bad file must not stop the master, as a worker
    failing to boot would)."""
    import gc

    from gateway.config import CONFIG_VARIABLE

    path = os.environ.get(CONFIG_VARIABLE)
    try:
        app, refusal = _reload_refusal(server, path)
    except Exception as error:  # the master must outlive any configuration
        app, refusal = None, f"checking it failed: {type(error).__name__}: {error}"
    if app is None:
        server.log.error("configuration reload refused, serving on with the configuration in force: %s", refusal)
        return
    replaced, server.app.callable = server.app.callable, app
    # pre_fork froze the replaced app's objects out of the collector's reach: hand them back so they can go
    gc.unfreeze()
    if replaced is not None:
        _close_app(server, replaced)
    server.log.info("configuration reloaded from %s: new workers serve with it, the old ones finish their requests",
                    path)


def pre_fork(server, worker):
    """Freeze the preloaded app's objects before forking, so a worker's garbage collections leave the pages
    it shares with the master untouched (copy-on-write) instead of copying them all."""
    import gc

    gc.freeze()


def _listening_sockets(ports: set[int]) -> set[str]:
    """The inodes of the TCP sockets listening on any of these ports, from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            columns = line.split()
            if columns[3] == "0A" and int(columns[1].rsplit(":", 1)[1], 16) in ports:  # 0A: LISTEN
                inodes.add(columns[9])
    return inodes


def _newer_siblings(worker) -> list[int]:
    """The workers of this worker's master started after it (a reload's new workers, a replacement), from /proc."""
    def started(path: Path) -> tuple[int, int] | None:  # (parent, start time) from /proc/<pid>/stat
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            return None
        return int(fields[1]), int(fields[19])

    own = started(Path("/proc/self/stat"))
    found = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        other = started(path)
        if own is not None and other is not None and other[0] == worker.ppid and other[1] > own[1]:
            found.append(int(path.parent.name))
    return found


def _running(pid: int) -> bool:
    """Whether the process `pid` still runs (neither gone nor a zombie its master has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _tcp_listeners(worker) -> list:
    """The worker's own TCP listening sockets (reuse_port gives each worker its own; a unix socket is shared)."""
    return [listener for listener in worker.sockets if listener.family in (socket.AF_INET, socket.AF_INET6)]


def _newer_sibling_listening(worker, siblings: list[int]) -> bool:
    """Whether one of these workers listens on this worker's TCP port already."""
    ports = {listener.getsockname()[1] for listener in _tcp_listeners(worker)}
    listening = {f"socket:[{inode}]" for inode in _listening_sockets(ports)}
    for pid in siblings:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # gone, or not ours
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor) in listening:
                    return True
            except OSError:
                continue
    return False


def _kernel_migrates_requests() -> bool:
    """Whether Linux moves the connections queued for a closing listening socket to another of its reuse_port group
    (net.ipv4.tcp_migrate_req = 1, Linux 5.14 on) instead of resetting them."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
    except OSError:
        return False


def _refuse_new_handshakes(listener) -> bool:
    """Drop every connection request (a segment with SYN and without ACK) that reaches this listening socket from
    now on, with a classic BPF socket filter, while handshakes under way complete; whether the system allowed it.
    The client sends a dropped SYN again a second later, when the kernel hands it to another worker's socket."""
    import ctypes
    import struct

    instructions = [  # (code, jump if true, jump if false, constant), over the TCP header
        (0x30, 0, 0, 13),          # load the flags byte
        (0x54, 0, 0, 0x12),        # keep SYN and ACK
        (0x15, 0, 1, 0x02),        # SYN alone: to the next, else to the one after
        (0x06, 0, 0, 0),           # return 0: drop the segment
        (0x06, 0, 0, 0xFFFFFFFF),  # return all of it: keep the segment
    ]
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *each) for each in instructions))
    try:  # struct sock_fprog: the count and a pointer; the kernel copies the program
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER,
                            struct.pack("HP", len(instructions), ctypes.addressof(program)))
    except OSError:  # not Linux: the sockets close without it
        return False
    return True


def _accept_queued_and_close(worker) -> None:
    """Stop listening: take the connections the kernel queued for this worker's sockets, then close them."""
    worker.set_accept_enabled(False)
    for listener in worker.sockets:
        try:
            while True:
                accepted = worker.nr_conns
                worker.accept(listener)  # as gthread accepts: the request goes to the worker's threads
                if worker.nr_conns == accepted:  # nothing queued any more
                    break
        except OSError as error:  # out of files, say: what is still queued is lost with the socket
            worker.log.warning("stopping worker: accepting its queued connections failed: %s", error)
        listener.close()


def _hand_over_listeners_on_stop(worker) -> None:
    """Make a stopping worker hand its share of new connections over to the workers started after it.

    With reuse_port the kernel hands each new connection to one of the workers' own listening sockets. gthread's
    worker, told to stop (SIGTERM: a reload's old workers, or the server stopping), stops accepting but keeps its
    socket until it exits, and the connections the kernel queued there meanwhile are reset then: failed requests.
    So, when a newer worker exists (a reload forks the new workers just before it stops the old ones), a stopping
    worker goes on accepting until one of them listens (_HANDOVER_SECONDS at most, and no longer than one of them
    runs: when the whole server stops, the newer ones stop too, and first), then refuses new handshakes for
    _HANDSHAKE_SECONDS, so those under way can complete; then it accepts what is queued, closes its sockets and
    stops as gthread does, finishing its requests. Without a newer worker it does the last step at once. A client
    whose connection request was refused sends it again a second later, to a new worker: a delay, not a failure;
    with net.ipv4.tcp_migrate_req = 1 the kernel moves what a closing socket holds instead, and none is refused.
    """
    import threading
    import time

    stop, stopping = worker.handle_exit, threading.Event()

    def hand_over() -> None:  # on the worker's main loop, between its events
        try:
            _accept_queued_and_close(worker)
        finally:
            stop(signal.SIGTERM, None)

    def wait_then_hand_over() -> None:
        siblings = _newer_siblings(worker) if _tcp_listeners(worker) else []
        if siblings:
            deadline = time.monotonic() + _HANDOVER_SECONDS
            while time.monotonic() < deadline and not _newer_sibling_listening(worker, siblings):
                if not any(_running(pid) for pid in siblings):  # the server is stopping: they stopped first
                    break
                time.sleep(0.02)
            if not _kernel_migrates_requests():
                refusing = [_refuse_new_handshakes(listener) for listener in _tcp_listeners(worker)]
                if all(refusing):
                    time.sleep(_HANDSHAKE_SECONDS)
        worker.method_queue.defer(hand_over)

    def handle_exit(sig, frame) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=wait_then_hand_over, name="listener-handover", daemon=True).start()

    worker.handle_exit = handle_exit


def post_fork(server, worker):
    """Spans are exported by a thread of each worker's own (when OTEL_EXPORTER_OTLP_ENDPOINT is set): threads do
    not survive a fork, so it starts here. With reuse_port, a stopping gthread worker hands its share of new
    connections over to the workers started after it (_hand_over_listeners_on_stop)."""
    from gateway import tracing

    tracing.configure_from_environment("order-gateway")
    if server.cfg.reuse_port and all(hasattr(worker, name) for name in ("method_queue", "set_accept_enabled")):
        _hand_over_listeners_on_stop(worker)


def worker_exit(server, worker):
    """Close the stopping worker's Gateway: first the exchanges it still queues for the journal are written (its
    writer is a daemon thread, and lingers 50 ms for more), within _JOURNAL_CLOSE_SECONDS, then its stores, pools
    and connections are closed; then export the spans it still holds."""
    from gateway import tracing
    from gateway.runtime import find_gateway

    # gunicorn calls this in the master too, for a worker that vanished: only the worker's own app is closed here
    app = getattr(worker, "wsgi", None) if worker.pid == os.getpid() else None
    gateway = find_gateway(app)
    if gateway is not None:
        gateway.close(journal_timeout=_JOURNAL_CLOSE_SECONDS)
    tracing.shutdown()


def child_exit(server, worker):
    """A worker that is gone keeps its counters in the sums, but its gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
