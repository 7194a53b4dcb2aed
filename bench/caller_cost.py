"""Callers and idempotency cost: what authenticating the caller and honouring Idempotency-Key add to a request.

In process and without contention (one thread): `Authenticator.caller_for` with the sandbox configuration's 3
callers and with 50 configured keys, the whole `authenticate` hook, `read_key` + `fingerprint` of a typical
Ongoing update, `begin` + `complete` and `begin` + `attempt` + `complete` of a fresh key and `begin` of a replay on
the SQLite and the Redis store; then `PATCH /orders/SO-1006` through Flask's test client of a gateway whose Ongoing
transport answers from memory, as the demo caller without a key, with a fresh Idempotency-Key per request, and
anonymous (`allow_anonymous`, no callers), and to take the keyed request apart, with the store replaced by a dict
and with the store's calls timed.
Once with the embedded coordination (SQLite store) and once with `[events] redis_url` (Redis store) on a
redis-server started for the run on a free 127.0.0.1 port and stopped at its end. Run alone: `python -m
bench.caller_cost [--quick]`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from flask import Flask

import sandbox
from bench.measure import Budget, Section, microseconds, time_cases_interleaved
from bench.profile_hotspots import CannedTransport
from bench.resilience_cost import Case, judge_p50, record, running_redis_server
from bench.workload import (
    CONNECTIONS,
    DEMO_KEY,
    TYPICAL,
    as_demo_caller,
    configured_connections,
    parsed_config,
    rendered_request,
    sandbox_reply,
)
from gateway import create_app
from gateway.backends import BACKENDS
from gateway.config import load_settings
from gateway.idempotency import (
    IN_PROGRESS,
    MISMATCH,
    NEW,
    REPLAY,
    Attempt,
    Begun,
    IdempotencyStore,
    StoredResponse,
)
from gateway.idempotency.redis_store import RedisIdempotencyStore
from gateway.idempotency.sqlite_store import SqliteIdempotencyStore
from gateway.rest.auth import Authenticator, authenticate, current_caller
from gateway.rest.idempotency import HEADER, LEASE_MARGIN_SECONDS, REPLAYED, fingerprint, read_key
from gateway.runtime import gateway_of
from gateway.transport import BackendReply

BACKEND = "ongoing"
WORKLOAD = TYPICAL[BACKEND]
URL = f"/orders/{WORKLOAD.order_id(0)}"
DOCUMENT = WORKLOAD.document()
#: the sandbox configuration's callers hold 3 keys; this many more callers of one key each make 50
SANDBOX_KEYS = 3
EXTRA_CALLERS = 50 - SANDBOX_KEYS
UNKNOWN_KEY = "not-a-configured-key-0000"
TOTAL_TARGET_NS = 200_000
SQLITE_TARGET = (f"authentication + idempotency (SQLite store) add < {TOTAL_TARGET_NS // 1000} µs p50 to a PATCH "
                 "(in process)")
REDIS_TARGET = (f"authentication + idempotency (Redis store) add < {TOTAL_TARGET_NS // 1000} µs p50 to a PATCH "
                "(in process)")
#: the idempotency store of each coordination, as the report names it
STORES = {"embedded": "SQLite", "redis": "Redis"}
#: the share of the section's seconds for the calls timed alone; the rest goes to the requests
PARTS_SHARE = 0.4


def _return_at_once() -> None:
    return None


def gateway_config(folder: Path, *, redis_url: str | None = None, anonymous: bool = False,
                   extra_callers: int = 0) -> dict[str, Any]:
    """The sandbox configuration for an in-process gateway in `folder` (its own databases), as a variant asks."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = parsed_config("http://127.0.0.1:9", folder)
    if redis_url is not None:
        raw["events"]["redis_url"] = redis_url
    if anonymous:
        del raw["callers"]
        raw["gateway"]["allow_anonymous"] = True
    for number in range(extra_callers):
        raw["callers"][f"bench-{number:02d}"] = {"keys": [f"bench-caller-key-{number:04d}"],
                                                 "scopes": ["orders:write"]}
    return raw


def authenticator(folder: Path, extra_callers: int) -> Authenticator:
    """An Authenticator of the sandbox configuration with `extra_callers` more callers."""
    raw = gateway_config(folder, extra_callers=extra_callers)
    return Authenticator(load_settings(raw, str(folder / "gateway.toml"), BACKENDS))


