"""One contract for what gateway processes share, run against both kinds: call locks (files, Redis) and circuit
breaker storage (SQLite, Redis), with pybreaker's state machine on top of each storage."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pybreaker
import pytest
import redis

from gateway.backends import BACKENDS
from gateway.config import StoreSettings, load_settings
from gateway.coordination import Coordination
from gateway.coordination.breakers import (
    BreakerFile,
    ConcurrentCircuitBreaker,
    FallbackBreakerStorage,
    SqliteBreakerStorage,
    redis_breaker_storage,
)
from gateway.coordination.locks import CallLocks, FileCallLocks, LockTimeout, LockUnavailable, RedisCallLocks

#: a Redis lock's expiry in these tests: longer than any block here holds it, short enough to wait for
REDIS_EXPIRY = 1.5
#: how much longer than its timeout a refused wait may take on a loaded machine
SLACK = 1.0
#: child processes start with a fresh interpreter, as a gunicorn worker or another machine would
SPAWN = multiprocessing.get_context("spawn")


# --- call locks --------------------------------------------------------------------------------------------


def open_locks(spec: tuple) -> CallLocks:
    """Call locks of the kind `spec` names: ("file", folder) or ("redis", url)."""
    kind, where = spec
    if kind == "file":
        return FileCallLocks(where)
    return RedisCallLocks(where, expiry=REDIS_EXPIRY)


@pytest.fixture(params=["file", "redis"])
def lock_spec(request, tmp_path) -> tuple:
    """Where the locks of each kind live, so that child processes can open the same ones."""
    if request.param == "file":
        return ("file", str(tmp_path / "locks"))
    return ("redis", request.getfixturevalue("redis_url"))


@pytest.fixture
def locks(lock_spec):
    """Call locks of each kind."""
    opened = open_locks(lock_spec)
    yield opened
    opened.close()


def try_hold(locks: CallLocks, name: str, timeout: float) -> tuple[bool, float]:
    """In another thread: whether `name` could be held within `timeout`, and how long that took to decide."""
    outcome: list[tuple[bool, float]] = []

    def attempt() -> None:
        started = time.monotonic()
        try:
            with locks.hold(name, timeout):
                outcome.append((True, time.monotonic() - started))
        except LockTimeout:
            outcome.append((False, time.monotonic() - started))

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(timeout=timeout + 10)
    return outcome[0]


def test_the_block_runs_while_the_lock_is_held_and_frees_it_after(locks):
    ran = []
    with locks.hold("ongoing:demo", 1.0):
        ran.append(True)
        got_it, _ = try_hold(locks, "ongoing:demo", 0.1)
        assert not got_it, "another holder got the lock while the block ran"
    assert ran == [True]
    got_it, _ = try_hold(locks, "ongoing:demo", 0.5)
    assert got_it, "the lock stayed taken after the block"


def test_a_second_holder_waits_and_gets_the_lock_after_its_release(locks):
    released_at: list[float] = []
    acquired_at: list[float] = []
    waiting = threading.Event()

    def second_holder() -> None:
        waiting.set()
        with locks.hold("ongoing:demo", 5.0):
            acquired_at.append(time.monotonic())

    with locks.hold("ongoing:demo", 1.0):
        thread = threading.Thread(target=second_holder)
        thread.start()
        waiting.wait(5)
        time.sleep(0.3)
        assert not acquired_at, "the second holder did not wait"
        released_at.append(time.monotonic())
    thread.join(timeout=10)
    assert acquired_at, "the second holder never got the lock"
    assert released_at[0] <= acquired_at[0] < released_at[0] + SLACK


def test_a_wait_beyond_the_timeout_raises_lock_timeout_promptly(locks):
    with locks.hold("ongoing:demo", 1.0):
        got_it, waited = try_hold(locks, "ongoing:demo", 0.3)
    assert not got_it
    # redis-py gives up when its next poll (every 5 ms) would end past the timeout, so a hair before it
    assert 0.3 - 0.01 <= waited < 0.3 + SLACK


def test_threads_of_one_process_wait_for_their_turn_without_polling_the_shared_lock(locks, lock_spec, monkeypatch):
    """Only the thread whose turn it is polls the file or Redis lock; the others wait on a threading lock."""
    polls = []
    if lock_spec[0] == "file":
        import gateway.coordination.locks as module

        flock = module.fcntl.flock
        monkeypatch.setattr(module.fcntl, "flock", lambda *arguments: (polls.append(1), flock(*arguments))[1])
    else:
        do_acquire = redis.lock.Lock.do_acquire
        monkeypatch.setattr(redis.lock.Lock, "do_acquire",
                            lambda self, token: (polls.append(1), do_acquire(self, token))[1])
    done = []

    def waiter() -> None:
        with locks.hold("ongoing:demo", 10.0):
            done.append(1)

    with locks.hold("ongoing:demo", 1.0):
        threads = [threading.Thread(target=waiter) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        polled_while_held = len(polls)
    for thread in threads:
        thread.join(timeout=20)
    assert len(done) == 8
    # one poller every 5 ms for 0.5 s is about 100 polls; eight pollers would be about 800
    assert polled_while_held < 250, polled_while_held


def test_different_names_do_not_block_each_other(locks):
    with locks.hold("ongoing:http://a/:DEMO", 1.0):
        got_it, waited = try_hold(locks, "ongoing:http://b/:DEMO", 1.0)
    assert got_it
    assert waited < 0.5


def increment_under_lock(spec: tuple, counter: str, times: int, start, record: str) -> None:
    """In a child process: `times` read-sleep-write increments of the counter file, each under the lock,
    noting when each hold began and ended."""
    locks = open_locks(spec)
    start.wait(30)
    holds = []
    for _ in range(times):
        with locks.hold("counter", 20.0):
            began = time.monotonic()
            value = int(Path(counter).read_text())
            time.sleep(0.002)  # wide open for a lost update, unless the lock excludes the other process
            Path(counter).write_text(str(value + 1))
            holds.append(f"{began} {time.monotonic()}")
    Path(record).write_text("\n".join(holds))
    locks.close()


def test_two_processes_exclude_each_other(lock_spec, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    times = 25
    start = SPAWN.Event()
    records = [tmp_path / f"holds-{n}" for n in range(2)]
    children = [SPAWN.Process(target=increment_under_lock, args=(lock_spec, str(counter), times, start, str(record)))
                for record in records]
    for child in children:
        child.start()
    time.sleep(0.5)  # both children import and wait on the start event, so their loops race from one moment
    start.set()
    for child in children:
        child.join(timeout=30)
    assert [child.exitcode for child in children] == [0, 0]
    assert int(counter.read_text()) == 2 * times
    first, second = ([tuple(map(float, line.split())) for line in record.read_text().splitlines()]
                     for record in records)
    assert all(end_a <= begin_b or end_b <= begin_a
               for begin_a, end_a in first for begin_b, end_b in second), "two holds overlapped in time"


def hold_until_killed(spec: tuple, name: str, holding) -> None:
    """In a child process: take the lock, say so, and keep it until the process is killed."""
    locks = open_locks(spec)
    with locks.hold(name, 5.0):
        holding.set()
        time.sleep(60)


def test_a_holder_that_dies_frees_the_lock(locks, lock_spec):
    holding = SPAWN.Event()
    child = SPAWN.Process(target=hold_until_killed, args=(lock_spec, "ongoing:demo", holding))
    child.start()
    try:
        assert holding.wait(30), "the child never took the lock"
        got_it, _ = try_hold(locks, "ongoing:demo", 0.2)
        assert not got_it, "the child's lock did not keep others out"
    finally:
        child.kill()  # SIGKILL: no finally block, no release
        child.join(timeout=10)
    # The operating system drops a dead process's file lock at once; a Redis lock lapses after its expiry.
    got_it, waited = try_hold(locks, "ongoing:demo", REDIS_EXPIRY + SLACK)
    assert got_it, "the dead holder's lock was never freed"
    if lock_spec[0] == "file":
        assert waited < 0.5


# --- circuit breaker storage -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def make_storage(request, tmp_path):
    """Opens breaker storage of each kind by breaker name; every object of one name is one shared state."""
    opened: list = []
    clients: list[redis.Redis] = []

    def make(name: str) -> pybreaker.CircuitBreakerStorage:
        if request.param == "sqlite":
            storage = SqliteBreakerStorage(tmp_path / "breakers.sqlite3", name)
            opened.append(storage)
            return storage
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        clients.append(client)
        return redis_breaker_storage(client, name)

    yield make
    for storage in opened:
        storage.close()
    for client in clients:
        client.close()


@pytest.fixture
def storage(make_storage):
    """The shared state of the breaker `ongoing-demo`."""
    return make_storage("ongoing-demo")


def test_a_new_breaker_is_closed_with_no_counts(storage):
    assert storage.state == pybreaker.STATE_CLOSED
    assert (storage.counter, storage.success_counter) == (0, 0)
    assert storage.opened_at is None


def test_counters_increment_and_reset(storage):
    for _ in range(3):
        storage.increment_counter()
    storage.increment_success_counter()
    assert (storage.counter, storage.success_counter) == (3, 1)
    storage.reset_counter()
    assert (storage.counter, storage.success_counter) == (0, 1)
    storage.reset_success_counter()
    assert (storage.counter, storage.success_counter) == (0, 0)
    storage.reset_counter()  # resetting what is already zero keeps it zero
    assert storage.counter == 0


@pytest.mark.parametrize("state", [pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN, pybreaker.STATE_CLOSED])
def test_the_state_round_trips(storage, state):
    storage.state = state
    assert storage.state == state


def test_the_opening_time_round_trips(storage):
    when = datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)
    storage.opened_at = when
    assert storage.opened_at == when


def test_the_opening_time_keeps_its_fraction_of_a_second(storage):
    # retry_after() and the reset timeout are measured from it; breaker_reset_seconds may be below one second.
    when = datetime(2026, 11, 23, 12, 0, 5, 750000, tzinfo=UTC)
    storage.opened_at = when
    assert storage.opened_at == when


def test_two_storage_objects_of_one_name_share_one_state(make_storage):
    first, second = make_storage("ongoing-demo"), make_storage("ongoing-demo")
    first.increment_counter()
    first.increment_counter()
    first.state = pybreaker.STATE_OPEN
    first.opened_at = datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)
    assert second.counter == 2
    assert second.state == pybreaker.STATE_OPEN
    assert second.opened_at == datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)
    second.reset_counter()
    assert first.counter == 0
    other = make_storage("speed4trade-demo")
    assert (other.state, other.counter) == (pybreaker.STATE_CLOSED, 0)


# --- the breaker over each storage -------------------------------------------------------------------------

#: both storages keep the opening time to the microsecond (see the test above), so a short reset is exact
RESET_SECONDS = 0.5
#: the longest a process goes on with its copy before it learns of another process's transition
REFRESH_SECONDS = FallbackBreakerStorage.REFRESH_SECONDS


class Unwell(Exception):
    """What the guarded call raises when the backend is unwell."""


def breaker_over(storage) -> ConcurrentCircuitBreaker:
    """A breaker as the gateway builds one: three failures open it, RESET_SECONDS later one probe goes through."""
    return ConcurrentCircuitBreaker(fail_max=3, reset_timeout=RESET_SECONDS, state_storage=storage,
                                    throw_new_error_on_trip=False)


def trip(breaker: ConcurrentCircuitBreaker) -> None:
    """Three failing calls."""
    def failing() -> None:
        raise Unwell

    for _ in range(3):
        with pytest.raises(Unwell):  # the guarded call's own error, also on the failure that trips it
            breaker.call(failing)


def test_the_breaker_opens_rejects_and_closes_after_one_good_probe(storage):
    breaker = breaker_over(storage)
    calls = []

    def succeeding() -> str:
        calls.append(time.monotonic())
        return "done"

    trip(breaker)
    assert breaker.current_state == pybreaker.STATE_OPEN
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(succeeding)
    assert calls == [], "an open breaker called the guarded function"
    wait = breaker.retry_after()
    assert wait is not None and 0 < wait <= RESET_SECONDS

    time.sleep(RESET_SECONDS + 0.1)
    assert breaker.retry_after() is None
    assert breaker.call(succeeding) == "done"
    assert len(calls) == 1
    assert breaker.current_state == pybreaker.STATE_CLOSED
    assert storage.counter == 0


def test_failures_below_the_threshold_keep_it_closed_and_a_success_resets_them(storage):
    breaker = breaker_over(storage)

    def failing() -> None:
        raise Unwell

    for _ in range(2):
        with pytest.raises(Unwell):
            breaker.call(failing)
    assert (breaker.current_state, storage.counter) == (pybreaker.STATE_CLOSED, 2)
    assert breaker.call(lambda: "done") == "done"
    assert storage.counter == 0
    with pytest.raises(Unwell):
        breaker.call(failing)
    assert breaker.current_state == pybreaker.STATE_CLOSED, "failures must be consecutive to open it"


def test_a_breaker_opened_by_one_process_rejects_in_another_within_the_refresh_interval(make_storage):
    here, elsewhere = breaker_over(make_storage("ongoing-demo")), breaker_over(make_storage("ongoing-demo"))
    assert here.call(lambda: "done") == "done"  # here's copy is fresh now
    trip(elsewhere)
    time.sleep(REFRESH_SECONDS)
    called = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        here.call(called.append, "sent")
    assert called == []
    assert here.current_state == pybreaker.STATE_OPEN
    assert here.retry_after() is not None and here.retry_after() > 0
    unrelated = breaker_over(make_storage("speed4trade-demo"))
    assert unrelated.call(lambda: "done") == "done"


def test_failures_in_two_processes_add_up_and_the_one_that_reaches_the_threshold_opens_it(make_storage):
    here, elsewhere = breaker_over(make_storage("ongoing-demo")), breaker_over(make_storage("ongoing-demo"))

    def failing() -> None:
        raise Unwell

    for breaker in (here, elsewhere, here):
        with pytest.raises(Unwell):
            breaker.call(failing)
    # the third failure, counted by `here`, reached fail_max (3): open at once there, and shared
    assert here.current_state == pybreaker.STATE_OPEN
    assert make_storage("ongoing-demo").state == pybreaker.STATE_OPEN
    time.sleep(REFRESH_SECONDS)
    with pytest.raises(pybreaker.CircuitBreakerError):
        elsewhere.call(lambda: "not sent")


def test_a_success_clears_the_failures_another_process_counted_once_it_has_read_them(make_storage):
    shared = make_storage("ongoing-demo")
    here, elsewhere = breaker_over(make_storage("ongoing-demo")), breaker_over(make_storage("ongoing-demo"))

    def failing() -> None:
        raise Unwell

    for _ in range(2):
        with pytest.raises(Unwell):
            elsewhere.call(failing)
    assert shared.counter == 2
    time.sleep(REFRESH_SECONDS)
    assert here.call(lambda: "done") == "done"
    assert shared.counter == 0, "a success did not clear the failures counted elsewhere"
    with pytest.raises(Unwell):
        elsewhere.call(failing)
    assert (elsewhere.current_state, shared.counter) == (pybreaker.STATE_CLOSED, 1)


def test_a_breaker_closed_by_a_probe_in_one_process_lets_calls_through_in_another(make_storage):
    shared = make_storage("ongoing-demo")
    shared.state = pybreaker.STATE_OPEN
    shared.opened_at = datetime.now(UTC)
    here, elsewhere = breaker_over(make_storage("ongoing-demo")), breaker_over(make_storage("ongoing-demo"))
    with pytest.raises(pybreaker.CircuitBreakerError):
        here.call(lambda: "not sent")
    time.sleep(RESET_SECONDS)
    assert elsewhere.call(lambda: "probed") == "probed"
    assert shared.state == pybreaker.STATE_CLOSED
    time.sleep(REFRESH_SECONDS)
    assert here.current_state == pybreaker.STATE_CLOSED
    assert [here.call(lambda: "done") for _ in range(3)] == ["done"] * 3


class CountingStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, counting every read and write of the shared state."""

    def __init__(self) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self.uses = 0

    def __getattribute__(self, name: str):
        if not name.startswith("_") and name not in ("uses", "name"):
            object.__setattr__(self, "uses", object.__getattribute__(self, "uses") + 1)
        return super().__getattribute__(name)


