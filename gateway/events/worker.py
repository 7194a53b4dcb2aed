"""The delivery worker: `python -m gateway.events.worker` runs huey's consumer with the gateway's configuration.

It builds the worker's app (gateway.create_worker_app: the event service, and the connections with their guards and
exchange journal, without the REST layer): huey's consumer drains the event streams (deliveries to subscribers) and
the update job lanes (gateway/jobs/sender.py: updates accepted with Prefer: respond-async, sent to the backends).
Beside huey's consumer, three threads: the heartbeat (/readyz reads it), the resume of pending streams and lanes and
of missed job announcements every `[events] resume_interval_seconds` (gateway/events/queue.py) and retention, at
start and every `[events] retention_interval_seconds` (gateway/events/retention.py: settled events, finished jobs,
expired Idempotency-Keys and the journal's old exchanges).

Its Prometheus figures (deliveries, lag) go to files in `<metrics root>/worker-<pid>`, which the gateway's
GET /metrics merges with its own (gateway/metrics.py). prometheus-client decides whether to keep figures in
files when it is first imported, and the gateway package imports it before this module runs: so, unless
PROMETHEUS_MULTIPROC_DIR is already set, the program sets it and starts itself again (same pid) with it.

`kill -HUP <pid>` reloads the configuration: once GATEWAY_CONFIG's file passes the check (gateway.check, as
`python -m gateway check`), the worker lets the deliveries under way finish, stops its threads and closes its
stores, then starts itself again as the same process, reading the file anew. A file that does not pass is refused
in one log line, and the worker delivers on with the configuration in force.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from huey.consumer import Consumer, ConsumerStopped
from prometheus_client import multiprocess

from gateway import create_worker_app, load_gateway_settings, logs, tracing
from gateway.check import problems
from gateway.config import CONFIG_VARIABLE
from gateway.errors import ConfigError
from gateway.events.heartbeat import Heartbeat
from gateway.events.retention import WorkerRetention
from gateway.metrics import MULTIPROCESS_VARIABLE, metrics_root, prepare_worker_dir
from gateway.rest.orders import job_sender
from gateway.runtime import gateway_of

log = logging.getLogger("gateway.events")


def restart_with_own_metrics_dir() -> None:
    """Start this program again, as the same process, with PROMETHEUS_MULTIPROC_DIR set to a fresh
    `<metrics root>/worker-<pid>` (the directories of workers no longer running removed)."""
    os.environ[MULTIPROCESS_VARIABLE] = str(prepare_worker_dir(metrics_root(), os.getpid()))
    start_again()


def start_again() -> None:
    """Start this program again as the same process, with the environment it has (its metrics directory too)."""
    os.execv(sys.executable, sys.orig_argv)  # noqa: S606 - this very program, as it was started


def reload_refusal() -> str | None:
    """Why the configuration file GATEWAY_CONFIG names cannot be delivered with, or None when it passes the check."""
    found = problems(os.environ.get(CONFIG_VARIABLE))
    return "; ".join(found) if found else None


def finish_deliveries_under_way(consumer: Consumer) -> bool:
    """Stop huey's consumer once its deliveries under way have finished; False when a stop signal came meanwhile
    (then no new process starts). A hang-up meanwhile waits for the new process, which reads the file anew anyway."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    stopped = threading.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: stopped.set())
    consumer.stop(graceful=True)
    consumer.huey.notify_interrupted_tasks()
    return not stopped.is_set()


def consume(consumer: Consumer) -> bool:
    """Run huey's consumer until a stop signal (False), or until a hang-up with a configuration that passes the
    check (True), after the deliveries under way have finished. The caller holds SIGHUP blocked."""
    hung_up = threading.Event()
    consumer.start()
    # huey's consumer answers SIGHUP by running sys.argv again, the configuration unchecked, and as a script, not
    # as this module (so gateway/events/queue.py hides the standard library's, and it fails to start): the worker's
    # own handler takes its place before SIGHUP is let through
    signal.signal(signal.SIGHUP, lambda *_: hung_up.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    health_checked = time.monotonic()
    while True:
        if hung_up.is_set():
            hung_up.clear()
            refusal = reload_refusal()
            if refusal is None:
                log.info("configuration reload: finishing the deliveries under way, then starting again with %s",
                         os.environ.get(CONFIG_VARIABLE))
                return finish_deliveries_under_way(consumer)
            log.error("configuration reload refused, delivering on with the configuration in force: %s", refusal)
        try:
            health_checked = consumer.loop(health_checked)
        except ConsumerStopped:
            consumer.huey.notify_interrupted_tasks()
            return False


def main() -> None:
    """Load the configuration (GATEWAY_CONFIG) and consume the delivery queue until stopped; on SIGHUP, start again
    with the configuration as the file then has it, once it passes the check."""
    # Until the consumer runs, a hang-up waits (its default would end the process); the threads started meanwhile
    # keep it blocked, so the main thread takes it.
    blocked_before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    logs.configure()
    try:
        app = create_worker_app(load_gateway_settings())
    except ConfigError as error:
        logs.report_fatal(f"order gateway worker: configuration error: {error}")
        raise SystemExit(78) from None
    gateway = gateway_of(app)
    service = gateway.events
    sender = service.job_sender = job_sender(app)
    tracing.configure_from_environment("order-gateway-worker")
    service.queue.prepare_worker_start()
    service.job_queue.prepare_worker_start()
    retention = WorkerRetention(service.settings, service.store, service.jobs)
    heartbeat, stop_background = Heartbeat(service.settings), threading.Event()
    heartbeat.keep_beating(stop_background)
    resuming = service.queue.keep_resuming(stop_background, service.job_queue.resume_pending,
                                           sender.announce_pending)
    retaining = retention.keep_running(stop_background)
    # Due scheduled tasks move to the queue once a second and idle workers look every half second: the slack
    # gateway/events/queue.py allows a scheduled drain before it counts as lost.
    consumer = service.queue.huey.create_consumer(
        workers=service.settings.events.worker_threads, worker_type="thread", periodic=False,
        initial_delay=0.05, max_delay=0.5, scheduler_interval=1,
    )
    reload = False
    try:
        reload = consume(consumer)
    finally:
        stop_background.set()
        resuming.join(timeout=5)  # a resume under way finishes before the store closes
        retaining.join(timeout=5)  # likewise a retention batch (stop ends a run between two batches)
        retention.close()
        heartbeat.close()
        gateway.close()
        tracing.shutdown()
        if os.environ.get(MULTIPROCESS_VARIABLE):  # its live gauges, if any, no longer count
            multiprocess.mark_process_dead(os.getpid())
    if reload:
        start_again()  # SIGHUP stays blocked across it, until the new consumer runs
    # the signal mask is inherited by every process started from this one: leave it as it was
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked_before)


if __name__ == "__main__":
    if MULTIPROCESS_VARIABLE not in os.environ:
        restart_with_own_metrics_dir()
    main()