def canned_reply(folder: Path) -> BackendReply:
    """The sandbox's reply to the typical Ongoing update (SO-1006 released), produced by its app in process."""
    folder.mkdir(parents=True, exist_ok=True)
    connection = configured_connections("http://127.0.0.1:9", folder)[BACKEND]
    try:
        request = rendered_request(connection, WORKLOAD)
        return sandbox_reply(sandbox.create_app().test_client(), connection, request)
    finally:
        connection.close()


def close_app(app: Flask) -> None:
    """Release what the app holds: connections, coordination, events, stores and the journal."""
    gateway_of(app).close()


@dataclass
class MemoryRecord:
    """A key's record in MemoryIdempotencyStore: its fingerprint, the calls noted on it, the response once kept."""

    fingerprint: str
    attempts: list[Attempt] = field(default_factory=list)
    response: StoredResponse | None = None


class MemoryIdempotencyStore(IdempotencyStore):
    """The store contract kept in a dict, for one thread and without expiry: what the decorator costs by itself.

    As the real stores, but no lease or lifetime ever runs out: an in-progress record stays IN_PROGRESS (so
    OUTCOME_UNKNOWN never arises), and a completed one is replayed for ever.
    """

    def __init__(self) -> None:
        self.records: dict[str, MemoryRecord] = {}

    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """NEW for an unknown key, else what its record says."""
        found = self.records.get(key)
        if found is None:
            self.records[key] = MemoryRecord(fingerprint)
            return Begun(NEW)
        if found.fingerprint != fingerprint:
            return Begun(MISMATCH)
        return Begun(IN_PROGRESS) if found.response is None else Begun(REPLAY, found.response)

    def attempt(self, key: str, fingerprint: str, attempt: Attempt, *, ttl_seconds: float,
                now: float | None = None) -> bool:
        """Note the call if the key is in progress with this fingerprint; whether it was noted."""
        found = self.records.get(key)
        if found is None or found.fingerprint != fingerprint or found.response is not None:
            return False
        found.attempts.append(attempt)
        return True

    def complete(self, key: str, fingerprint: str, response: StoredResponse, *, ttl_seconds: float,
                 now: float | None = None) -> None:
        """Keep the response if the key is in progress with this fingerprint."""
        found = self.records.get(key)
        if found is not None and found.fingerprint == fingerprint and found.response is None:
            found.response, found.attempts = response, []

    def abandon(self, key: str, fingerprint: str) -> None:
        """Forget the key if it is in progress with this fingerprint and noted no call."""
        found = self.records.get(key)
        if found is not None and found.fingerprint == fingerprint and found.response is None and not found.attempts:
            del self.records[key]

    def purge_expired(self, now: float | None = None, *, limit: int | None = None) -> int:
        """Nothing expires."""
        return 0

    def ping(self) -> None:
        """Always there."""

    def close(self) -> None:
        """Nothing to release."""


