"""GET /livez and GET /readyz: health in the shape of draft-inadarei-api-health-check (application/health+json).

/livez says the process serves. /readyz checks what the gateway needs to do its work: the configuration (loaded, or
the process would not be running), the event store and its delivery queue, the Idempotency-Key store (Redis among
them when configured), the event worker's heartbeat, each connection's circuit breaker, the age of the oldest update
job still queued or sending, and where the stores live: with SQLite files, the free space of their folders; with
Redis, whether it keeps what it is given (`appendonly`, `maxmemory-policy`). A store that cannot be reached, or a
disk below `[stores] min_free_disk_mb`, fails (503); a stale worker, an open breaker, an update job queued longer
than `[jobs] warn_queued_age_seconds` or a Redis that may lose data warns (200: the gateway still takes requests).
Neither needs a key, and neither names a URL, a file or a credential.

The checks run at once on a small pool of threads, and the reply comes within `[gateway] readiness_timeout`
whatever they do: a check that has not finished by then fails. So a frozen store holds a probe for that long and
a check's thread no longer than the store's own timeouts (`[stores]`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from flask import Blueprint, Response, current_app, json

from gateway.config import GatewaySettings
from gateway.events.heartbeat import BEAT_SECONDS, Heartbeat
from gateway.jobs import JobStore
from gateway.readiness import Check, now
from gateway.rest.auth import OPEN, Policy
from gateway.rest.endpoints import endpoint
from gateway.rest.queries import IgnoredQuery
from gateway.runtime import current_gateway
from gateway.stores import redis_client

blueprint = Blueprint("health", __name__)
MEDIA_TYPE = "application/health+json"
#: a heartbeat older than this warns that deliveries are not being made
STALE_WORKER_SECONDS = 6 * BEAT_SECONDS
_ORDER = {"pass": 0, "warn": 1, "fail": 2}
HEALTH = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": list(_ORDER)}, "description": {"type": "string"},
    "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}}}}
#: the probes need no key (a load balancer or an orchestrator asks them) and show no connection's data
PROBE = Policy(OPEN, connection_data=False)


def _health(document: dict, status: int) -> Response:
    return Response(json.dumps(document), status=status, mimetype=MEDIA_TYPE)


def _answers(ask: Callable[[], object]) -> Callable[[], None]:
    """A probe that passes when `ask` returns, whatever it returns."""
    def probe() -> None:
        ask()

    return probe


def _worker_heartbeat(settings: GatewaySettings) -> dict:
    """How old the event worker's last heartbeat is."""
    heartbeat = Heartbeat(settings)
    try:
        age = heartbeat.age()
    finally:
        heartbeat.close()
    if age is None:
        return {"status": "warn", "output": "the event worker has not reported yet: deliveries wait"}
    if age > STALE_WORKER_SECONDS:
        return {"status": "warn", "observedValue": round(age, 1), "observedUnit": "s",
                "output": "the event worker's heartbeat is stale: deliveries wait"}
    return {"status": "pass", "observedValue": round(age, 1), "observedUnit": "s"}


def _breaker(connection: Any) -> dict:
    """A connection's circuit breaker: closed passes, open or half-open warns."""
    try:
        breaker = connection.breaker_state()
    except Exception as error:
        return {"componentId": connection.name, "status": "fail",
                "output": f"breaker state unreachable ({type(error).__name__})"}
    state = breaker["state"]
    return {"componentId": connection.name, "status": "pass" if state == "closed" else "warn", "observedValue": state,
            "output": f"backend {connection.kind}, breaker {state}, {breaker['failures']} consecutive failures"
                      + (f", a probe in {breaker['retry_after']} s" if breaker["retry_after"] else "")}


def _oldest_active_jobs(jobs: JobStore, warn_seconds: float) -> list[dict]:
    """Per connection with update jobs queued or sending, how long ago the oldest was accepted: older than
    `warn_seconds` warns (the backend is not taking them, or no worker sends them); none at all passes."""
    summary = jobs.active_summary()
    if not summary:
        return [{"status": "pass", "observedValue": 0, "observedUnit": "s"}]
    now = time.time()
    entries = []
    for connection, (count, accepted_at) in sorted(summary.items()):
        age = max(now - accepted_at, 0.0)
        entry = {"componentId": connection, "status": "warn" if age > warn_seconds else "pass",
                 "observedValue": round(age, 1), "observedUnit": "s"}
        if age > warn_seconds:
            entry["output"] = (f"connection {connection}: the oldest of its {count} queued update jobs was accepted "
                               f"{age:.0f} s ago, more than warn_queued_age_seconds ({warn_seconds:g} s)")
        entries.append(entry)
    return entries


def _free_space(folders: dict[str, Path], minimum_mb: float) -> list[dict]:
    """The free space of the stores' folders (to unprivileged writers); below `minimum_mb` fails."""
    entries = []
    for component, folder in folders.items():
        stat = os.statvfs(folder)
        free_mb = stat.f_bavail * stat.f_frsize / 2**20
        entry = {"componentId": component, "observedValue": round(free_mb, 1), "observedUnit": "MiB",
                 "status": "pass" if free_mb >= minimum_mb else "fail"}
        if free_mb < minimum_mb:
            entry["output"] = f"less than min_free_disk_mb ({minimum_mb:g} MiB) free: writes will soon fail"
        entries.append(entry)
    return entries


