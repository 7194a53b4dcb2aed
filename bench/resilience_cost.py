"""Resilience cost: what the bulkhead, call lock, circuit breaker, retries and deadline add to each backend call.

In process and without contention (one thread, nothing else holding a lock): each mechanism timed alone around a
call that returns at once, then the whole guard, `Connection._guarded_call`, of the Ongoing connection (bulkhead,
call lock, breaker, retries, deadline) around a transport that answers from memory, against `Connection._call`
alone; once with the embedded coordination (lock files, SQLite) and once with Redis, on a redis-server started
for the run on a free 127.0.0.1 port and stopped at its end. Run alone: `python -m bench.resilience_cost
[--quick]`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import pybreaker
import redis

import sandbox
from bench.measure import Budget, Section, microseconds, percentile, time_cases_interleaved
from bench.servers import free_port
from bench.workload import CONNECTIONS, TYPICAL, parsed_config, rendered_request, sandbox_reply
from gateway.backends import BACKENDS
from gateway.canonical import UpdateOutcome
from gateway.canonical.schema import load_order_update
from gateway.config import load_settings
from gateway.connections import Connection, GuardedCall
from gateway.coordination import Coordination
from gateway.coordination.breakers import FallbackBreakerStorage
from gateway.deadlines import WATCHDOG, Deadline
from gateway.errors import BackendError
from gateway.transport import BackendReply, OutboundRequest

BACKEND = "ongoing"
MECHANISM_TARGET_NS = 100_000
GUARD_TARGET_NS = 300_000
BULKHEAD_TARGET = f"bulkhead acquire + release < {MECHANISM_TARGET_NS // 1000} µs p50"
LOCK_TARGET = f"call lock (file) held and released < {MECHANISM_TARGET_NS // 1000} µs p50"
BREAKER_TARGET = f"breaker call (SQLite) around a no-op < {MECHANISM_TARGET_NS // 1000} µs p50"
GUARD_TARGET = f"the whole guard (embedded) adds < {GUARD_TARGET_NS // 1000} µs p50 to an Ongoing call"
#: how long a fresh redis-server may take to answer PING
REDIS_STARTUP_SECONDS = 10.0
#: a free port can be taken by someone else before redis-server binds it; then try another
REDIS_START_ATTEMPTS = 3
#: the share of the section's seconds for the mechanisms and the guard; the rest goes to the file lock's parts
MAIN_SHARE = 0.8


def _return_at_once() -> None:
    return None


class MemoryTransport:
    """A transport that answers every request with one reply from memory.

    Under a deadline it does what HttpTransport.send does around its exchange: refuses a passed deadline and
    registers the call with the watchdog, cancelling the registration when the reply is in (unless told not to,
    to show what the registration costs within a call).
    """

    def __init__(self, *, registers_deadline: bool = True) -> None:
        self.reply: BackendReply | None = None
        self.registers_deadline = registers_deadline

    def send(self, request: OutboundRequest, deadline: Deadline | None = None) -> BackendReply:
        """The reply, registered with the watchdog for the call's deadline as a real exchange would be."""
        if self.reply is None:
            raise RuntimeError("MemoryTransport has no reply to give yet")
        if deadline is None or not self.registers_deadline:
            return self.reply
        if deadline.expired():
            raise RuntimeError(f"the call's deadline passed ({deadline.reason})")
        watch = WATCHDOG.call_at(deadline.at, _return_at_once)
        try:
            return self.reply
        finally:
            WATCHDOG.cancel(watch)

    def close(self) -> None:
        """Nothing to release."""


class AnsweringConnection(Connection):
    """A Connection whose backend call returns the same outcomes at once: `_attempts` is then tenacity's loop."""

    outcomes: list[UpdateOutcome | BackendError]

    def _call(self, call: GuardedCall, deadline: Deadline | None) -> list[UpdateOutcome | BackendError]:
        return self.outcomes


@dataclass
class RedisServer:
    """A throwaway redis-server, or why there is none."""

    url: str | None
    version: str = ""
    unavailable: str = ""


