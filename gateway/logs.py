"""Logs: one JSON object per line (python-json-logger), or readable text for a terminal, from every process.

`GATEWAY_LOG_FORMAT` chooses `json` (the default: what a log shipper reads) or `text`; `GATEWAY_LOG_LEVEL` the level
(`info` by default). The web app's processes log through gunicorn (`GunicornLogger`, named in config/gunicorn.py),
whose error log, access log and the root logger (the gateway's own loggers, huey's) then share one formatter; the
event worker calls `configure()`.

Every record carries the context of the work it belongs to: the REST layer starts a request's fields
(`start_request`: request id, caller, trace id) and the code that learns more adds to them (`note`: connection,
backend, operation, order ids, the backend call's duration); the delivery worker binds a delivery's (`bound`). The
access log line of a request carries the same fields, with its status and duration. A final scrub of every line,
whatever its fields, masks the configured secrets (`gateway.scrubbing`), so no field can leak one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import IO, Any

from gunicorn.glogging import Logger as _GunicornBaseLogger
from pythonjsonlogger.json import JsonFormatter

from gateway.scrubbing import scrub_log_text

FORMAT_VARIABLE = "GATEWAY_LOG_FORMAT"
LEVEL_VARIABLE = "GATEWAY_LOG_LEVEL"
FORMATS = ("json", "text")
#: the WSGI environ key under which a request's fields wait for its access log line
ENVIRON_KEY = "gateway.log_fields"
#: fields the text format shows after the message, in this order (the JSON format shows every field)
TEXT_FIELDS = ("request_id", "caller", "trace_id", "connection", "backend", "operation", "order_ids", "subscriber",
               "event_id", "outcome", "status", "duration_ms", "backend_status", "backend_duration_ms")
#: at most this many order ids in one record (a bulk names many)
MAX_ORDER_IDS = 100

_fields: ContextVar[dict[str, Any] | None] = ContextVar("order_gateway_log_fields", default=None)


def log_format() -> str:
    """The configured log format: json unless GATEWAY_LOG_FORMAT says text."""
    chosen = os.environ.get(FORMAT_VARIABLE, "json").strip().lower() or "json"
    return chosen if chosen in FORMATS else "json"


def log_level() -> int:
    """The configured level of the gateway's own records (GATEWAY_LOG_LEVEL, info by default)."""
    level = logging.getLevelName(os.environ.get(LEVEL_VARIABLE, "info").strip().upper())
    return level if isinstance(level, int) else logging.INFO


# -- the context every record carries ------------------------------------------------------------------------------

def start_request(**fields: Any) -> dict[str, Any]:
    """Begin a request's fields (replacing what an earlier request on this thread left); returns them, to be kept
    for the access log line."""
    started = {key: value for key, value in fields.items() if value is not None}
    _fields.set(started)
    return started


def end_request() -> None:
    """Forget the request's fields (the thread serves another request next)."""
    _fields.set(None)


def note(**fields: Any) -> None:
    """Add to the current request's fields: a value already there that differs becomes a list of both; order ids
    accumulate (at most MAX_ORDER_IDS), durations add up."""
    current = _fields.get()
    if current is None:
        return
    for key, value in fields.items():
        if value is None:
            continue
        known = current.get(key)
        if key == "order_ids":
            ids = known if isinstance(known, list) else []
            ids.extend(order_id for order_id in value if order_id not in ids)
            current[key] = ids[:MAX_ORDER_IDS]
        elif key.endswith("_ms") and isinstance(known, int | float):
            current[key] = round(known + value, 3)
        elif known is None or known == value:
            current[key] = value
        elif isinstance(known, list):
            if value not in known and len(known) < MAX_ORDER_IDS:
                known.append(value)
        else:
            current[key] = [known, value]


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[dict[str, Any]]:
    """Records made inside carry these fields too (a delivery's, in the worker)."""
    token = _fields.set({**(_fields.get() or {}), **{key: value for key, value in fields.items() if value is not None}})
    try:
        yield _fields.get()
    finally:
        _fields.reset(token)


def current_fields() -> Mapping[str, Any]:
    """The fields records made now carry."""
    return _fields.get() or {}