class Gateways:
    """The in-process gateways of one coordination: with the sandbox's callers (with the configured store, the store
    in memory, and the configured store with its calls timed), and anonymous without callers."""

    def __init__(self, folder: Path, reply: BackendReply, redis_url: str | None, stack: ExitStack) -> None:
        transports = {CONNECTIONS[BACKEND]: CannedTransport(reply)}

        def gateway(name: str, **variant: Any) -> Flask:
            app = create_app(gateway_config(folder / name, redis_url=redis_url, **variant), transports=transports)
            stack.callback(close_app, app)
            return app

        self.callers, self.anonymous = gateway("callers"), gateway("anonymous", anonymous=True)
        self.in_memory, self.store_timed = gateway("memory"), gateway("store-timed")
        gateway_of(self.in_memory).idempotency.close()
        gateway_of(self.in_memory).idempotency = MemoryIdempotencyStore()
        self.spent_in_store, self.store_nanoseconds = 0, []
        self._time_store_calls(gateway_of(self.store_timed).idempotency)
        self.client = as_demo_caller(self.callers.test_client())
        self.in_memory_client = as_demo_caller(self.in_memory.test_client())
        self.timed_client = as_demo_caller(self.store_timed.test_client())
        self.anonymous_client = self.anonymous.test_client()
        self.keys = itertools.count()
        self.store = gateway_of(self.callers).idempotency
        expected = RedisIdempotencyStore if redis_url is not None else SqliteIdempotencyStore
        if not isinstance(self.store, expected):
            raise RuntimeError(f"the gateway's Idempotency-Key store is a {type(self.store).__name__}, "
                               f"not {expected.__name__}")

    def as_caller(self) -> Any:
        """(a) The demo caller, no Idempotency-Key."""
        return _succeeded(self.client.patch(URL, json=DOCUMENT, headers={}))

    def with_fresh_key(self) -> Any:
        """(b) The demo caller with an Idempotency-Key never used before."""
        return _succeeded(self.client.patch(URL, json=DOCUMENT, headers={HEADER: f'"bench-{next(self.keys)}"'}))

    def with_fresh_key_in_memory(self) -> Any:
        """(d) As (b), on the gateway whose store is a dict in memory."""
        return _succeeded(self.in_memory_client.patch(URL, json=DOCUMENT,
                                                      headers={HEADER: f'"bench-{next(self.keys)}"'}))

    def with_fresh_key_store_timed(self) -> Any:
        """(e) As (b), on a gateway whose store records how long its begin + attempt + complete take in each
        request."""
        self.spent_in_store = 0
        response = _succeeded(self.timed_client.patch(URL, json=DOCUMENT,
                                                      headers={HEADER: f'"bench-{next(self.keys)}"'}))
        self.store_nanoseconds.append(self.spent_in_store)
        return response

    def as_anonymous(self) -> Any:
        """(c) No Authorization header, on the gateway that serves anyone (no callers configured)."""
        return _succeeded(self.anonymous_client.patch(URL, json=DOCUMENT, headers={}))

    def check(self) -> bytes:
        """Each case succeeds, and a repeated key is replayed (so the store is in use); the reply body."""
        self.as_caller()
        self.as_anonymous()
        self.with_fresh_key_in_memory()
        self.with_fresh_key_store_timed()
        key = {HEADER: '"bench-replay-check"'}
        first = _succeeded(self.client.patch(URL, json=DOCUMENT, headers=key))
        again = _succeeded(self.client.patch(URL, json=DOCUMENT, headers=key))
        if REPLAYED in first.headers or again.headers.get(REPLAYED) != "true":
            raise RuntimeError("the gateway did not replay a repeated Idempotency-Key")
        return first.get_data()

    def _time_store_calls(self, store: IdempotencyStore) -> None:
        """Wrap the store's calls of a request (begin, attempt before the backend call, complete) to add their time
        to `spent_in_store`."""
        for method in ("begin", "attempt", "complete"):
            original = getattr(store, method)

            def timed(*arguments: Any, original: Callable[..., Any] = original, **options: Any) -> Any:
                started = time.perf_counter_ns()
                try:
                    return original(*arguments, **options)
                finally:
                    self.spent_in_store += time.perf_counter_ns() - started

            setattr(store, method, timed)


def _succeeded(response: Any) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"PATCH {URL} answered {response.status_code}: {response.get_data()[:300]!r}")
    return response