def answers_ping(url: str) -> bool:
    """Whether a Redis at `url` answers PING right now."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM a process we started and reap it (SIGKILL if it lingers)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def running_redis_server(folder: Path) -> Iterator[RedisServer]:
    """redis-server without persistence on a free 127.0.0.1 port, its files in `folder`; stopped on the way out."""
    executable = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if executable is None:
        yield RedisServer(None, unavailable="redis-server is not installed (apt-get install redis-server)")
        return
    log_file = folder / "redis.log"
    for _ in range(REDIS_START_ATTEMPTS):
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        # Its log goes to a file rather than a pipe that nobody reads and that could fill up and block it.
        process = subprocess.Popen(  # noqa: S603 - the installed redis-server with our own arguments
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--logfile", str(log_file)],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + REDIS_STARTUP_SECONDS
            while process.poll() is None and time.monotonic() < deadline and not answers_ping(url):
                time.sleep(0.05)
            if process.poll() is None and answers_ping(url):
                client = redis.Redis.from_url(url)
                try:
                    version = client.info("server")["redis_version"]
                finally:
                    client.close()
                yield RedisServer(url, version=version)
                return
        finally:
            stop_process(process)
    log = log_file.read_text(errors="replace")[-500:] if log_file.exists() else "(no log written)"
    yield RedisServer(None, unavailable=f"redis-server did not start after {REDIS_START_ATTEMPTS} attempts: {log}")


class Guarded:
    """The Ongoing connection built as the gateway builds it, on one coordination, with what the cases call."""

    def __init__(self, folder: Path, redis_url: str | None) -> None:
        raw = parsed_config("http://127.0.0.1:9", folder)
        if redis_url is not None:
            raw["events"]["redis_url"] = redis_url
        settings = load_settings(raw, str(folder / "gateway.toml"), BACKENDS)
        self.coordination = Coordination(settings)
        connection_settings = settings.connections[CONNECTIONS[BACKEND]]
        self.transport = MemoryTransport()
        self.unwatched_transport = MemoryTransport(registers_deadline=False)
        self.connection = Connection(connection_settings, BACKENDS[BACKEND], self.transport, self.coordination)
        # the same guard with a transport that skips the watchdog: what the registration costs within a call
        self.unwatched = Connection(connection_settings, BACKENDS[BACKEND], self.unwatched_transport,
                                    self.coordination)
        self.answering = AnsweringConnection(connection_settings, BACKENDS[BACKEND], self.transport,
                                             self.coordination)
        self.settings = connection_settings
        workload = TYPICAL[BACKEND]
        planned = self.connection.check(load_order_update(workload.order_id(0), workload.document()))
        self.operation, self.updates = planned.operation, [planned.update]
        self.long_deadline = Deadline.after(3600.0, "the benchmark's deadline")

    def answer_with(self, reply: BackendReply) -> None:
        """Give the transports their reply and check that the guarded call succeeds with it."""
        self.transport.reply = self.unwatched_transport.reply = reply
        outcomes = self.connection._guarded_call(self.operation, self.updates, None)
        if not all(isinstance(outcome, UpdateOutcome) for outcome in outcomes):
            raise RuntimeError(f"the canned reply is not a success: {outcomes}")
        self.answering.outcomes = outcomes

    def bulkhead(self) -> None:
        """The bulkhead's acquire (with the queue timeout) and release."""
        bulkhead = self.connection.bulkhead
        bulkhead.acquire(timeout=self.settings.queue_timeout)
        bulkhead.release()

    def hold_lock(self) -> None:
        """The call lock held for nothing: entered and exited."""
        with self.coordination.locks.hold(self.connection.lock_name, self.settings.lock_timeout):
            pass

    def breaker_call(self) -> None:
        """The breaker's call around a function that returns at once."""
        self.connection.breaker.call(_return_at_once)

    def retry_after(self) -> None:
        """The breaker's wait before a probe, as the health views and an open breaker's 503 read it (a call's guard
        no longer asks it: `BreakerGuard.admit` reads the state once)."""
        self.connection.breaker.retry_after()

    def retries(self) -> None:
        """`_attempts` (tenacity's Retrying as the connection sets it up) around a call that returns at once."""
        self.answering._attempts(self.guarded_call(), self.long_deadline)

    def direct(self) -> None:
        """`_call` alone: render, the transport (no deadline), reply classification, parse."""
        self.connection._call(self.guarded_call(), None)

    def guarded_call(self) -> GuardedCall:
        """The call as the guards hand it on."""
        return GuardedCall(self.operation, self.updates, None, self.operation.is_idempotent(self.updates))

    def guarded(self) -> None:
        """`_guarded_call`: the guards (breaker, bulkhead, call lock), deadline, retries, then `_call`."""
        self.connection._guarded_call(self.operation, self.updates, None)

    def guarded_unwatched(self) -> None:
        """`_guarded_call` whose transport does not register with the watchdog."""
        self.unwatched._guarded_call(self.operation, self.updates, None)

    def close(self) -> None:
        """Release the coordination's connections."""
        for connection in (self.connection, self.unwatched, self.answering):
            connection.close()
        self.coordination.close()