def test_calls_through_a_closed_breaker_read_the_shared_state_at_most_once_per_refresh_interval():
    shared = CountingStorage()
    breaker = ConcurrentCircuitBreaker(fail_max=3, reset_timeout=RESET_SECONDS, state_storage=shared)
    shared.uses = 0
    calls, started = 0, time.monotonic()
    while time.monotonic() - started < 3 * REFRESH_SECONDS:
        assert breaker.call(lambda: "done") == "done"
        calls += 1
    elapsed = time.monotonic() - started
    reads = elapsed / REFRESH_SECONDS + 1
    # one read of the whole state is four values of pybreaker's storage
    assert shared.uses <= 4 * reads, f"{shared.uses} uses of the shared state for {calls} calls"
    assert calls > 10 * reads

    def failing() -> None:
        raise Unwell

    shared.uses = 0
    with pytest.raises(Unwell):
        breaker.call(failing)
    assert shared.uses >= 1 and shared.counter == 1, "a failure was not counted in the shared state at once"


def test_while_a_probe_is_in_flight_other_calls_are_rejected(storage):
    # Opened long ago (by any process): the next call is the probe.
    storage.state = pybreaker.STATE_OPEN
    storage.opened_at = datetime.now(UTC) - timedelta(seconds=60)
    breaker = breaker_over(storage)
    probing, finish = threading.Event(), threading.Event()
    probe_result: list[str] = []

    def slow_probe() -> str:
        probing.set()
        assert finish.wait(10)
        return "probed"

    thread = threading.Thread(target=lambda: probe_result.append(breaker.call(slow_probe)))
    thread.start()
    try:
        assert probing.wait(10), "the probe was not let through"
        assert breaker.current_state == pybreaker.STATE_HALF_OPEN
        called = []
        with pytest.raises(pybreaker.CircuitBreakerError):
            breaker.call(called.append, "second")
        assert called == [], "a second call went through while the probe was deciding"
    finally:
        finish.set()
        thread.join(timeout=10)
    assert probe_result == ["probed"]
    assert breaker.current_state == pybreaker.STATE_CLOSED
    assert breaker.call(lambda: "done") == "done"


