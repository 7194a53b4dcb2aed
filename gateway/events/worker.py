"""The delivery worker: `python -m gateway.events.worker` runs huey's consumer with the gateway's configuration.

It builds the event service alone (store, leases, dispatcher, queue), not the web app with its connections.
Beside huey's consumer, three threads: the heartbeat (/readyz reads it), the resume of pending streams every
`[events] resume_interval_seconds` (gateway/events/queue.py) and retention, at start and every
`[events] retention_interval_seconds` (gateway/events/retention.py: settled events, expired Idempotency-Keys and
the journal's old exchanges).

Its Prometheus figures (deliveries, lag) go to files in `<metrics root>/worker-<pid>`, which the gateway's
GET /metrics merges with its own (gateway/metrics.py). prometheus-client decides whether to keep figures in
files when it is first imported, and the gateway package imports it before this module runs: so, unless
PROMETHEUS_MULTIPROC_DIR is already set, the program sets it and starts itself again (same pid) with it.
"""

from __future__ import annotations

import os
import sys
import threading

from prometheus_client import multiprocess

from gateway import load_gateway_settings, logs, tracing
from gateway.errors import ConfigError
from gateway.events import EventService
from gateway.events.heartbeat import Heartbeat
from gateway.events.retention import WorkerRetention
from gateway.metrics import MULTIPROCESS_VARIABLE, metrics_root, prepare_worker_dir


def restart_with_own_metrics_dir() -> None:
    """Start this program again, as the same process, with PROMETHEUS_MULTIPROC_DIR set to a fresh
    `<metrics root>/worker-<pid>` (the directories of workers no longer running removed)."""
    os.environ[MULTIPROCESS_VARIABLE] = str(prepare_worker_dir(metrics_root(), os.getpid()))
    os.execv(sys.executable, sys.orig_argv)  # noqa: S606 - this very program, as it was started


def main() -> None:
    """Load the configuration (GATEWAY_CONFIG) and consume the delivery queue until stopped."""
    logs.configure()
    try:
        service = EventService(load_gateway_settings())
    except ConfigError as error:
        logs.report_fatal(f"order gateway worker: configuration error: {error}")
        raise SystemExit(78) from None
    tracing.configure_from_environment("order-gateway-worker")
    service.queue.prepare_worker_start()
    retention = WorkerRetention(service.settings, service.store)
    heartbeat, stop_background = Heartbeat(service.settings), threading.Event()
    heartbeat.keep_beating(stop_background)
    resuming = service.queue.keep_resuming(stop_background)
    retaining = retention.keep_running(stop_background)
    # Due scheduled tasks move to the queue once a second and idle workers look every half second: the slack
    # gateway/events/queue.py allows a scheduled drain before it counts as lost.
    consumer = service.queue.huey.create_consumer(
        workers=service.settings.events.worker_threads, worker_type="thread", periodic=False,
        initial_delay=0.05, max_delay=0.5, scheduler_interval=1,
    )
    try:
        consumer.run()
    finally:
        stop_background.set()
        resuming.join(timeout=5)  # a resume under way finishes before the store closes
        retaining.join(timeout=5)  # likewise a retention batch (stop ends a run between two batches)
        retention.close()
        heartbeat.close()
        service.close()
        tracing.shutdown()
        if os.environ.get(MULTIPROCESS_VARIABLE):  # its live gauges, if any, no longer count
            multiprocess.mark_process_dead(os.getpid())


if __name__ == "__main__":
    if MULTIPROCESS_VARIABLE not in os.environ:
        restart_with_own_metrics_dir()
    main()