def register_with_watchdog() -> None:
    """What HttpTransport.send does with the watchdog per call: register the deadline, cancel it afterwards."""
    WATCHDOG.cancel(WATCHDOG.call_at(time.monotonic() + 30.0, _return_at_once))


@dataclass(frozen=True)
class Case:
    """One timed call: its figure key, what it is, which group of the report it belongs to."""

    key: str
    label: str
    call: Callable[[], Any]


def mechanism_cases(embedded: Guarded, shared: Guarded | None) -> list[Case]:
    """Each mechanism alone, with the embedded coordination and (when there is a Redis) with Redis."""
    cases = [
        Case("baseline", "the timing loop around a function that returns at once", _return_at_once),
        Case("bulkhead", "bulkhead: `BoundedSemaphore.acquire(timeout=queue_timeout)` + `release()`",
             embedded.bulkhead),
        Case("lock file", "call lock, file (`FileCallLocks.hold`, flock on a kept descriptor): entered and exited",
             embedded.hold_lock),
    ]
    if shared is not None:
        cases.append(Case("lock redis", "call lock, Redis (`RedisCallLocks.hold`, redis-py `Lock`): entered and "
                          "exited", shared.hold_lock))
    cases.append(Case("breaker sqlite", "breaker call around a no-op, SQLite storage", embedded.breaker_call))
    if shared is not None:
        cases.append(Case("breaker redis", "breaker call around a no-op, Redis storage (pybreaker's "
                          "`CircuitRedisStorage`)", shared.breaker_call))
    cases.append(Case("retry_after sqlite", "`breaker.retry_after()` (the health views' wait; not on a call's "
                      "path, where `BreakerGuard.admit` reads the state once), SQLite", embedded.retry_after))
    if shared is not None:
        cases.append(Case("retry_after redis", "`breaker.retry_after()`, Redis", shared.retry_after))
    cases += [
        Case("retries", "retries: tenacity `Retrying` as `_attempts` sets it up, around a call that returns at once",
             embedded.retries),
        Case("watchdog", "deadline: `WATCHDOG.call_at` + `cancel`, alone", register_with_watchdog),
    ]
    return cases


#: the whole-guard cases of one coordination, by the key suffix of their figures
GUARD_CASES = {
    "direct": "`Connection._call` alone (render, transport from memory, parse)",
    "guarded": "`Connection._guarded_call` (all of the guard, then `_call`)",
    "unwatched": "`_guarded_call`, the transport not registering with the watchdog",
    "locked": "`Connection._call`, then the call lock held and released (no other guard)",
}
#: figures derived per coordination, by key: what they show, and the two cases whose p50s they subtract
GUARD_DIFFERENCES = {
    "guard": ("what the guard adds (guarded minus alone)", "guarded", "direct"),
    "watchdog in call": ("what the watchdog registration adds within the guarded call (guarded minus guarded "
                         "without it)", "guarded", "unwatched"),
    "lock after call": ("the call lock held right after a `_call` (that case minus `_call` alone)", "locked",
                        "direct"),
}