def test_a_failed_probe_opens_the_breaker_again(storage):
    storage.state = pybreaker.STATE_OPEN
    storage.opened_at = datetime.now(UTC) - timedelta(seconds=60)
    breaker = breaker_over(storage)

    def failing() -> None:
        raise Unwell

    with pytest.raises(Unwell):
        breaker.call(failing)
    assert breaker.current_state == pybreaker.STATE_OPEN
    assert breaker.retry_after() is not None
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: "done")


def test_calls_through_a_closed_breaker_run_in_parallel(storage):
    breaker = breaker_over(storage)
    callers = 10
    # Every call waits inside the breaker until all ten are inside: a breaker that serialized them never gets there.
    all_inside = threading.Barrier(callers, timeout=5)

    def call() -> str:
        all_inside.wait()
        time.sleep(0.2)
        return "done"

    started = time.monotonic()
    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(lambda _: breaker.call(call), range(callers)))
    assert results == ["done"] * callers
    assert time.monotonic() - started < 1.0
    assert breaker.current_state == pybreaker.STATE_CLOSED


# --- descriptors and failing stores --------------------------------------------------------------------------


def descriptors_of(prefix: Path) -> int:
    """How many of this process's descriptors are files whose path starts with `prefix`."""
    count = 0
    for descriptor in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:  # the listing's own descriptor, closed meanwhile
            continue
        count += target.startswith(str(prefix))
    return count


