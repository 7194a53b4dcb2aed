"""One gateway app's lifetime: the Gateway holds everything the app opened and closes it all with one close().

create_app builds the Gateway and stores it as `app.extensions["order_gateway"]`; create_app and the init_app
functions attach the parts to it (`gateway_of(app).authenticator = ...`). Code running in an app or request context
reads the parts with `current_gateway()`, other code with `gateway_of(app)`. A gunicorn worker closes its app's
Gateway when it stops (config/gunicorn.py worker_exit), tests when they are done with an app (tests/conftest.py).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from gateway.bookkeeping import log_failure

if TYPE_CHECKING:
    from gateway.callers import Authenticator
    from gateway.config import GatewaySettings
    from gateway.connections import Connections
    from gateway.console.sessions import ConsoleSessionStore
    from gateway.events import EventService
    from gateway.idempotency.base import IdempotencyStore
    from gateway.journal.recorder import JournalRecorder
    from gateway.readiness import ReadinessChecks
    from gateway.scrubbing import Scrubber
    from gateway.throttle import AuthThrottle

#: where a gateway app keeps its Gateway (app.extensions)
EXTENSION = "order_gateway"
#: how long close() lets the exchange journal's writer write what is queued, by default
JOURNAL_CLOSE_SECONDS = 5.0
log = logging.getLogger("gateway.runtime")


class Gateway:
    """What one gateway app holds, in the order it is opened: its settings, the scrubber, the exchange journal's
    recorder, the connections, the event service, the authenticator and its throttle, the Idempotency-Key store,
    the console's sessions, /readyz's check threads, and the OpenAPI document once built. A part not attached yet
    is None."""

    #: the parts, in the order create_app opens them
    PARTS = ("settings", "scrubber", "recorder", "connections", "events", "authenticator", "auth_throttle",
             "idempotency", "console_sessions", "readiness_checks", "openapi_document")

    def __init__(self, settings: GatewaySettings, *, scrubber: Scrubber | None = None,
                 recorder: JournalRecorder | None = None) -> None:
        self.settings = settings
        self.scrubber = scrubber
        self.recorder = recorder
        self.connections: Connections | None = None
        self.events: EventService | None = None
        self.authenticator: Authenticator | None = None
        self.auth_throttle: AuthThrottle | None = None
        self.idempotency: IdempotencyStore | None = None
        self.console_sessions: ConsoleSessionStore | None = None
        self.readiness_checks: ReadinessChecks | None = None
        self.openapi_document: dict[str, Any] | None = None
        self._guard = threading.Lock()
        self._closed = False

    def init_app(self, app: Flask) -> None:
        """Store this Gateway as the app's, once."""
        if EXTENSION in app.extensions:
            raise RuntimeError("the app has a Gateway already")
        app.extensions[EXTENSION] = self

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def close(self, *, journal_timeout: float = JOURNAL_CLOSE_SECONDS) -> None:
        """Close every part once; a second call does nothing. The journal's recorder goes first, writing what is
        queued within `journal_timeout` seconds (what a stopping worker must not lose), then the other parts, the
        last opened first. A part whose close fails is logged (gateway.bookkeeping.log_failure) and the others are
        closed all the same."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
        if self.recorder is not None:
            self._close_part("recorder", lambda: self.recorder.close(timeout=journal_timeout))
        for name in reversed(self.PARTS):
            close = getattr(getattr(self, name), "close", None)
            if name != "recorder" and callable(close):
                self._close_part(name, close)
        self.openapi_document = None

    @staticmethod
    def _close_part(name: str, close: Any) -> None:
        try:
            close()
        except Exception as error:  # the other parts are closed all the same
            log_failure(error, "closing the gateway's %s failed", name, logger=log)


def find_gateway(app: Any) -> Gateway | None:
    """The Gateway of `app`, or None when it is not a gateway app (or not a Flask app at all)."""
    found = getattr(app, "extensions", {}).get(EXTENSION)
    return found if isinstance(found, Gateway) else None


def gateway_of(app: Flask) -> Gateway:
    """The Gateway of `app`, a gateway app."""
    found = find_gateway(app)
    if found is None:
        raise RuntimeError("not a gateway app: it has no Gateway (gateway.create_app builds one)")
    return found


def current_gateway() -> Gateway:
    """The Gateway of the app of the current app or request context (a gateway app: create_app stored it there).
    Read a few times per request, so it is one lookup, without gateway_of()'s check."""
    return current_app.extensions[EXTENSION]
