"""GET /livez and GET /readyz: health in the shape of draft-inadarei-api-health-check (application/health+json).

/livez says the process serves. /readyz checks what the gateway needs to do its work: the configuration (loaded,
or the process would not be running), the event store and its delivery queue, the Idempotency-Key store (Redis
among them when configured), the event worker's heartbeat, each connection's circuit breaker, and where the
stores live: with SQLite files, the free space of their folders; with Redis, whether it keeps what it is given
(`appendonly`, `maxmemory-policy`). A store that cannot be reached, or a disk below `[stores] min_free_disk_mb`,
fails (503); a stale worker, an open breaker or a Redis that may lose data warns (200: the gateway still takes
requests). Neither needs a key, and neither names a URL, a file or a credential.

The checks run at once on a small pool of threads, and the reply comes within `[gateway] readiness_timeout`
whatever they do: a check that has not finished by then fails. So a frozen store holds a probe for that long and
a check's thread no longer than the store's own timeouts (`[stores]`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from flask import Blueprint, Response, current_app, json

from gateway.config import GatewaySettings
from gateway.events.heartbeat import BEAT_SECONDS, Heartbeat
from gateway.rest.openapi import documented
from gateway.runtime import current_gateway
from gateway.stores import redis_client

blueprint = Blueprint("health", __name__)
MEDIA_TYPE = "application/health+json"
#: a heartbeat older than this warns that deliveries are not being made
STALE_WORKER_SECONDS = 6 * BEAT_SECONDS
#: threads per process that run readiness checks
CHECK_THREADS = 8
_ORDER = {"pass": 0, "warn": 1, "fail": 2}
HEALTH = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": list(_ORDER)}, "description": {"type": "string"},
    "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}}}}
#: a check: its componentType and its probe, which returns None (pass, timed) or its entries (status, output, ...)
Check = tuple[str, Callable[[], dict | list[dict] | None]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _health(document: dict, status: int) -> Response:
    return Response(json.dumps(document), status=status, mimetype=MEDIA_TYPE)


def _unreachable(error: BaseException) -> dict:
    """A failed probe, naming the error's kind (never its text: it may hold an address)."""
    return {"status": "fail", "output": f"unreachable ({type(error).__name__})"}


def _probe(probe: Callable[[], dict | list[dict] | None]) -> list[dict]:
    """Run a probe: its entries, or a pass with its response time, or a fail naming the error's kind."""
    started = time.perf_counter()
    try:
        found = probe()
    except Exception as error:
        return [_unreachable(error)]
    if found is None:
        return [{"status": "pass", "observedValue": round((time.perf_counter() - started) * 1000, 3),
                 "observedUnit": "ms"}]
    return found if isinstance(found, list) else [found]


class ReadinessChecks:
    """The threads /readyz runs its checks on: CHECK_THREADS, started in the process that serves (a forked worker
    makes its own)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        with self._guard:
            if self._pool is None or self._pid != os.getpid():
                self._pool, self._pid = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="readiness"), os.getpid()
            return self._pool

    def run(self, checks: dict[str, Check], timeout: float) -> dict[str, list[dict]]:
        """Every check's entries within `timeout` seconds; a check not done by then fails (and, if it has not
        started, never runs)."""
        deadline = time.monotonic() + timeout
        pool = self._executor()
        futures = {name: pool.submit(_probe, probe) for name, (_, probe) in checks.items()}
        results = {}
        for name, future in futures.items():
            try:
                entries = future.result(timeout=max(deadline - time.monotonic(), 0))
            except TimeoutError:
                future.cancel()
                entries = [{"status": "fail", "output": f"no answer within readiness_timeout ({timeout:g} s)"}]
            results[name] = [{"componentType": checks[name][0], "time": _now(), **entry} for entry in entries]
        return results


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
@documented("/livez", "get", "Liveness: the process serves", tags=["operations"], security=[],
            reply_media_type=MEDIA_TYPE, replies={200: ("it serves", HEALTH)})
def livez():
    """Always pass while the process answers."""
    return _health({"status": "pass", "description": "order gateway"}, 200)


@blueprint.get("/readyz")
@documented("/readyz", "get", "Readiness: stores, disk, worker and breakers", tags=["operations"], security=[],
            reply_media_type=MEDIA_TYPE, replies={200: ("pass or warn: the gateway takes requests", HEALTH),
                                                  503: ("fail: a store it needs cannot be used", HEALTH)})
def readyz():
    """Each component's state within readiness_timeout; 200 for pass and warn, 503 for fail."""
    settings = current_app.config["GATEWAY_SETTINGS"]
    runner = current_app.extensions.setdefault("order_gateway_readiness", ReadinessChecks())
    checks = {"configuration:loaded": [{"componentType": "system", "status": "pass", "time": _now(),
                                        "output": _configuration_loaded(settings)}]}
    checks.update(runner.run(readiness_checks(settings), settings.readiness_timeout))
    status = max((entry["status"] for entries in checks.values() for entry in entries), key=_ORDER.__getitem__)
    return _health({"status": status, "description": "order gateway", "checks": checks},
                   503 if status == "fail" else 200)
