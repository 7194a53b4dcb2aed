"""HTTP face of the demo subscriber: the events endpoint, what it received, and simulated outages."""

import json
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request
from standardwebhooks import Webhook, WebhookVerificationError

from sandbox.problems import problem_response
from sandbox.subscriber.inbox import MODE_DOWN, MODE_ERROR, MODE_SLOW, MODES, Behaviour, SubscriberInbox

EXTENSION_KEY = "sandbox.subscriber"
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_DELAY_SECONDS = 60
MALFORMED_SIGNATURE = "Malformed signature headers or body."
NOT_JSON = "The body is not JSON."


def create_blueprint(events_path: str) -> Blueprint:
    """Build the subscriber blueprint: events at `events_path`, behaviour and reset under /subscriber."""
    blueprint = Blueprint("subscriber", __name__)
    blueprint.add_url_rule(events_path, "receive_event", receive_event, methods=["POST"])
    blueprint.add_url_rule(events_path, "list_events", list_events)
    blueprint.add_url_rule("/subscriber/_behaviour", "show_behaviour", show_behaviour)
    blueprint.add_url_rule("/subscriber/_behaviour", "change_behaviour", change_behaviour, methods=["POST"])
    blueprint.add_url_rule("/subscriber/_reset", "reset", reset_inbox, methods=["POST"])
    return blueprint


def _inbox() -> SubscriberInbox:
    """The application's subscriber inbox."""
    return current_app.extensions[EXTENSION_KEY]["inbox"]


def _verifier() -> Webhook:
    """The Standard Webhooks verifier holding the subscriber's secret."""
    return current_app.extensions[EXTENSION_KEY]["verifier"]


def _parse_json(body: bytes) -> object | None:
    """The JSON document of a body, or None if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _record(verified: bool, event: object, error: str | None) -> dict:
    """One delivery as the subscriber keeps it."""
    return {
        "webhook_id": request.headers.get("webhook-id"),
        # W3C trace context, as a service tracing its work would read it
        "traceparent": request.headers.get("traceparent"),
        "tracestate": request.headers.get("tracestate"),
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "verified": verified,
        "event": event,
        "error": error,
    }


def _behaviour_document(behaviour: Behaviour) -> dict:
    """A behaviour as JSON."""
    return {"mode": behaviour.mode, "delay": behaviour.delay}


def receive_event() -> Response | tuple[str, int]:
    """Take one delivery: verify its signature and record it (204), or reject it; or act out an outage."""
    body = request.get_data()
    behaviour = _inbox().behaviour
    if behaviour.mode == MODE_DOWN:
        return problem_response(503, "Service Unavailable", "The subscriber is down.")
    if behaviour.mode == MODE_ERROR:
        return problem_response(500, "Internal Server Error", "The subscriber failed.")
    if behaviour.mode == MODE_SLOW:
        time.sleep(behaviour.delay)
    headers = {name: request.headers[name] for name in SIGNATURE_HEADERS if name in request.headers}
    try:
        _verifier().verify(body, headers, json_parse=False)
    except WebhookVerificationError as error:
        _inbox().record_rejected(_record(verified=False, event=_parse_json(body), error=str(error)))
        return problem_response(401, "Unauthorized", str(error))
    except ValueError:
        # The library's own parsing of a malformed signature header or a body that is not UTF-8.
        _inbox().record_rejected(_record(verified=False, event=_parse_json(body), error=MALFORMED_SIGNATURE))
        return problem_response(401, "Unauthorized", MALFORMED_SIGNATURE)
    event = _parse_json(body)
    if event is None:
        _inbox().record_rejected(_record(verified=True, event=None, error=NOT_JSON))
        return problem_response(400, "Bad Request", NOT_JSON)
    _inbox().record_received(_record(verified=True, event=event, error=None))
    return "", 204


def list_events() -> Response:
    """The received and the rejected deliveries, each in arrival order."""
    return jsonify(_inbox().records())


def show_behaviour() -> Response:
    """How the subscriber currently answers."""
    return jsonify(_behaviour_document(_inbox().behaviour))


def change_behaviour() -> Response:
    """Simulate an outage or a slow service: {"mode": "up" | "down" | "slow" | "error", "delay": seconds}."""
    document = request.get_json(silent=True)
    if not isinstance(document, dict):
        return problem_response(422, "Unprocessable Content", "The body must be a JSON object.")
    errors = []
    mode = document.get("mode")
    if mode not in MODES:
        errors.append({"field": "mode", "message": f"Must be one of: {', '.join(MODES)}."})
    delay = document.get("delay", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY_SECONDS:
        errors.append({"field": "delay", "message": f"Must be a number of seconds from 0 to {MAX_DELAY_SECONDS}."})
    for member in sorted(set(document) - {"mode", "delay"}):
        errors.append({"field": member, "message": "Unknown field."})
    if errors:
        return problem_response(422, "Unprocessable Content", "The behaviour is not valid.", errors=errors)
    behaviour = Behaviour(mode=mode, delay=float(delay))
    _inbox().change_behaviour(behaviour)
    return jsonify(_behaviour_document(behaviour))


def reset_inbox() -> tuple[str, int]:
    """Forget every delivery and be up again."""
    _inbox().reset()
    return "", 204