class ContextFilter(logging.Filter):
    """Adds the current request's or delivery's fields to each record that does not set them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record, with the fields added."""
        for key, value in (_fields.get() or {}).items():
            if key not in record.__dict__:
                record.__dict__[key] = list(value) if isinstance(value, list) else value
        return True


# -- the two formats -----------------------------------------------------------------------------------------------

class JsonLineFormatter(JsonFormatter):
    """{"time", "level", "logger", "message", ...fields}: one object per line, scrubbed."""

    def __init__(self) -> None:
        super().__init__("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger", "exc_info": "traceback"})

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """The time first, as people read a line."""
        return {"time": log_data.pop("time"), **log_data}

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        """The JSON line, scrubbed whole."""
        return scrub_log_text(super().serialize_log_record(log_data))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, scrubbed: for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The classic line with the record's context fields after the message."""
        line = super().format(record)
        extra = " ".join(f"{key}={_text_value(record.__dict__[key])}" for key in TEXT_FIELDS
                         if record.__dict__.get(key) is not None)
        if extra:
            head, newline, rest = line.partition("\n")
            line = f"{head} {extra}{newline}{rest}"
        return scrub_log_text(line)


def _text_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def formatter(chosen: str | None = None) -> logging.Formatter:
    """The formatter of the configured (or `chosen`) format."""
    return TextFormatter() if (chosen or log_format()) == "text" else JsonLineFormatter()


def _prepare(handler: logging.Handler, chosen: str | None = None) -> logging.Handler:
    handler.setFormatter(formatter(chosen))
    if not any(isinstance(item, ContextFilter) for item in handler.filters):
        handler.addFilter(ContextFilter())
    handler._order_gateway = True  # marks the handlers configure() owns
    return handler


def configure(stream: IO[str] | None = None, chosen: str | None = None) -> None:
    """Send every record of this process (root logger) to `stream` (stderr) in the configured format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_order_gateway", False):
            root.removeHandler(handler)
    root.addHandler(_prepare(logging.StreamHandler(stream or sys.stderr), chosen))
    root.setLevel(log_level())


def report_fatal(message: str) -> None:
    """One line on stderr in the configured format, for a process that stops before its logging is set up."""
    record = logging.LogRecord("gateway", logging.CRITICAL, __file__, 0, message, None, None)
    print(formatter().format(record), file=sys.stderr, flush=True)


class GunicornLogger(_GunicornBaseLogger):
    """gunicorn's logger with the gateway's formats: its error log and the root logger (the app's records) go to
    the error log's stream, the access log is one record per request with the request's fields."""

    def setup(self, cfg: Any) -> None:
        """gunicorn's set-up, then the gateway's formatter on its handlers and on the root logger."""
        super().setup(cfg)
        for handler in (*self.error_log.handlers, *self.access_log.handlers):
            _prepare(handler)
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_order_gateway", False):
                root.removeHandler(handler)
        for handler in self.error_log.handlers[:1]:  # the app's records go where gunicorn's own go
            root.addHandler(handler)
        root.setLevel(log_level())

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> None:
        """One record per request: the request's fields with method, path, status, size and duration."""
        if not self.access_log_enabled:
            return
        try:
            status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
            fields: dict[str, Any] = dict(environ.get(ENVIRON_KEY) or {})
            request_id = next((value for name, value in resp.headers if name.lower() == "x-request-id"), None)
            fields.setdefault("request_id", request_id)
            fields.setdefault("caller", environ.get("gateway.caller"))
            method, target = environ.get("REQUEST_METHOD", "-"), environ.get("RAW_URI", "-")
            fields.update(method=method, path=target, status=int(status), remote=environ.get("REMOTE_ADDR"),
                          bytes=getattr(resp, "sent", None), user_agent=environ.get("HTTP_USER_AGENT"),
                          duration_ms=round(request_time.total_seconds() * 1000, 3))
            # the record's own fields come first: what a view noted never hides the status or the timing
            self.access_log.info("%s %s %s", method, target, status,
                                 extra={key: value for key, value in fields.items() if value is not None})
        except Exception:  # a request's log line never takes the worker down
            self.error_log.exception("the access log line could not be written")