def guard_cases(name: str, guarded: Guarded) -> list[Case]:
    """The Ongoing call alone, guarded, guarded without the watchdog registration, and followed by the lock."""
    def call_then_lock() -> None:
        guarded.direct()
        guarded.hold_lock()

    calls = {"direct": guarded.direct, "guarded": guarded.guarded, "unwatched": guarded.guarded_unwatched,
             "locked": call_then_lock}
    return [Case(f"{key} {name}", label, calls[key]) for key, label in GUARD_CASES.items()]


def file_lock_parts(folder: Path) -> list[Case]:
    """The file lock taken apart: filelock's object, its acquire and release, and the system calls alone."""
    path = folder / "parts.lock"

    def new_lock() -> filelock.FileLock:
        return filelock.FileLock(path, timeout=10.0, thread_local=False, is_singleton=False)

    kept = new_lock()

    def acquire_and_release() -> None:
        kept.acquire(poll_interval=0.005)
        kept.release()

    def system_calls() -> None:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    return [
        Case("filelock new", "`filelock.FileLock(...)`: a new lock object (what the gateway used before, for "
             "comparison)",
             new_lock),
        Case("filelock acquire release", "`acquire()` + `release()` of a kept FileLock", acquire_and_release),
        Case("flock system calls", "the system calls alone: `open`, `flock(LOCK_EX)`, `flock(LOCK_UN)`, `close`",
             system_calls),
    ]


@contextlib.contextmanager
def recording_calls(owner: Any, method: str, describe: Callable[..., str]) -> Iterator[list[str]]:
    """Record, by `describe(*arguments)`, every call of `owner.method` inside the block (one instance only)."""
    original = getattr(owner, method)
    seen: list[str] = []

    def recorded(*arguments: Any, **options: Any) -> Any:
        seen.append(describe(*arguments))
        return original(*arguments, **options)

    setattr(owner, method, recorded)
    try:
        yield seen
    finally:
        delattr(owner, method)


def _sql_verb(sql: str, *parameters: Any) -> str:
    return sql.split(None, 1)[0].upper()


def _redis_command(*arguments: Any) -> str:
    return str(arguments[0]).upper()


def operations_per_call(owner: Any, method: str, describe: Callable[..., str], call: Callable[[], Any],
                        calls: int) -> tuple[float, str]:
    """How many operations one call of `call` makes through `owner.method`, and which (those of its last call)."""
    call()
    with recording_calls(owner, method, describe) as seen:
        for _ in range(calls):
            before = len(seen)
            call()
    return len(seen) / calls, ", ".join(seen[before:])


def shared_breaker_storage(guarded: Guarded) -> pybreaker.CircuitBreakerStorage:
    """The breaker's shared state (SQLite or Redis) inside the process's fallback copy that the gateway wraps it in."""
    storage = guarded.connection.breaker._state_storage
    if not isinstance(storage, FallbackBreakerStorage):
        raise RuntimeError(f"the breaker's storage is a {type(storage).__name__}, not a FallbackBreakerStorage")
    return storage.shared


def storage_operations(embedded: Guarded, shared: Guarded | None) -> list[tuple[str, str, float, str]]:
    """Per successful call: the SQL statements and Redis round trips of the breaker and the Redis lock."""
    calls = 100
    # pybreaker keeps its storage as `_state_storage`, the gateway's FallbackBreakerStorage around the shared state
    # (`shared`); the SQLite storage runs every statement through `_execute`
    storage = shared_breaker_storage(embedded)
    found = [(label, "SQLite statements", *operations_per_call(storage, "_execute", _sql_verb, call, calls))
             for label, call in (("breaker call", embedded.breaker_call),
                                 ("`breaker.retry_after()`", embedded.retry_after))]
    if shared is not None:
        # pybreaker's CircuitRedisStorage keeps its client as `_redis`; every redis-py command is one round trip
        # through `execute_command` (a script's EVALSHA included: the commands it runs stay inside Redis)
        client = shared_breaker_storage(shared)._redis
        for label, owner, call in (("breaker call", client, shared.breaker_call),
                                   ("`breaker.retry_after()`", client, shared.retry_after),
                                   ("call lock held", shared.coordination.locks.client, shared.hold_lock)):
            found.append((label, "Redis round trips",
                          *operations_per_call(owner, "execute_command", _redis_command, call, calls)))
    return found