def test_breakers_of_many_connections_share_a_few_connections_whatever_the_threads(tmp_path):
    database = BreakerFile(tmp_path / "breakers.sqlite3")
    storages = [SqliteBreakerStorage(database, f"connection-{n}") for n in range(4)]
    start = threading.Barrier(48, timeout=10)

    def use(number: int) -> int:
        start.wait()
        storage = storages[number % len(storages)]
        storage.increment_counter()
        return storage.counter

    try:
        with ThreadPoolExecutor(48) as threads:
            assert all(count >= 1 for count in threads.map(use, range(48)))
        assert [storage.counter for storage in storages] == [12] * 4
        # each connection holds the file and its WAL; the shared memory is the process's, once
        assert descriptors_of(tmp_path / "breakers.sqlite3") <= 2 * StoreSettings().sqlite_pool_size + 1
    finally:
        database.close()
    assert descriptors_of(tmp_path / "breakers.sqlite3") == 0


def test_file_locks_keep_one_descriptor_per_name_whatever_the_threads(tmp_path):
    locks = FileCallLocks(tmp_path / "locks")
    held: list[int] = []

    def hold(_: int) -> None:
        with locks.hold("ongoing:demo", 10):
            held.append(1)

    try:
        with ThreadPoolExecutor(32) as threads:
            list(threads.map(hold, range(32)))
        assert len(held) == 32
        assert descriptors_of(tmp_path / "locks") == 1
    finally:
        locks.close()
    assert descriptors_of(tmp_path / "locks") == 0


def test_after_a_breaker_read_meets_a_frozen_redis_the_call_lock_fails_at_once():
    with socket.socket() as listener:  # accepts connections and never answers, as a stopped Redis does
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        config = {"gateway": {},
                  "connections": {"ongoing": {"backend": "ongoing", "url": "http://127.0.0.1:9/ongoing",
                                              "goods_owner_code": "DEMO", "username": "demo", "password": "pw"}},
                  "events": {"redis_url": f"redis://127.0.0.1:{listener.getsockname()[1]}/0"},
                  "stores": {"redis_socket_timeout": 0.3}}
        coordination = Coordination(load_settings(config, "<test>", BACKENDS))
        try:
            storage = coordination.breaker_storage("ongoing")
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                storage.state  # noqa: B018 - the read is the point
            assert 0.25 <= time.monotonic() - started < 0.3 + SLACK
            started = time.monotonic()
            with pytest.raises(LockUnavailable), coordination.locks.hold("ongoing:demo", 5):
                pass
            assert time.monotonic() - started < 0.1, "the lock waited for a Redis the breaker had found frozen"
        finally:
            coordination.close()
