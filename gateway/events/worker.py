"""The delivery worker: `python -m gateway.events.worker` runs huey's consumer with the gateway's configuration."""

from __future__ import annotations

import logging
import sys

from gateway import create_app
from gateway.errors import ConfigError


def main() -> None:
    """Load the configuration (GATEWAY_CONFIG) and consume the delivery queue until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app()
    except ConfigError as error:
        print(f"order gateway worker: configuration error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(78) from None
    service = app.extensions["order_events"]
    service.queue.prepare_worker_start()
    consumer = service.queue.huey.create_consumer(
        workers=service.settings.events.worker_threads, worker_type="thread", periodic=True,
        initial_delay=0.05, max_delay=0.5, scheduler_interval=1,
    )
    consumer.run()


if __name__ == "__main__":
    main()