def judge_p50(section: Section, target: str, key: str, limit_ns: float) -> None:
    """Judge a p50 figure (nanoseconds) against its limit, with the p90 where there is one and the margin."""
    p50, p90 = section.figures[f"{key} p50 ns"], section.figures.get(f"{key} p90 ns")
    shown = f"{microseconds(p50)} µs p50" + (f" (p90 {microseconds(p90)} µs)" if p90 is not None else "")
    if p50 < limit_ns:
        detail = f"{shown}, {microseconds(limit_ns - p50)} µs under"
    else:
        detail = f"{shown}, {p50 / limit_ns:.1f}x the target, {microseconds(p50 - limit_ns)} µs over"
    section.judge(target, p50 < limit_ns, detail)


def record(section: Section, key: str, timings: Sequence[int]) -> tuple[float, float]:
    """Store a case's p50 and p90 (nanoseconds) as figures; return them."""
    p50, p90 = percentile(timings, 0.5), percentile(timings, 0.9)
    section.figures[f"{key} p50 ns"], section.figures[f"{key} p90 ns"] = p50, p90
    return p50, p90


def run_resilience_cost(budget: Budget) -> Section:
    """What each resilience mechanism adds per call without contention, alone and as the whole guard."""
    section = Section(
        "7. Resilience cost",
        "In process, one thread, no contention: nothing else holds a lock or fills the bulkhead, the breaker stays "
        "closed and every call succeeds at its first attempt. Each mechanism is timed alone around a function that "
        "returns at once, as the gateway configures it (the sandbox configuration's Ongoing connection, built as "
        "the gateway builds it); then the whole guard, `Connection._guarded_call`, around a transport that answers "
        "from memory (section 1's canned sandbox reply to the typical Ongoing update) and, like `HttpTransport.send`,"
        " registers each call's deadline with the watchdog, against `Connection._call` alone (no deadline, so no "
        "registration). Embedded coordination: lock files and the breaker's SQLite file in a scratch folder; Redis: "
        "a redis-server started for the run on a free 127.0.0.1 port (no persistence), shared by locks and "
        f"breakers. All cases interleaved in blocks of 50 calls, up to {budget.resilience_rounds:,} calls each and "
        f"{budget.resilience_seconds:g} s in all; p50 and p90 of single calls, in µs. What the guard adds is the "
        "difference of two cases' medians (tails do not subtract, so those rows have no p90).",
    )
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        folder = Path(scratch)
        with running_redis_server(folder) as server:
            if server.url is None:
                print(f"  Redis figures skipped: {server.unavailable}", flush=True)
            embedded_folder, shared_folder = folder / "embedded", folder / "redis"
            embedded_folder.mkdir()
            shared_folder.mkdir()
            embedded = Guarded(embedded_folder, None)
            shared = Guarded(shared_folder, server.url) if server.url is not None else None
            try:
                request = rendered_request(embedded.connection, TYPICAL[BACKEND])
                reply = sandbox_reply(sandbox.create_app().test_client(), embedded.connection, request)
                guards = {"embedded": embedded, **({"redis": shared} if shared is not None else {})}
                for guarded in guards.values():
                    guarded.answer_with(reply)
                mechanisms = mechanism_cases(embedded, shared)
                cases = mechanisms + [case for name, guarded in guards.items() for case in guard_cases(name, guarded)]
                parts = file_lock_parts(folder)
                print(f"  {len(cases)} cases, interleaved ...", flush=True)
                timings = time_cases_interleaved({case.key: case.call for case in cases},
                                                 rounds=budget.resilience_rounds,
                                                 seconds=budget.resilience_seconds * MAIN_SHARE)
                print("  the file lock's parts ...", flush=True)
                timings.update(time_cases_interleaved({case.key: case.call for case in parts},
                                                      rounds=budget.resilience_rounds,
                                                      seconds=budget.resilience_seconds * (1 - MAIN_SHARE)))
                operations = storage_operations(embedded, shared)
            finally:
                embedded.close()
                if shared is not None:
                    shared.close()

    table = section.table("each mechanism alone (µs per call)", ["mechanism", "p50", "p90", "calls"])
    for case in mechanisms:
        p50, p90 = record(section, case.key, timings[case.key])
        table.add(case.label, microseconds(p50), microseconds(p90), len(timings[case.key]))
    whole = section.table(f"the whole guard of the Ongoing connection {CONNECTIONS[BACKEND]} (µs per call)",
                          ["coordination", "case", "p50", "p90", "calls"])
    for name in guards:
        for key, label in GUARD_CASES.items():
            found = timings[f"{key} {name}"]
            p50, p90 = record(section, f"{key} {name}", found)
            whole.add(name, label, microseconds(p50), microseconds(p90), len(found))
        for key, (label, minuend, subtrahend) in GUARD_DIFFERENCES.items():
            p50 = section.figures[f"{minuend} {name} p50 ns"] - section.figures[f"{subtrahend} {name} p50 ns"]
            section.figures[f"{key} {name} p50 ns"] = p50
            whole.add(name, label, microseconds(p50), "", "")
    lock_parts = section.table("the file lock taken apart (µs per call)", ["part", "p50", "p90", "calls"])
    for case in parts:
        p50, p90 = record(section, case.key, timings[case.key])
        lock_parts.add(case.label, microseconds(p50), microseconds(p90), len(timings[case.key]))
    storage = section.table("what one successful call asks of the shared state (breaker closed, no failures)",
                            ["call", "operations", "per call", "which"])
    for label, kind, per_call, which in operations:
        storage.add(label, kind, f"{per_call:g}", which)
        section.figures[f"{label} {kind} per call"] = per_call

    if server.url is None:
        section.note(f"Redis figures were skipped: {server.unavailable}.")
    else:
        figures = section.figures
        # retry_after() is not on a call's path (the guard's admit() reads the state itself): not counted
        redis_trips = {label: (per_call, which) for label, kind, per_call, which in operations
                       if kind == "Redis round trips" and "retry_after" not in label}
        trips = sum(per_call for per_call, _ in redis_trips.values())
        listed = "; ".join(f"{label} {which}" for label, (_, which) in redis_trips.items())
        section.note(
            f"With Redis (redis-server {server.version} on 127.0.0.1) the guard adds "
            f"{microseconds(figures['guard redis p50 ns'])} µs p50 and makes {trips:g} round trips per call "
            f"({listed}); `breaker.retry_after()` alone, one round trip, takes "
            f"{microseconds(figures['retry_after redis p50 ns'])} µs. After a success the breaker resets the failure "
            "counter through the gateway's `FallbackBreakerStorage`, which reads it first and writes it only when it "
            "is not 0 already: with no failures a successful call writes nothing, to Redis or to SQLite.")
    judge_p50(section, BULKHEAD_TARGET, "bulkhead", MECHANISM_TARGET_NS)
    judge_p50(section, LOCK_TARGET, "lock file", MECHANISM_TARGET_NS)
    judge_p50(section, BREAKER_TARGET, "breaker sqlite", MECHANISM_TARGET_NS)
    judge_p50(section, GUARD_TARGET, "guard embedded", GUARD_TARGET_NS)
    return section


def main() -> None:
    """Run this section alone."""
    # A SIGTERM unwinds like Ctrl-C, so the redis-server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from bench.report import resilience_misses_explained

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    section = run_resilience_cost(budget)
    print(section.as_markdown())
    for text in resilience_misses_explained(section):
        print(f"\n{text}")


if __name__ == "__main__":
    main()
