"""The delivery worker: `python -m gateway.events.worker` runs huey's consumer with the gateway's configuration.

It builds the event service alone (store, leases, dispatcher, queue), not the web app with its connections.
"""

from __future__ import annotations

import logging
import sys
import threading

from gateway import load_gateway_settings
from gateway.errors import ConfigError
from gateway.events import EventService
from gateway.events.heartbeat import Heartbeat


def main() -> None:
    """Load the configuration (GATEWAY_CONFIG) and consume the delivery queue until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        service = EventService(load_gateway_settings())
    except ConfigError as error:
        print(f"order gateway worker: configuration error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(78) from None
    service.queue.prepare_worker_start()
    heartbeat, stop_beating = Heartbeat(service.settings), threading.Event()
    heartbeat.keep_beating(stop_beating)
    consumer = service.queue.huey.create_consumer(
        workers=service.settings.events.worker_threads, worker_type="thread", periodic=True,
        initial_delay=0.05, max_delay=0.5, scheduler_interval=1,
    )
    try:
        consumer.run()
    finally:
        stop_beating.set()
        heartbeat.close()
        service.close()


if __name__ == "__main__":
    main()
