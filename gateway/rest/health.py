"""GET /livez and GET /readyz: health in the shape of draft-inadarei-api-health-check (application/health+json).

/livez says the process serves. /readyz checks what the gateway needs to do its work: the configuration (loaded,
or the process would not be running), the event store and its delivery queue, the Idempotency-Key store (Redis
among them when configured), the event worker's heartbeat, and each connection's circuit breaker. A store that
cannot be reached fails (503); a stale worker or an open breaker warns (200: the gateway still takes requests,
deliveries or that connection's calls wait). Neither needs a key, and neither names a URL or a credential.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, json

from gateway.events.heartbeat import BEAT_SECONDS, Heartbeat
from gateway.rest.openapi import documented

blueprint = Blueprint("health", __name__)
MEDIA_TYPE = "application/health+json"
#: a heartbeat older than this warns that deliveries are not being made
STALE_WORKER_SECONDS = 6 * BEAT_SECONDS
_ORDER = {"pass": 0, "warn": 1, "fail": 2}
HEALTH = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": list(_ORDER)}, "description": {"type": "string"},
    "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}}}}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _health(document: dict, status: int) -> Response:
    return Response(json.dumps(document), status=status, mimetype=MEDIA_TYPE)


def _timed(component_type: str, probe: Callable[[], Any]) -> dict:
    """Run a probe: pass with its response time, or fail naming the error's kind (never its text: it may hold
    a URL)."""
    started = time.perf_counter()
    try:
        probe()
    except Exception as error:
        return {"componentType": component_type, "status": "fail", "time": _now(),
                "output": f"unreachable ({type(error).__name__})"}
    return {"componentType": component_type, "status": "pass", "time": _now(),
            "observedValue": round((time.perf_counter() - started) * 1000, 3), "observedUnit": "ms"}


@blueprint.get("/livez")
@documented("/livez", "get", "Liveness: the process serves", tags=["operations"], security=[],
            reply_media_type=MEDIA_TYPE, replies={200: ("it serves", HEALTH)})
def livez():
    """Always pass while the process answers."""
    return _health({"status": "pass", "description": "order gateway"}, 200)


@blueprint.get("/readyz")
@documented("/readyz", "get", "Readiness: stores, worker and breakers", tags=["operations"], security=[],
            reply_media_type=MEDIA_TYPE, replies={200: ("pass or warn: the gateway takes requests", HEALTH),
                                                  503: ("fail: a store it needs cannot be reached", HEALTH)})
def readyz():
    """Each component's state; 200 for pass and warn, 503 for fail."""
    settings = current_app.config["GATEWAY_SETTINGS"]
    events = current_app.extensions["order_events"]
    checks: dict[str, list[dict]] = {
        "configuration:loaded": [{"componentType": "system", "status": "pass", "time": _now(),
                                  "output": settings.source}],
        "eventStore:responseTime": [_timed("datastore", lambda: events.store.list_events(limit=1))],
        "deliveryQueue:responseTime": [_timed("datastore", events.queue.huey.pending_count)],
        "idempotencyStore:responseTime": [_timed(
            "datastore", current_app.extensions["order_gateway_idempotency"].ping)],
    }
    heartbeat = Heartbeat(settings)
    try:
        age = heartbeat.age()
    except Exception as error:
        worker = {"status": "fail", "output": f"unreachable ({type(error).__name__})"}
    else:
        if age is None:
            worker = {"status": "warn", "output": "the event worker has not reported yet: deliveries wait"}
        elif age > STALE_WORKER_SECONDS:
            worker = {"status": "warn", "observedValue": round(age, 1), "observedUnit": "s",
                      "output": "the event worker's heartbeat is stale: deliveries wait"}
        else:
            worker = {"status": "pass", "observedValue": round(age, 1), "observedUnit": "s"}
    finally:
        heartbeat.close()
    checks["eventWorker:heartbeatAge"] = [{"componentType": "component", "time": _now(), **worker}]
    for name, connection in current_app.extensions["order_gateway"].by_name.items():
        try:
            breaker = connection.breaker_state()
        except Exception as error:
            checks[f"connection:{name}"] = [{"componentType": "component", "status": "fail", "time": _now(),
                                             "output": f"breaker state unreachable ({type(error).__name__})"}]
            continue
        state = breaker["state"]
        entry = {"componentId": name, "componentType": "component", "time": _now(),
                 "status": "pass" if state == "closed" else "warn", "observedValue": state,
                 "output": f"backend {connection.kind}, breaker {state}, {breaker['failures']} consecutive failures"
                           + (f", a probe in {breaker['retry_after']} s" if breaker["retry_after"] else "")}
        checks[f"connection:{name}"] = [entry]
    status = max((entry["status"] for entries in checks.values() for entry in entries), key=_ORDER.__getitem__)
    return _health({"status": status, "description": "order gateway", "checks": checks},
                   503 if status == "fail" else 200)
