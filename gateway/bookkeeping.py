"""Outcome first: once a backend call was attempted, its outcome is the reply and what the Idempotency-Key keeps.

What happens around a call — the circuit breaker's shared state, the call lock's release, the Idempotency-Key's
record — is bookkeeping: when it fails, `note_failure` counts it (`order_gateway_bookkeeping_failures_total`, by
what failed) and logs one line without a traceback, and the caller goes on with the call's outcome. A failure that
repeats on every call (a store that is down) is logged at most once per interval per subject, and counted each
time.

STORE_ERRORS are the errors a shared store's client raises when the store cannot be reached or used.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time

import redis

from gateway import metrics

STORE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, sqlite3.Error, OSError)

log = logging.getLogger("gateway.bookkeeping")
_last_logged: dict[tuple[str, str], float] = {}
_last_logged_guard = threading.Lock()


def describe_error(error: BaseException | str) -> str:
    """A store error for a log line: SQLite's message (it names no file or secret), otherwise the kind alone (a
    Redis error's text may hold an address); a text says what went wrong without an error."""
    if isinstance(error, str):
        return error
    if isinstance(error, sqlite3.Error):
        return f"{type(error).__name__}: {str(error)[:200]}"
    return type(error).__name__


def note_failure(what: str, error: BaseException | str, consequence: str, *, subject: str = "",
                 interval: float = 0.0) -> None:
    """Count a failed piece of bookkeeping and log it without a traceback: `what` is the counter's label (a fixed
    word), `error` the failure (or what went wrong, without one), `consequence` what it means for the caller; with
    `interval`, a line is logged at most that often per `what` and `subject`."""
    with contextlib.suppress(Exception):  # figures that cannot be written must not stop the log line
        metrics.bookkeeping_failures.labels(what).inc()
    if interval > 0:
        now = time.monotonic()
        with _last_logged_guard:
            last = _last_logged.get((what, subject))
            if last is not None and now - last < interval:
                return
            _last_logged[(what, subject)] = now
    log.warning("%s failed (%s); %s", what.replace("_", " "), describe_error(error), consequence,
                extra={"bookkeeping": what, "error_kind": None if isinstance(error, str) else type(error).__name__})


def log_failure(error: BaseException, message: str, *args: object, logger: logging.Logger | None = None) -> None:
    """Log a failure the caller goes on from: a store's (STORE_ERRORS) in one line without a traceback — a store
    that is down fails every request alike —, anything else with its traceback."""
    logger = logger or log
    if isinstance(error, STORE_ERRORS):
        logger.warning(f"{message}: %s", *args, describe_error(error))
    else:
        logger.error(message, *args, exc_info=error)