class StoreCalls:
    """begin + complete (and begin + attempt + complete) of fresh keys on one store, and begin of a replay, with the
    gateway's lease and lifetime."""

    #: the call a request notes on its key before it goes out, as the typical Ongoing update's would be
    ATTEMPT = Attempt(exchange_id="exc_00000000000000000000000000000000", connection=CONNECTIONS[BACKEND],
                      operation="UpdateOrder", order_ids=(WORKLOAD.order_id(0),), idempotent=True,
                      request_id="00000000000000000000000000000000")

    def __init__(self, store: IdempotencyStore, response: StoredResponse, *, lease_seconds: float,
                 ttl_seconds: float) -> None:
        self.store, self.response = store, response
        self.lease_seconds, self.ttl_seconds = lease_seconds, ttl_seconds
        self.fingerprint = hashlib.sha256(b"bench fingerprint").hexdigest()
        self.keys = (f"demo:store-{number}" for number in itertools.count())
        self.replayed = "demo:store-replayed"
        self.store.begin(self.replayed, self.fingerprint, lease_seconds=lease_seconds)
        self.store.complete(self.replayed, self.fingerprint, response, ttl_seconds=ttl_seconds)
        if self.store.begin(self.replayed, self.fingerprint, lease_seconds=lease_seconds).state != REPLAY:
            raise RuntimeError(f"{type(store).__name__} did not replay a completed key")

    def begin_and_complete(self) -> None:
        """A fresh key claimed and its reply kept, with no call noted (a request that sent nothing, e.g. a 2xx
        answered without a backend call)."""
        key = next(self.keys)
        if self.store.begin(key, self.fingerprint, lease_seconds=self.lease_seconds).state != NEW:
            raise RuntimeError(f"a fresh key was not new: {key}")
        self.store.complete(key, self.fingerprint, self.response, ttl_seconds=self.ttl_seconds)

    def begin_attempt_complete(self) -> None:
        """What the decorator asks of the store for a request with a fresh key whose one backend call succeeds:
        the claim, the call noted before it goes out, the reply kept."""
        key = next(self.keys)
        if self.store.begin(key, self.fingerprint, lease_seconds=self.lease_seconds).state != NEW:
            raise RuntimeError(f"a fresh key was not new: {key}")
        if not self.store.attempt(key, self.fingerprint, self.ATTEMPT, ttl_seconds=self.ttl_seconds):
            raise RuntimeError(f"the call could not be noted on a fresh key: {key}")
        self.store.complete(key, self.fingerprint, self.response, ttl_seconds=self.ttl_seconds)

    def begin_fresh(self) -> None:
        """begin() of a fresh key alone (the key stays in progress until its lease ends)."""
        self.store.begin(next(self.keys), self.fingerprint, lease_seconds=self.lease_seconds)

    def begin_replay(self) -> None:
        """begin() of a completed key: the stored reply comes back."""
        self.store.begin(self.replayed, self.fingerprint, lease_seconds=self.lease_seconds)


def fsync_case(folder: Path) -> Callable[[], None]:
    """A small write and os.fsync on a kept file in the scratch folder: what a synchronous commit waits for."""
    path = folder / "fsync.probe"

    def write_and_fsync() -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(descriptor, b"x" * 512, 0)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    return write_and_fsync


def configured_keys(auth: Authenticator) -> int:
    """How many keys the authenticator's callers have, plain and hashed."""
    return sum(len(caller.key_digests) for caller in auth.callers)


def part_cases(sandbox_auth: Authenticator, many_auth: Authenticator, stores: dict[str, StoreCalls],
               folder: Path, redis_client: redis.Redis | None) -> list[Case]:
    """The calls timed alone; the request ones run inside one request context of the gateway app."""
    def key_and_fingerprint() -> None:
        read_key()
        fingerprint()

    cases = [
        Case("baseline", "the timing loop around a function that returns at once", _return_at_once),
        Case("sha256", "SHA-256 of the presented key alone (`hashlib.sha256(...).digest()`)",
             lambda: hashlib.sha256(DEMO_KEY.encode()).digest()),
        Case(f"caller_for {SANDBOX_KEYS}", f"`Authenticator.caller_for`, the demo key, {SANDBOX_KEYS} keys configured "
             "(the sandbox's callers)", lambda: sandbox_auth.caller_for(DEMO_KEY)),
        Case("caller_for 50", f"`Authenticator.caller_for`, the demo key, {configured_keys(many_auth)} keys "
             "configured",
             lambda: many_auth.caller_for(DEMO_KEY)),
        Case("caller_for 50 unknown", f"`Authenticator.caller_for`, an unknown key, {configured_keys(many_auth)} keys "
             "configured", lambda: many_auth.caller_for(UNKNOWN_KEY)),
        Case("authenticate", f"the whole `authenticate` hook: policy, Bearer key, `caller_for` ({SANDBOX_KEYS} keys), "
             "`g.caller`, scope check", authenticate),
        Case("read_key fingerprint", "`read_key` + `fingerprint` of the typical Ongoing update", key_and_fingerprint),
    ]
    for name, calls in stores.items():
        store = STORES[name]
        cases += [
            Case(f"begin complete {name}", f"{store} store: `begin` + `complete`, a fresh key",
                 calls.begin_and_complete),
            Case(f"begin attempt complete {name}", f"{store} store: `begin` + `attempt` + `complete`, a fresh key "
                 "(what a request whose backend call succeeds asks of it)", calls.begin_attempt_complete),
            Case(f"begin {name}", f"{store} store: `begin` alone, a fresh key", calls.begin_fresh),
            Case(f"begin replay {name}", f"{store} store: `begin` of a replay (the stored reply read back)",
                 calls.begin_replay),
        ]
    cases.append(Case("fsync", "a 512-byte write + `os.fsync` in the scratch folder (what a synchronous commit "
                      "waits for)", fsync_case(folder)))
    if redis_client is not None:
        cases.append(Case("redis ping", "one Redis round trip alone (`PING`)", redis_client.ping))
    return cases


