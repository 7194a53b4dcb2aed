"""Outages and call logs of the simulated vendors, shared by all three: an outage switch and a log of received calls.

Each vendor's service endpoint is wrapped by `build_service_view`: while an outage is on, a call is read and
answered `503 Service Unavailable` without being applied ("unavailable"), or held until the outage is over and then
answered so ("no-reply"); every call, served or not, goes into the vendor's call log in arrival order.
`add_control_routes` gives the vendor `GET|POST|DELETE /<vendor>/_outage` and `GET /<vendor>/_calls`.
"""

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request
from marshmallow import Schema, ValidationError, fields, validate
from werkzeug.exceptions import HTTPException

from sandbox.problems import field_errors, problem_response

EXTENSION_KEY = "sandbox.outages"

UNAVAILABLE = "unavailable"
NO_REPLY = "no-reply"
OUTAGE_MODES = (UNAVAILABLE, NO_REPLY)
MAX_OUTAGE_SECONDS = 3600

APPLIED = "applied"
REFUSED = "refused"
FAULT = "fault"

MAX_CALLS_KEPT = 10_000
# How often a held call looks whether its outage is over, or was ended early.
NO_REPLY_POLL_SECONDS = 0.02
# What a held call answers once its outage is over: the vendor is back, so a retry may come at once.
RETRY_AFTER_HELD_CALL = 1