#: Redis settings the gateway's data needs: (CONFIG GET parameter, the value it needs, why, when it differs)
REDIS_REQUIREMENTS = {
    "redis:appendonly": ("appendonly", "yes", "Redis does not write its append-only file: a restart loses stored "
                         "events, queued deliveries and Idempotency-Keys (set appendonly yes)"),
    "redis:maxmemoryPolicy": ("maxmemory-policy", "noeviction", "Redis may evict keys when its memory is full: "
                              "events, locks and Idempotency-Keys could vanish (set maxmemory-policy noeviction)"),
}


def _redis_setting(settings: GatewaySettings, name: str) -> dict:
    """One Redis setting against what the gateway needs: pass, warn when it differs, warn "unknown" when Redis
    refuses CONFIG GET (as managed services do)."""
    parameter, needed, why = REDIS_REQUIREMENTS[name]
    client = redis_client(settings.events.redis_url, settings.stores, store="Redis", decode_responses=True)
    try:
        value = client.config_get(parameter).get(parameter)
    except redis.ResponseError:
        value = None
    finally:
        client.close()
    if value is None:
        return {"status": "warn", "observedValue": "unknown",
                "output": f"Redis refused CONFIG GET {parameter}: make sure it is {needed}"}
    return {"status": "pass" if value == needed else "warn", "observedValue": value,
            **({} if value == needed else {"output": why})}


def readiness_checks(settings: GatewaySettings) -> dict[str, Check]:
    """The checks of this gateway's configuration (each probe runs without the app's context)."""
    events = current_gateway().events
    idempotency = current_gateway().idempotency
    checks: dict[str, Check] = {
        "eventStore:responseTime": ("datastore", _answers(lambda: events.store.list_events(limit=1))),
        "deliveryQueue:responseTime": ("datastore", _answers(events.queue.huey.pending_count)),
        "idempotencyStore:responseTime": ("datastore", idempotency.ping),
        # every request that presents a key asks the throttle first; every console page its session
        "authThrottle:responseTime": ("datastore", current_gateway().auth_throttle.store.ping),
        "consoleSessions:responseTime": ("datastore", current_gateway().console_sessions.ping),
        "eventWorker:heartbeatAge": ("component", lambda: _worker_heartbeat(settings)),
        "updateJobs:oldestQueuedAge": ("component", lambda: _oldest_active_jobs(
            events.jobs, settings.jobs.warn_queued_age_seconds)),
    }
    for name, connection in current_gateway().connections.by_name.items():
        checks[f"connection:{name}"] = ("component", lambda connection=connection: _breaker(connection))
    if settings.events.redis_url:
        for name in REDIS_REQUIREMENTS:
            checks[name] = ("datastore", lambda name=name: _redis_setting(settings, name))
    else:
        folders = {"events": Path(settings.events.database).parent}
        if Path(settings.events.queue_database).parent != folders["events"]:
            folders["queue"] = Path(settings.events.queue_database).parent
        checks["dataFolder:freeSpace"] = ("system", lambda: _free_space(folders, settings.stores.min_free_disk_mb))
    return checks


def _configuration_loaded(settings: GatewaySettings) -> str:
    """What /readyz says of the configuration: loaded, and whether it is a sandbox's; never where it lives."""
    if settings.sandbox:
        return "loaded: a sandbox configuration ([gateway] sandbox = true), which accepts the public demo secrets"
    return "loaded"


@blueprint.get("/livez")
@endpoint("get", "/livez", "Liveness: the process serves", tags=["operations"], policy=PROBE, query=IgnoredQuery,
          security=[], reply_media_type=MEDIA_TYPE, reply=HEALTH, replies={200: "it serves"})
def livez(query: dict):
    """Always pass while the process answers."""
    return _health({"status": "pass", "description": "order gateway"}, 200)


@blueprint.get("/readyz")
@endpoint("get", "/readyz", "Readiness: stores, disk, worker and breakers", tags=["operations"], policy=PROBE,
          query=IgnoredQuery, security=[], reply_media_type=MEDIA_TYPE, reply=HEALTH,
          replies={200: "pass or warn: the gateway takes requests", 503: "fail: a store it needs cannot be used"})
def readyz(query: dict):
    """Each component's state within readiness_timeout; 200 for pass and warn, 503 for fail."""
    settings = current_app.config["GATEWAY_SETTINGS"]
    runner = current_gateway().readiness_checks
    checks = {"configuration:loaded": [{"componentType": "system", "status": "pass", "time": now(),
                                        "output": _configuration_loaded(settings)}]}
    checks.update(runner.run(readiness_checks(settings), settings.readiness_timeout))
    status = max((entry["status"] for entries in checks.values() for entry in entries), key=_ORDER.__getitem__)
    return _health({"status": status, "description": "order gateway", "checks": checks},
                   503 if status == "fail" else 200)