#: the requests of each coordination, by the key prefix of their figures
REQUEST_CASES = {
    "caller": "(a) the demo caller, no Idempotency-Key",
    "keyed": "(b) the demo caller, a fresh Idempotency-Key per request",
    "anonymous": "(c) anonymous: `allow_anonymous`, no callers, no Authorization",
    "keyed in memory": "(d) as (b), the store replaced by a dict in memory (the decorator without storage)",
    "keyed timed": "(e) as (b), the store's `begin` + `attempt` + `complete` timed within each request",
}
#: figures derived per coordination, by key: what they show, and the two cases whose p50s they subtract
REQUEST_DIFFERENCES = {
    "authentication": ("what authentication adds, (a) minus (c)", "caller", "anonymous"),
    "idempotency": ("what idempotency adds, (b) minus (a)", "keyed", "caller"),
    "both": ("authentication + idempotency, (b) minus (c)", "keyed", "anonymous"),
    "decorator": ("the decorator without storage, (d) minus (a)", "keyed in memory", "caller"),
    "store in request": ("the store within the request, (b) minus (d)", "keyed", "keyed in memory"),
}


#: the order the requests are timed in: a request that has waited for the disk or Redis slows the next few a
#: little, so (d), which only explains, follows (b) and (e), and (a) and (c) follow requests that wait for nothing
TIMING_ORDER = ("caller", "anonymous", "keyed", "keyed timed", "keyed in memory")
#: requests per block of the interleaving: short blocks, so bursts of other work on the machine hit every case
REQUEST_BLOCK = 10


def request_cases(name: str, gateways: Gateways) -> list[Case]:
    """(a) to (e) of one coordination, in the order they are timed."""
    calls = {"caller": gateways.as_caller, "keyed": gateways.with_fresh_key, "anonymous": gateways.as_anonymous,
             "keyed in memory": gateways.with_fresh_key_in_memory, "keyed timed": gateways.with_fresh_key_store_timed}
    return [Case(f"{key} {name}", REQUEST_CASES[key], calls[key]) for key in TIMING_ORDER]


def request_context(app: Flask) -> Any:
    """A test request context of the typical update as the demo caller with an Idempotency-Key."""
    return app.test_request_context(URL, method="PATCH", json=DOCUMENT, headers={
        "Authorization": f"Bearer {DEMO_KEY}", HEADER: '"8e03978e-40d5-43e8-bc93-6894a57f9324"'})