def _utc_text(moment: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class CallSummary:
    """What the call log keeps of a request: its operation and the order ids it names, as far as they can be read."""

    operation: str | None
    order_ids: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Outage:
    """One outage: its mode, when it ends on the wall clock, and the monotonic deadline that actually ends it."""

    mode: str
    until: datetime
    deadline: float

    def seconds_left(self) -> float:
        """Seconds until the outage ends, never negative."""
        return max(0.0, self.deadline - time.monotonic())

    def retry_after(self) -> int:
        """The Retry-After of a call refused now: the whole seconds left, at least 1."""
        return max(1, math.ceil(self.seconds_left()))


class OutageSwitch:
    """A vendor's outage, if any: switched on for some seconds, ended early, or over when its time has passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outage: Outage | None = None

    def start(self, seconds: float, mode: str) -> Outage:
        """Start an outage of `mode` lasting `seconds` from now, replacing any current one."""
        outage = Outage(
            mode=mode,
            until=datetime.now(UTC) + timedelta(seconds=seconds),
            deadline=time.monotonic() + seconds,
        )
        with self._lock:
            self._outage = outage
        return outage

    def end(self) -> Outage | None:
        """End the current outage at once; return it, or None if there was none."""
        with self._lock:
            outage, self._outage = self.current(), None
        return outage

    def current(self) -> Outage | None:
        """The outage that is on now, or None."""
        outage = self._outage
        if outage is None or outage.seconds_left() <= 0:
            return None
        return outage

    def wait_while_not_replying(self) -> None:
        """Return once no "no-reply" outage is on: its time has passed, or it was ended or replaced."""
        while True:
            outage = self.current()
            if outage is None or outage.mode != NO_REPLY:
                return
            time.sleep(min(NO_REPLY_POLL_SECONDS, outage.seconds_left()))


class CallLog:
    """The calls a vendor's service endpoint received, in arrival order; the last MAX_CALLS_KEPT are kept."""

    def __init__(self, max_calls: int = MAX_CALLS_KEPT) -> None:
        self._lock = threading.Lock()
        self._calls: deque[dict] = deque(maxlen=max_calls)
        self._numbers = itertools.count(1)

    def open(self, summary: CallSummary, outcome: str | None = None) -> dict:
        """Record a call as it arrives; its outcome is None until `close` gives it."""
        with self._lock:
            call = {
                "seq": next(self._numbers),
                "at": _utc_text(datetime.now(UTC)),
                "operation": summary.operation,
                "order_ids": list(summary.order_ids),
                "outcome": outcome,
            }
            self._calls.append(call)
        return call

    def close(self, call: dict, outcome: str) -> None:
        """Record what the simulator did with a call that `open` recorded."""
        with self._lock:
            call["outcome"] = outcome

    def calls(self) -> list[dict]:
        """Copies of the recorded calls, oldest first."""
        with self._lock:
            return [{**call, "order_ids": list(call["order_ids"])} for call in self._calls]

    def clear(self) -> None:
        """Forget every call; numbering starts again at 1."""
        with self._lock:
            self._calls.clear()
            self._numbers = itertools.count(1)


class ServiceControls:
    """A vendor's outage switch and call log."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.outages = OutageSwitch()
        self.calls = CallLog()

    def describe(self, outage: Outage) -> dict:
        """An outage as the _outage routes show it."""
        return {
            "vendor": self.vendor,
            "mode": outage.mode,
            "until": _utc_text(outage.until),
            "seconds_left": round(outage.seconds_left(), 3),
        }

    def reset(self) -> None:
        """End any outage and forget every call, as the vendor's _reset does."""
        self.outages.end()
        self.calls.clear()


def init_service_controls(app: Flask, vendor: str) -> ServiceControls:
    """Give `app` an outage switch and a call log for `vendor`."""
    controls = ServiceControls(vendor)
    app.extensions.setdefault(EXTENSION_KEY, {})[vendor] = controls
    return controls


def service_controls(vendor: str) -> ServiceControls:
    """The current application's outage switch and call log of `vendor`."""
    return current_app.extensions[EXTENSION_KEY][vendor]


class _JsonNumber(fields.Float):
    """A JSON number; a string that spells one, or a boolean, is not."""

    def _deserialize(self, value: object, attr: str | None, data: object, **kwargs: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class OutageSchema(Schema):
    """The body of POST /<vendor>/_outage: how long the outage lasts, and how the vendor fails during it."""

    seconds = _JsonNumber(required=True, validate=validate.Range(min=0, min_inclusive=False, max=MAX_OUTAGE_SECONDS))
    mode = fields.String(load_default=UNAVAILABLE, validate=validate.OneOf(OUTAGE_MODES))


def add_control_routes(blueprint: Blueprint, vendor: str) -> None:
    """Add /<vendor>/_outage (GET, POST, DELETE) and /<vendor>/_calls (GET) to the vendor's blueprint."""

    def start_outage() -> Response:
        """Switch the vendor's service endpoint into an outage, replacing any current one."""
        document = request.get_json(silent=True)
        if not isinstance(document, dict):
            return problem_response(422, "Unprocessable Content", "The body must be a JSON object.")
        try:
            loaded = OutageSchema().load(document)
        except ValidationError as error:
            return problem_response(
                422, "Unprocessable Content", "The outage is not valid.", errors=field_errors(error.messages)
            )
        controls = service_controls(vendor)
        return jsonify(controls.describe(controls.outages.start(loaded["seconds"], loaded["mode"])))

    def show_outage() -> Response:
        """The vendor's current outage, or null."""
        controls = service_controls(vendor)
        outage = controls.outages.current()
        return jsonify({"outage": None if outage is None else controls.describe(outage)})

    def end_outage() -> Response:
        """End the vendor's outage at once; the reply names the outage ended, if there was one."""
        controls = service_controls(vendor)
        ended = controls.outages.end()
        if ended is None:
            return jsonify({"outage": None})
        return jsonify({"outage": None, "ended": controls.describe(ended)})

    def list_calls() -> Response:
        """The calls the vendor's service endpoint received, in arrival order."""
        return jsonify({"calls": service_controls(vendor).calls.calls()})

    blueprint.add_url_rule(f"/{vendor}/_outage", "show_outage", show_outage, methods=["GET"])
    blueprint.add_url_rule(f"/{vendor}/_outage", "start_outage", start_outage, methods=["POST"])
    blueprint.add_url_rule(f"/{vendor}/_outage", "end_outage", end_outage, methods=["DELETE"])
    blueprint.add_url_rule(f"/{vendor}/_calls", "list_calls", list_calls)


def _read_body() -> bytes:
    """The request body, read in full before anything is answered; empty if it cannot be read (too large)."""
    try:
        return request.get_data()
    except HTTPException:
        return b""


def build_service_view(
    vendor: str,
    serve: Callable[[], tuple[Response, str]],
    summarize: Callable[[Request, bytes], CallSummary],
    render_unavailable: Callable[[], Response],
) -> Callable[[], Response]:
    """The view of a vendor's service endpoint: `serve` (its reply and outcome) unless an outage is on, the call logged.

    `summarize` reads a call's operation and order ids, best effort, from the request and its body;
    `render_unavailable` builds the vendor's body of a 503, to which the view adds the status and Retry-After.
    """

    def serve_unless_out() -> Response:
        """Answer one call to the service endpoint, or refuse it while the vendor is out; log it either way."""
        controls = service_controls(vendor)
        summary = summarize(request, _read_body())
        outage = controls.outages.current()
        if outage is None:
            call = controls.calls.open(summary)
            # A call the simulator itself failed on (an exception, answered 500) is logged as a fault.
            outcome = FAULT
            try:
                response, outcome = serve()
            finally:
                controls.calls.close(call, outcome)
            return response
        controls.calls.open(summary, outage.mode)
        retry_after = outage.retry_after()
        if outage.mode == NO_REPLY:
            controls.outages.wait_while_not_replying()
            retry_after = RETRY_AFTER_HELD_CALL
        response = render_unavailable()
        response.status_code = 503
        response.headers["Retry-After"] = str(retry_after)
        return response

    return serve_unless_out


def plain_text_unavailable() -> Response:
    """The short plain text body of a 503, as a web server in front of a SOAP service answers it."""
    return Response("Service Unavailable\n", status=503, content_type="text/plain; charset=utf-8")
