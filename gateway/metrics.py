"""The gateway's Prometheus metrics (prometheus-client), one prefix, base units, `_total` counters.

Under gunicorn every worker is a process of its own: prometheus-client's multiprocess mode, switched on by
PROMETHEUS_MULTIPROC_DIR, lets each process write its figures to files there and any worker sum them all for a
scrape. Every directory lies under one metrics root (GATEWAY_METRICS_DIR, by default a folder in /dev/shm, see
`default_metrics_root`): config/gunicorn.py gives each server `<root>/<master pid>`, the event worker
(gateway/events/worker.py) writes to `<root>/worker-<pid>`, and a scrape merges the server's own directory with every
worker's, so one GET /metrics shows the deliveries too. The files are memory-mapped: `FailSafeFigures` makes sure a
full filesystem under them costs figures, never the process.
Without it (tests, `flask run`) the figures are the process's own. What the stores know at the moment of a scrape
(pending deliveries, breaker states, queued update jobs) is read then by the REST layer's `CurrentStateCollector`
(gateway/rest/metrics.py), never kept in files: this module knows nothing of connections or events.
No label takes an unbounded value: routes are URL rules, not paths; subscribers and connections come from the
configuration; no order or request ids.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import mmap
import os
import re
import shutil
import stat
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict

PREFIX = "order_gateway"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
ROOT_VARIABLE = "GATEWAY_METRICS_DIR"
#: where the metrics root is made by default: a tmpfs, which a full data disk cannot reach
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 (a folder of this user's own is made there, and checked)
#: the metrics root without a writable SHARED_MEMORY (relative to the working directory)
FALLBACK_ROOT = Path("var") / "metrics"
WORKER_DIR_PREFIX = "worker-"
#: the directories under the root: a server's `<master pid>` or an event worker's `worker-<pid>`
PROCESS_DIR = re.compile(r"(?:worker-)?([0-9]+)")
#: OpenTelemetry's advised buckets for HTTP durations, in seconds
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: from a delivery made at once to one that waited out an hour of retries, in seconds
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
               3600.0)
#: the states of a breaker as label values (pybreaker's "half-open" with an underscore, as Prometheus labels go)
BREAKER_STATES = ("closed", "open", "half_open")

log = logging.getLogger("gateway.metrics")


def _allocate_blocks(path: str, size: int) -> None:
    """Give the first `size` bytes of a file (made if need be) their blocks now, so that writing them through a
    mapping cannot fault. OSError (ENOSPC on a full filesystem) leaves the file as it was, or none (an empty one
    would break every scrape's reading); a filesystem that cannot allocate ahead is left as prometheus-client
    leaves it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        before = os.fstat(descriptor).st_size
        try:
            os.posix_fallocate(descriptor, 0, max(size, before))
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            if before:
                os.ftruncate(descriptor, before)
            else:
                os.unlink(path)
            raise
    finally:
        os.close(descriptor)


def _entry_size(key: str) -> int:
    """The bytes a key's entry takes in a figures file: its length, the key padded to 8 bytes, value and time."""
    encoded = len(key.encode("utf-8"))
    return 4 + encoded + (8 - (encoded + 4) % 8) + 16


class FailSafeFigures(MmapedDict):
    """prometheus-client's file of one process's figures, which a full or unwritable filesystem cannot turn into a
    crash.

    The library maps a sparse file and writes into it: where the filesystem has no block left for a page, the write
    is a SIGBUS, which kills the process (a gunicorn worker, then its replacement, and so on). Here every page gets its
    block before it is mapped, so a full filesystem is an OSError instead; then the figures carry on in anonymous
    memory. The process keeps serving; its figures from then on are missing from scrapes, which a warning says once.
    It relies on the library's layout of the file (`_used`, `_capacity`, `_m`, `_f`, entries as `_entry_size`).
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if read_mode:
            super().__init__(filename, read_mode)
            return
        try:
            _allocate_blocks(filename, _INITIAL_MMAP_SIZE)
            super().__init__(filename)
        except OSError as error:
            if getattr(self, "_f", None) is not None:
                self._f.close()
            self._fname, self._f, self._positions = filename, None, {}
            self._capacity, self._used = _INITIAL_MMAP_SIZE, 8
            self._m = mmap.mmap(-1, self._capacity)
            self._m[0:4] = struct.pack("i", self._used)  # the library's header: the bytes used
            self._warn(error)

    def _init_value(self, key: str) -> None:
        """Make room for a new key (blocks first, or memory), then let the library write it."""
        needed = self._used + _entry_size(key)
        if needed > self._capacity:
            capacity = self._capacity
            while needed > capacity:
                capacity *= 2
            if self._f is not None:
                try:
                    _allocate_blocks(self._fname, capacity)
                except OSError as error:
                    self._move_to_memory(capacity)
                    self._warn(error)
            else:
                self._move_to_memory(capacity)
        super()._init_value(key)

    def _move_to_memory(self, capacity: int) -> None:
        """Carry on in anonymous memory of `capacity` bytes, with what is written so far."""
        memory = mmap.mmap(-1, capacity)
        memory[:self._used] = self._m[:self._used]
        self._m.close()
        if self._f is not None:
            self._f.close()
        self._f, self._m, self._capacity = None, memory, capacity

    def _warn(self, error: OSError) -> None:
        log.warning("metrics: %s cannot be written (%s): this process keeps its figures in memory, and scrapes "
                    "miss them", self._fname, errno.errorcode.get(error.errno, type(error).__name__))

    def close(self) -> None:
        """Release the file, or the memory."""
        if self._f is None and self._m is not None:
            self._m.close()
            self._m = None
            return
        super().close()


# prometheus-client's multiprocess values open their files through this name, each time a process starts one: so
# it is replaced before any figure of this module exists.
values.MmapedDict = FailSafeFigures

http_requests = Counter(f"{PREFIX}_http_requests_total", "HTTP requests answered, by route, method and status.",
                        ("route", "method", "status"))
http_request_duration = Histogram(f"{PREFIX}_http_request_duration_seconds",
                                  "Time to answer an HTTP request, by route and method.", ("route", "method"),
                                  buckets=DURATION_BUCKETS)
backend_calls = Counter(f"{PREFIX}_backend_calls_total",
                        "Calls to backends (each attempt), by connection, backend, operation and outcome.",
                        ("connection", "backend", "operation", "outcome"))
backend_call_duration = Histogram(f"{PREFIX}_backend_call_duration_seconds",
                                  "Duration of a call to a backend, by connection, backend and operation.",
                                  ("connection", "backend", "operation"), buckets=DURATION_BUCKETS)
webhooks_received = Counter(f"{PREFIX}_webhooks_received_total",
                            "Webhooks received, by connection and result (stored, duplicate, rejected).",
                            ("connection", "result"))
idempotency_replays = Counter(f"{PREFIX}_idempotency_replays_total",
                              "Replies replayed for a repeated Idempotency-Key.")
journal_failures = Counter(f"{PREFIX}_journal_failures_total",
                           "Backend exchanges the journal could not record (dropped or failed).")
bookkeeping_failures = Counter(f"{PREFIX}_bookkeeping_failures_total",
                               "Failures of the bookkeeping around backend calls, which never replace a call's "
                               "outcome, by what failed (breaker_state, call_lock, idempotency_record, "
                               "call_record, or a guard's name).", ("what",))
guard_refusals = Counter(f"{PREFIX}_guard_refusals_total",
                         "Calls a connection's guard refused, nothing sent, by connection and guard (breaker, "
                         "bulkhead, call_lock, rate_limit).", ("connection", "guard"))
event_deliveries = Counter(f"{PREFIX}_event_deliveries_total",
                           "Attempts to deliver an event, by subscriber and outcome (delivered, failed: to be "
                           "retried, dead).", ("subscriber", "outcome"))
event_delivery_lag = Histogram(f"{PREFIX}_event_delivery_lag_seconds",
                               "Time from storing an event to delivering it, by subscriber.", ("subscriber",),
                               buckets=LAG_BUCKETS)
job_attempts = Counter(f"{PREFIX}_job_attempts_total",
                       "Attempts to send an update job (Prefer: respond-async), by connection and outcome (done, "
                       "refused, unavailable: to be retried, outcome-unknown, interrupted, expired).",
                       ("connection", "outcome"))
job_outcomes = Counter(f"{PREFIX}_job_outcomes_total",
                       "Update jobs that became final, by connection and state (done, failed, dead).",
                       ("connection", "state"))
job_delivery_lag = Histogram(f"{PREFIX}_job_lag_seconds",
                             "Time from accepting an update job to its becoming final, by connection and state.",
                             ("connection", "state"), buckets=LAG_BUCKETS)
retention_removed = Counter(f"{PREFIX}_retention_removed_total",
                            "Records the event worker's retention removed, by kind (events, idempotency_keys, "
                            "exchanges).", ("kind",))
unreadable_figures = Counter(f"{PREFIX}_metrics_unreadable_total",
                             "Scrapes that left a figure out because its store could not be read, by figure.",
                             ("figure",))

#: (metric, label values) -> its child, resolved once: prometheus-client's labels() checks the values and takes the
#: metric's lock on every call. Every label's values are bounded (see the module's docstring), and so is this.
_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """The metric's child for these label values (`metric.labels(*labels)`), looked up once per process."""
    found = _children.get((metric, labels))
    if found is None:
        found = _children[metric, labels] = metric.labels(*labels)
    return found


def default_metrics_root(shared_memory: Path = SHARED_MEMORY) -> Path:
    """The metrics root without GATEWAY_METRICS_DIR: a folder in shared memory (/dev/shm) of this user's and this
    working directory's, else var/metrics.

    The figures are memory-mapped files, so they stay off the data disk: when it fills up (the databases lie there)
    they must not. The folder is named by user and working directory, as var/metrics was relative to it: the
    servers and event workers of one installation share it, others keep theirs; a folder of that name that is not
    this user's own directory is not used. config/gunicorn.py finds the same folder (it cannot import this module
    before setting PROMETHEUS_MULTIPROC_DIR).
    """
    if os.access(shared_memory, os.W_OK | os.X_OK):
        installation = hashlib.sha256(str(Path.cwd() / FALLBACK_ROOT).encode()).hexdigest()[:12]
        folder = shared_memory / f"order-gateway-metrics-{os.getuid()}-{installation}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            made = folder.lstat()
        except OSError:
            return FALLBACK_ROOT
        if stat.S_ISDIR(made.st_mode) and made.st_uid == os.getuid():
            return folder
    return FALLBACK_ROOT


def metrics_root() -> Path:
    """The directory every process's metrics directory lies in (GATEWAY_METRICS_DIR, by default
    `default_metrics_root()`)."""
    return Path(os.environ.get(ROOT_VARIABLE) or default_metrics_root())


def process_running(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def prepare_worker_dir(root: Path, pid: int) -> Path:
    """A fresh `<root>/worker-<pid>` for an event worker's figures; those of workers no longer running, and one
    left by an earlier process with this pid, are removed first."""
    for old in root.glob(f"{WORKER_DIR_PREFIX}*"):
        match = PROCESS_DIR.fullmatch(old.name)
        if match and (int(match[1]) == pid or not process_running(int(match[1]))):
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"{WORKER_DIR_PREFIX}{pid}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


class MergedFilesCollector:
    """The figures in the files of one multiprocess directory and of every event worker's beside it, each metric
    family once (its samples summed as prometheus-client's MultiProcessCollector sums one directory's)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def files(self) -> list[str]:
        """The figure files to merge."""
        return (glob.glob(os.path.join(self.path, "*.db"))
                + glob.glob(os.path.join(self.path.parent, f"{WORKER_DIR_PREFIX}*", "*.db")))

    def collect(self) -> Iterable[Metric]:
        """Merge the files as they are now."""
        try:
            return multiprocess.MultiProcessCollector.merge(self.files(), accumulate=True)
        except FileNotFoundError:  # a dead worker's directory was removed between listing and reading: list again
            return multiprocess.MultiProcessCollector.merge(self.files(), accumulate=True)


class _ThisProcess:
    """The figures of this process (prometheus-client's default registry), for a scrape without multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        """Every metric this process registered."""
        return REGISTRY.collect()


def exposition(*current: object) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its media type: every process's when in multiprocess mode,
    with the figures of the `current` collectors read now (before the files, so their failures count at once)."""
    registry = CollectorRegistry()
    for collector in current:
        registry.register(collector)
    path = os.environ.get(MULTIPROCESS_VARIABLE)
    registry.register(MergedFilesCollector(path) if path else _ThisProcess())
    return generate_latest(registry), CONTENT_TYPE_LATEST