def run_caller_cost(budget: Budget) -> Section:
    """What authentication and Idempotency-Key handling add per request without contention, alone and in a PATCH."""
    section = Section(
        "8. Callers and idempotency cost",
        "In process, one thread, no contention. Alone: `Authenticator.caller_for` (a SHA-256 of the presented key, "
        "then `hmac.compare_digest` against every configured key) with the sandbox configuration's 3 callers and "
        f"with {EXTRA_CALLERS} more (50 keys); the whole `authenticate` hook and `read_key` + `fingerprint`, inside "
        f"one Flask test request context of `PATCH {URL}` `{json.dumps(DOCUMENT)}` with the demo key and an "
        "Idempotency-Key (body and query are parsed on first use and cached, as in a request, where the view reads "
        "them again); the stores' `begin` + `complete` and `begin` + `attempt` + `complete` (the call noted on the "
        "key before it goes out) of a fresh key and `begin` of a replay, with the gateway's "
        "lease and lifetime and its reply as the stored response. In a request: the same PATCH through Flask's "
        "test client of a gateway built from the sandbox configuration, its Ongoing transport answering from "
        "memory with the sandbox's reply (a dry run would skip Idempotency-Key handling): (a) as the demo caller "
        "without a key, (b) with a fresh Idempotency-Key per request, (c) anonymous on a gateway with "
        "`allow_anonymous = true` and no callers; to take (b) apart, (d) as (b) on a gateway whose store is a dict "
        "in memory (the decorator's own work) and (e) as (b) with the time inside the store's calls recorded per "
        "request. Once with the embedded coordination (SQLite store in a scratch folder) and once with `[events] "
        "redis_url` (Redis store, and Redis locks, breakers and events in every case) on a redis-server started "
        "for the run on a free 127.0.0.1 port (no persistence). The calls alone are interleaved in blocks of 50 "
        f"calls, the requests of each coordination in blocks of {REQUEST_BLOCK}, up to {budget.caller_rounds:,} "
        f"calls per case and {budget.caller_seconds:g} s for the section. p50 and p90 of single calls, in µs. What "
        "a mechanism adds is the difference of two cases' medians (tails do not subtract, so those rows have no "
        "p90).",
    )
    warmup = max(20, budget.caller_rounds // 25)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        server = stack.enter_context(running_redis_server(folder))
        if server.url is None:
            print(f"  Redis figures skipped: {server.unavailable}", flush=True)
        reply = canned_reply(folder / "reply")
        gateways = {"embedded": Gateways(folder / "embedded", reply, None, stack)}
        if server.url is not None:
            gateways["redis"] = Gateways(folder / "redis", reply, server.url, stack)
        body = gateways["embedded"].check()
        if "redis" in gateways:
            gateways["redis"].check()
        app = gateways["embedded"].callers
        settings = app.config["GATEWAY_SETTINGS"]
        response = StoredResponse(200, (("Content-Type", "application/json"),), body)
        lifetimes = {"lease_seconds": settings.request_timeout + LEASE_MARGIN_SECONDS,
                     "ttl_seconds": settings.idempotency_ttl_seconds}
        sqlite_store = SqliteIdempotencyStore(folder / "store" / "idempotency.sqlite3")
        stack.callback(sqlite_store.close)
        stores = {"embedded": StoreCalls(sqlite_store, response, **lifetimes)}
        redis_client = None
        if server.url is not None:
            redis_store = RedisIdempotencyStore(server.url, prefix="bench:idempotency:")
            stack.callback(redis_store.close)
            stores["redis"] = StoreCalls(redis_store, response, **lifetimes)
            redis_client = redis.Redis.from_url(server.url)
            stack.callback(redis_client.close)
        sandbox_auth = authenticator(folder / "auth-sandbox", 0)
        many_auth = authenticator(folder / "auth-50", EXTRA_CALLERS)
        found = (configured_keys(sandbox_auth), configured_keys(many_auth))
        if found != (SANDBOX_KEYS, 50):
            raise RuntimeError(f"expected {SANDBOX_KEYS} and 50 keys, found {found[0]} and {found[1]}")
        if many_auth.caller_for(DEMO_KEY) is None or many_auth.caller_for(UNKNOWN_KEY) is not None:
            raise RuntimeError("caller_for does not tell the demo key from an unknown one")
        parts = part_cases(sandbox_auth, many_auth, stores, folder, redis_client)
        with request_context(app):
            authenticate()
            if current_caller().name != "demo" or read_key() is None:
                raise RuntimeError("the request context is not the demo caller's with an Idempotency-Key")
            print(f"  {len(parts)} calls alone, interleaved ...", flush=True)
            timings = time_cases_interleaved({case.key: case.call for case in parts}, rounds=budget.caller_rounds,
                                             seconds=budget.caller_seconds * PARTS_SHARE, warmup_rounds=warmup)
        for name, found in gateways.items():
            print(f"  {len(REQUEST_CASES)} requests ({name}), interleaved ...", flush=True)
            timings.update(time_cases_interleaved(
                {case.key: case.call for case in request_cases(name, found)}, rounds=budget.caller_rounds,
                seconds=budget.caller_seconds * (1 - PARTS_SHARE) / len(gateways), warmup_rounds=warmup,
                block=REQUEST_BLOCK))

    alone = section.table("the calls alone (µs per call)", ["call", "p50", "p90", "calls"])
    for case in parts:
        p50, p90 = record(section, case.key, timings[case.key])
        alone.add(case.label, microseconds(p50), microseconds(p90), len(timings[case.key]))
    for name in stores:
        key = f"complete {name} p50 ns"
        section.figures[key] = (section.figures[f"begin complete {name} p50 ns"]
                                - section.figures[f"begin {name} p50 ns"])
        alone.add(f"{STORES[name]} store: `complete` (begin + complete minus begin alone)",
                  microseconds(section.figures[key]), "", "")
        key = f"attempt {name} p50 ns"
        section.figures[key] = (section.figures[f"begin attempt complete {name} p50 ns"]
                                - section.figures[f"begin complete {name} p50 ns"])
        alone.add(f"{STORES[name]} store: `attempt` (begin + attempt + complete minus begin + complete)",
                  microseconds(section.figures[key]), "", "")
    figures = section.figures
    per_key = (figures["caller_for 50 p50 ns"] - figures[f"caller_for {SANDBOX_KEYS} p50 ns"]) / EXTRA_CALLERS
    figures["caller_for per key p50 ns"] = per_key
    alone.add(f"`caller_for`: each configured key more (50 keys minus {SANDBOX_KEYS}, per key)",
              f"{per_key / 1000:.2f}", "", "")

    whole = section.table(f"PATCH {URL} through the test client, the backend answering from memory (µs per request)",
                          ["coordination (store)", "case", "p50", "p90", "requests"])
    for name in gateways:
        shown = f"{name} ({STORES[name]})"
        for key, label in REQUEST_CASES.items():
            found = timings[f"{key} {name}"]
            p50, p90 = record(section, f"{key} {name}", found)
            whole.add(shown, label, microseconds(p50), microseconds(p90), len(found))
        for key, (label, minuend, subtrahend) in REQUEST_DIFFERENCES.items():
            p50 = section.figures[f"{minuend} {name} p50 ns"] - section.figures[f"{subtrahend} {name} p50 ns"]
            section.figures[f"{key} {name} p50 ns"] = p50
            whole.add(shown, label, microseconds(p50), "", "")
    split = section.table("(e) taken apart: per request, the time inside the store's `begin` + `attempt` + "
                          "`complete` and the rest (µs)", ["coordination (store)", "part", "p50", "p90", "requests"])
    for name, found in gateways.items():
        shown = f"{name} ({STORES[name]})"
        timed = timings[f"keyed timed {name}"]
        # the warm-up requests were recorded too: the timed ones are the last
        stored = found.store_nanoseconds[-len(timed):]
        rest = [total - inside for total, inside in zip(timed, stored, strict=True)]
        for key, label, values in (("store within", "inside `begin` + `attempt` + `complete`", stored),
                                   ("rest of timed", "the rest of the request", rest)):
            p50, p90 = record(section, f"{key} {name}", values)
            split.add(shown, label, microseconds(p50), microseconds(p90), len(values))
        p50 = section.figures[f"rest of timed {name} p50 ns"] - section.figures[f"keyed in memory {name} p50 ns"]
        section.figures[f"rest slower {name} p50 ns"] = p50
        split.add(shown, "the rest minus (d), the same request with the store in memory", microseconds(p50), "", "")

    if server.url is None:
        section.note(f"Redis figures were skipped: {server.unavailable}.")
    else:
        section.note(f"Redis: redis-server {server.version} on 127.0.0.1, one round trip (`PING`) "
                     f"{microseconds(section.figures['redis ping p50 ns'])} µs p50; `begin`, `attempt` and "
                     "`complete` are one Lua script (`EVALSHA`) each, so a fresh key whose call goes out costs three "
                     "round trips.")
    section.note(f"The stored reply of (b) is the gateway's own reply to the update, {len(body)} bytes. Each (b) "
                 "request claims a key never seen before, so the SQLite store grows by one row per request (a few "
                 "thousand rows in all).")
    judge_p50(section, SQLITE_TARGET, "both embedded", TOTAL_TARGET_NS)
    if "redis" in gateways:
        judge_p50(section, REDIS_TARGET, "both redis", TOTAL_TARGET_NS)
    return section


def main() -> None:
    """Run this section alone."""
    # A SIGTERM unwinds like Ctrl-C, so the redis-server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from bench.report import caller_misses_explained

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    section = run_caller_cost(budget)
    print(section.as_markdown())
    for text in caller_misses_explained(section):
        print(f"\n{text}")


if __name__ == "__main__":
    main()
