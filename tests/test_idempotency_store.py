"""The idempotency store contract: SQLite and Redis stores behave alike, from threads and from processes."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from gateway.idempotency import (
    IN_PROGRESS,
    MISMATCH,
    NEW,
    OUTCOME_UNKNOWN,
    REPLAY,
    Attempt,
    Begun,
    IdempotencyStore,
    StoredResponse,
    open_idempotency_store,
)
from gateway.idempotency.redis_store import RedisIdempotencyStore
from gateway.idempotency.sqlite_store import SqliteIdempotencyStore
from tests.servers import closed_port
from tests.store_locations import StoreLocation, opened_stores, store_location

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "shop-frontend:5f0c2a9e-6a54-4f0b-a1c1-0d1e8c7b9a11"
FP_A = hashlib.sha256(b"POST /orders/1001/cancel {}").hexdigest()
FP_B = hashlib.sha256(b"POST /orders/1002/cancel {}").hexdigest()
LEASE = 30.0
TTL = 24 * 3600.0
#: real seconds for the tests of expiry, which Redis keeps on its own clock
SHORT = 0.3
#: long enough after SHORT for both kinds to have let the record go
PAST_SHORT = 0.45
RESPONSE = StoredResponse(201, (("Content-Type", "application/json"), ("Location", "/orders/1001")),
                          b'{"status": "cancelled"}')
OTHER_RESPONSE = StoredResponse(200, (("Content-Type", "text/plain"),), b"other")
# Fractions of a second on purpose: the SQLite store must compare exactly the times it was given.
T0 = 1_714_557_600.123456
#: calls noted on a key before they were sent: one that may be repeated, one that must not be
UPDATE_ORDER = Attempt("exc_0a1b", "ongoing-demo", "UpdateOrder", ("SO-1001",), True, "req-1")
UPDATE_STATUS = Attempt("exc_2c3d", "speed4trade-demo", "updateOrderStatus", ("10005", "10009"), False, "req-1")
#: a record's life after a call was noted, in the tests of expiry: past SHORT's lease, and long enough to see it
NOTED_LIFE = 1.2


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path) -> StoreLocation:
    """A fresh place for a store: a file in a folder that does not exist yet, or an unused Redis prefix."""
    return store_location(request, tmp_path, "idempotency.sqlite3", (SqliteIdempotencyStore, RedisIdempotencyStore),
                          redis_fixture="redis_url", prefix_tail="idempotency:")


@pytest.fixture
def open_store(location):
    """Opens store instances on the test's data and closes them all afterwards."""
    yield from opened_stores(location)


@pytest.fixture
def store(open_store) -> IdempotencyStore:
    """A store on fresh records."""
    return open_store()


def begin(store: IdempotencyStore, fingerprint: str = FP_A, *, key: str = KEY, lease_seconds: float = LEASE,
          now: float | None = None) -> Begun:
    """begin() with the defaults most tests want."""
    return store.begin(key, fingerprint, lease_seconds=lease_seconds, now=now)


def completed(store: IdempotencyStore, response: StoredResponse = RESPONSE, fingerprint: str = FP_A, *,
              key: str = KEY, ttl_seconds: float = TTL) -> None:
    """Begin and complete a request on the key."""
    assert begin(store, fingerprint, key=key) == Begun(NEW)
    store.complete(key, fingerprint, response, ttl_seconds=ttl_seconds)


# --- the transitions ----------------------------------------------------------------------------------------------

def test_a_fresh_key_is_new_and_then_in_progress_for_the_same_request(store):
    assert begin(store) == Begun(NEW)

    assert begin(store) == Begun(IN_PROGRESS)
    assert begin(store) == Begun(IN_PROGRESS)


def test_another_request_on_an_in_progress_key_is_a_mismatch_and_changes_nothing(store):
    begin(store, FP_A)

    assert begin(store, FP_B) == Begun(MISMATCH)
    assert begin(store, FP_A) == Begun(IN_PROGRESS)


def test_a_completed_request_is_replayed_to_the_same_request_every_time(store):
    completed(store)

    assert begin(store) == Begun(REPLAY, RESPONSE)
    assert begin(store) == Begun(REPLAY, RESPONSE)


def test_another_request_on_a_completed_key_is_a_mismatch_and_changes_nothing(store):
    completed(store)

    assert begin(store, FP_B) == Begun(MISMATCH)
    assert begin(store, FP_A) == Begun(REPLAY, RESPONSE)


def test_keys_are_independent_however_alike_they_look(store):
    # Callers' names are joined to the client's key, so keys that share a beginning must not collide.
    keys = ["shop:abc", "shop:abc:1", "shop:ab", "shop-2:abc", "Shop:abc", "shop:abc "]
    for number, key in enumerate(keys):
        completed(store, StoredResponse(200, (), str(number).encode()), key=key)

    assert [begin(store, key=key).response.body for key in keys] == [str(n).encode() for n in range(len(keys))]


def test_a_long_non_ascii_key_is_kept_exactly(store):
    key = "caller-with-a-long-name:" + "ключ✓-" * 46  # about 300 characters
    assert len(key) >= 300
    completed(store, key=key)

    assert begin(store, key=key) == Begun(REPLAY, RESPONSE)
    assert begin(store, key=key[:-1]) == Begun(NEW)


@pytest.mark.parametrize("response", [
    StoredResponse(200, (("Content-Type", "application/octet-stream"),), os.urandom(1024 * 1024)),
    StoredResponse(503, (("Retry-After", "120"), ("Content-Type", "application/problem+json"),
                         ("Link", "</a>; rel=a"), ("Link", "</b>; rel=b"), ("X-Note", "åäö ✓ \u00a0")),
                   b'{"title": "unavailable"}\r\n'),
    StoredResponse(204, (), b""),
    StoredResponse(422, (("content-type", "text/plain; charset=utf-8"),), b"\x00\xff\x00trailing NUL\x00"),
], ids=["1MB-binary", "headers-in-order", "empty", "nul-bytes"])
def test_the_replayed_response_is_byte_for_byte_the_stored_one(store, response):
    completed(store, response)

    replayed = begin(store)

    assert replayed.state == REPLAY
    assert replayed.response.status == response.status
    assert replayed.response.headers == response.headers
    assert type(replayed.response.body) is bytes
    assert replayed.response.body == response.body


def test_a_replay_comes_from_another_store_instance_too(open_store):
    completed(open_store())

    other = open_store()

    assert begin(other) == Begun(REPLAY, RESPONSE)
    assert begin(other, FP_B) == Begun(MISMATCH)


# --- complete and abandon -----------------------------------------------------------------------------------------

def test_complete_with_a_foreign_fingerprint_does_nothing(store):
    begin(store, FP_A)

    store.complete(KEY, FP_B, OTHER_RESPONSE, ttl_seconds=TTL)

    assert begin(store, FP_A) == Begun(IN_PROGRESS)
    assert begin(store, FP_B) == Begun(MISMATCH)
    store.complete(KEY, FP_A, RESPONSE, ttl_seconds=TTL)
    assert begin(store, FP_A) == Begun(REPLAY, RESPONSE)


def test_complete_of_a_key_nobody_began_does_nothing(store):
    store.complete(KEY, FP_A, RESPONSE, ttl_seconds=TTL)

    assert begin(store) == Begun(NEW)


def test_completing_again_keeps_the_first_response(store):
    completed(store)

    store.complete(KEY, FP_A, OTHER_RESPONSE, ttl_seconds=TTL)

    assert begin(store) == Begun(REPLAY, RESPONSE)


def test_abandon_frees_the_key_for_any_request(store):
    begin(store, FP_A)

    store.abandon(KEY, FP_A)

    assert begin(store, FP_B) == Begun(NEW)
    assert begin(store, FP_A) == Begun(MISMATCH)


def test_abandon_with_a_foreign_fingerprint_does_nothing(store):
    begin(store, FP_A)

    store.abandon(KEY, FP_B)

    assert begin(store, FP_A) == Begun(IN_PROGRESS)


def test_abandon_never_deletes_a_completed_record(store):
    completed(store)

    store.abandon(KEY, FP_A)
    store.abandon(KEY, FP_B)

    assert begin(store) == Begun(REPLAY, RESPONSE)


def test_abandon_of_a_key_nobody_began_does_nothing(store):
    store.abandon(KEY, FP_A)

    assert begin(store) == Begun(NEW)


# --- calls noted before they are sent -----------------------------------------------------------------------------

def test_a_noted_call_keeps_the_key_in_progress_while_its_lease_runs(store):
    begin(store)

    assert store.attempt(KEY, FP_A, UPDATE_STATUS, ttl_seconds=TTL) is True

    assert begin(store) == Begun(IN_PROGRESS)
    assert begin(store, FP_B) == Begun(MISMATCH)


def test_a_call_is_noted_only_on_the_live_marker_of_its_own_request(store):
    assert store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=TTL) is False  # nobody began the key
    begin(store, FP_A)
    assert store.attempt(KEY, FP_B, UPDATE_ORDER, ttl_seconds=TTL) is False
    completed(store, key="done")
    assert store.attempt("done", FP_A, UPDATE_ORDER, ttl_seconds=TTL) is False
    begin(store, key="lapsed", lease_seconds=SHORT)
    time.sleep(PAST_SHORT)
    assert store.attempt("lapsed", FP_A, UPDATE_STATUS, ttl_seconds=TTL) is False

    store.abandon(KEY, FP_A)  # nothing was noted on it: it can still be freed
    assert begin(store, FP_B) == Begun(NEW)
    assert begin(store, key="done") == Begun(REPLAY, RESPONSE)
    assert begin(store, key="lapsed") == Begun(NEW)


def test_a_key_with_a_noted_call_is_never_abandoned(store):
    begin(store)
    store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=TTL)

    store.abandon(KEY, FP_A)

    assert begin(store) == Begun(IN_PROGRESS)


def test_after_the_lease_the_calls_of_a_request_that_may_be_repeated_let_it_be_sent_again(store):
    begin(store, lease_seconds=SHORT)
    store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=TTL)
    store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=TTL)

    time.sleep(PAST_SHORT)

    assert begin(store, FP_B) == Begun(MISMATCH)  # the key was used: it stays this request's
    assert begin(store) == Begun(NEW)
    assert begin(store) == Begun(IN_PROGRESS)
    store.complete(KEY, FP_A, RESPONSE, ttl_seconds=TTL)
    assert begin(store) == Begun(REPLAY, RESPONSE)


def test_after_the_lease_a_call_that_must_not_be_repeated_makes_the_outcome_unknown_until_the_records_life_ends(
        store):
    begin(store, lease_seconds=SHORT)
    store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=NOTED_LIFE)
    store.attempt(KEY, FP_A, UPDATE_STATUS, ttl_seconds=NOTED_LIFE)
    assert begin(store) == Begun(IN_PROGRESS)

    time.sleep(PAST_SHORT)

    unknown = Begun(OUTCOME_UNKNOWN, attempts=(UPDATE_ORDER, UPDATE_STATUS))
    assert begin(store) == unknown
    assert begin(store) == unknown  # asking does not take the key
    assert begin(store, FP_B) == Begun(MISMATCH)
    store.abandon(KEY, FP_A)
    assert begin(store) == unknown

    time.sleep(NOTED_LIFE)

    assert begin(store, FP_B) == Begun(NEW)


def test_a_request_taking_a_key_over_starts_with_no_calls_noted(store):
    begin(store, lease_seconds=SHORT)
    store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=TTL)
    time.sleep(PAST_SHORT)
    assert begin(store, lease_seconds=SHORT) == Begun(NEW)

    time.sleep(PAST_SHORT)  # the second holder died too, before any call

    assert begin(store) == Begun(NEW)
    store.abandon(KEY, FP_A)
    assert begin(store, FP_B) == Begun(NEW)


def test_a_late_reply_is_kept_for_a_noted_call_whose_lease_ran_out(store):
    begin(store, lease_seconds=SHORT)
    store.attempt(KEY, FP_A, UPDATE_STATUS, ttl_seconds=TTL)
    time.sleep(PAST_SHORT)

    store.complete(KEY, FP_A, RESPONSE, ttl_seconds=TTL)

    assert begin(store) == Begun(REPLAY, RESPONSE)
    assert store.attempt(KEY, FP_A, UPDATE_STATUS, ttl_seconds=TTL) is False


def test_noted_calls_come_back_exactly_from_another_store_instance(open_store):
    odd = Attempt("exc_" + "f" * 32, "shop ✓ \"quoted\"\n", "updateOrderStatus", tuple(f"{n}\n" for n in range(50)),
                  False, "")
    first = open_store()
    begin(first, lease_seconds=SHORT)
    first.attempt(KEY, FP_A, odd, ttl_seconds=TTL)

    time.sleep(PAST_SHORT)

    assert begin(open_store()) == Begun(OUTCOME_UNKNOWN, attempts=(odd,))


# --- expiry, in real time -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fingerprint", [FP_A, FP_B], ids=["same-request", "another-request"])
def test_an_expired_completed_record_lets_the_key_be_used_afresh(store, fingerprint):
    completed(store, ttl_seconds=SHORT)
    assert begin(store) == Begun(REPLAY, RESPONSE)

    time.sleep(PAST_SHORT)

    assert begin(store, fingerprint) == Begun(NEW)
    assert begin(store, fingerprint) == Begun(IN_PROGRESS)


def test_an_expired_lease_is_taken_over_by_the_same_request(store):
    assert begin(store, lease_seconds=SHORT) == Begun(NEW)
    assert begin(store) == Begun(IN_PROGRESS)

    time.sleep(PAST_SHORT)

    assert begin(store) == Begun(NEW)
    assert begin(store) == Begun(IN_PROGRESS)


def test_an_expired_lease_is_taken_over_by_another_request_and_the_first_one_cannot_complete(store):
    assert begin(store, FP_A, lease_seconds=SHORT) == Begun(NEW)
    assert begin(store, FP_B) == Begun(MISMATCH)

    time.sleep(PAST_SHORT)

    assert begin(store, FP_B) == Begun(NEW)
    store.complete(KEY, FP_A, OTHER_RESPONSE, ttl_seconds=TTL)  # the crashed request wakes up too late
    store.abandon(KEY, FP_A)
    assert begin(store, FP_B) == Begun(IN_PROGRESS)
    store.complete(KEY, FP_B, RESPONSE, ttl_seconds=TTL)
    assert begin(store, FP_B) == Begun(REPLAY, RESPONSE)
    assert begin(store, FP_A) == Begun(MISMATCH)


def test_a_marker_whose_lease_ran_out_is_not_completed(store):
    begin(store, lease_seconds=SHORT)

    time.sleep(PAST_SHORT)
    store.complete(KEY, FP_A, RESPONSE, ttl_seconds=TTL)

    assert begin(store) == Begun(NEW)


def test_complete_gives_the_record_its_own_lifetime_rather_than_the_lease(store):
    begin(store, lease_seconds=SHORT)
    store.complete(KEY, FP_A, RESPONSE, ttl_seconds=TTL)

    time.sleep(PAST_SHORT)

    assert begin(store) == Begun(REPLAY, RESPONSE)


def test_purge_expired_deletes_the_expired_sqlite_rows_and_redis_needs_none(store, location):
    begin(store, key="lease-over", lease_seconds=SHORT)
    completed(store, key="life-over", ttl_seconds=SHORT)
    begin(store, key="in-progress")
    completed(store, key="completed")

    time.sleep(PAST_SHORT)
    purged = store.purge_expired()

    if location.kind == "sqlite":
        assert purged == 2
        with sqlite3.connect(location.target) as db:
            assert sorted(row[0] for row in db.execute("SELECT key FROM idempotency_keys")) == [
                "completed", "in-progress"]
        db.close()
        assert store.purge_expired() == 0
    else:
        assert purged == 0
        client = redis.Redis.from_url(location.target)
        try:
            assert sorted(client.scan_iter(match=location.prefix + "*")) == [
                f"{location.prefix}{key}".encode() for key in ("completed", "in-progress")]
        finally:
            client.close()
    assert begin(store, key="in-progress") == Begun(IN_PROGRESS)
    assert begin(store, key="completed") == Begun(REPLAY, RESPONSE)
    assert begin(store, key="lease-over") == Begun(NEW)
    assert begin(store, key="life-over") == Begun(NEW)


def test_purge_expired_takes_a_bounded_batch_the_longest_expired_first(store, location):
    for number, ttl in enumerate((SHORT, SHORT * 0.5, SHORT * 0.25), 1):
        completed(store, key=f"short-{number}", ttl_seconds=ttl)
    completed(store, key="kept")
    time.sleep(PAST_SHORT)

    if location.kind == "sqlite":
        assert store.purge_expired(limit=2) == 2
        with sqlite3.connect(location.target) as db:  # short-3 and short-2 expired first
            assert sorted(row[0] for row in db.execute("SELECT key FROM idempotency_keys")) == ["kept", "short-1"]
        db.close()
        assert store.purge_expired(limit=2) == 1
        assert store.purge_expired(limit=2) == 0
    else:  # Redis let them go by itself
        assert store.purge_expired(limit=2) == 0
    assert [begin(store, key=f"short-{number}") for number in (1, 2, 3)] == [Begun(NEW)] * 3
    assert begin(store, key="kept") == Begun(REPLAY, RESPONSE)


# --- concurrency --------------------------------------------------------------------------------------------------

def test_twenty_threads_beginning_one_fresh_key_at_once_get_one_new(store):
    threads, keys = 20, [f"race-{number}" for number in range(5)]
    start = threading.Barrier(threads)

    def race(_: int) -> list[str]:
        states = []
        for key in keys:
            start.wait()
            states.append(begin(store, key=key).state)
        return states

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(race, range(threads)))

    for index in range(len(keys)):
        states = sorted(result[index] for result in results)
        assert states == sorted([NEW] + [IN_PROGRESS] * (threads - 1))


RACER_PROCESS = """
import json, os, sys, time
from gateway.idempotency.redis_store import RedisIdempotencyStore
from gateway.idempotency.sqlite_store import SqliteIdempotencyStore

kind, target, prefix, name, keys, ready_dir, racers, fingerprint = sys.argv[1:]
store = SqliteIdempotencyStore(target) if kind == "sqlite" else RedisIdempotencyStore(target, prefix=prefix)
store.ping()
# Start together with the other racers, each with its store open, so that their begin() calls overlap.
open(os.path.join(ready_dir, name), "w").close()
deadline = time.monotonic() + 30
while len(os.listdir(ready_dir)) < int(racers) and time.monotonic() < deadline:
    time.sleep(0.001)
states = [store.begin(f"race-{index}", fingerprint, lease_seconds=60).state for index in range(int(keys))]
store.close()
print(json.dumps(states))
"""


def test_processes_racing_on_the_same_keys_get_one_new_each(location, store, tmp_path):
    racers, keys = 4, 40
    ready = tmp_path / "ready"
    ready.mkdir()
    processes = [subprocess.Popen(
        [sys.executable, "-c", RACER_PROCESS, location.kind, location.target, location.prefix, f"racer{number}",
         str(keys), str(ready), str(racers), FP_A],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for number in range(racers)]
    outputs = [process.communicate(timeout=60) for process in processes]

    assert [(process.returncode, err) for process, (_, err) in zip(processes, outputs, strict=True)] == [
        (0, "")] * racers
    results = [json.loads(out) for out, _ in outputs]
    for index in range(keys):
        assert sorted(result[index] for result in results) == sorted([NEW] + [IN_PROGRESS] * (racers - 1))
        assert begin(store, key=f"race-{index}") == Begun(IN_PROGRESS)


# --- reachability, arguments and configuration --------------------------------------------------------------------

def test_ping_answers_when_the_storage_is_there(store):
    store.ping()


def test_ping_of_a_redis_that_is_not_there_raises():
    store = RedisIdempotencyStore(f"redis://127.0.0.1:{closed_port()}/0")
    try:
        with pytest.raises(redis.ConnectionError):
            store.ping()
    finally:
        store.close()


def test_a_closed_sqlite_store_refuses_to_work(tmp_path):
    store = SqliteIdempotencyStore(tmp_path / "idempotency.sqlite3")
    store.close()

    with pytest.raises(RuntimeError, match="closed"):
        store.ping()


@pytest.mark.parametrize(("call", "problem"), [
    (lambda store: store.begin("", FP_A, lease_seconds=LEASE), "key"),
    (lambda store: store.begin(KEY, "", lease_seconds=LEASE), "fingerprint"),
    (lambda store: store.begin(KEY, FP_A, lease_seconds=0), "lease_seconds"),
    (lambda store: store.begin(KEY, FP_A, lease_seconds=float("nan")), "lease_seconds"),
    (lambda store: store.complete(KEY, FP_A, RESPONSE, ttl_seconds=-1), "ttl_seconds"),
    (lambda store: store.complete(KEY, FP_A, RESPONSE, ttl_seconds=float("inf")), "ttl_seconds"),
    (lambda store: store.abandon(None, FP_A), "key"),
    (lambda store: store.attempt(KEY, FP_A, UPDATE_ORDER, ttl_seconds=0), "ttl_seconds"),
    (lambda store: store.attempt(KEY, "", UPDATE_ORDER, ttl_seconds=TTL), "fingerprint"),
])
def test_unusable_arguments_are_refused_and_nothing_is_stored(store, call, problem):
    with pytest.raises(ValueError, match=problem):
        call(store)

    assert begin(store) == Begun(NEW)


def test_attempt_notes_attempts_only(store):
    begin(store)
    with pytest.raises(TypeError, match="Attempt"):
        store.attempt(KEY, FP_A, {"exchange_id": "exc_1"}, ttl_seconds=TTL)
    assert store.abandon(KEY, FP_A) is None
    assert begin(store, FP_B) == Begun(NEW)  # nothing was noted, so abandon() freed it


def test_an_attempt_refuses_what_it_could_not_give_back():
    assert Attempt("exc_1", "c", "op", ["1", "2"], True).order_ids == ("1", "2")
    with pytest.raises(ValueError, match="exchange id"):
        Attempt("", "c", "op", (), True)
    with pytest.raises(TypeError, match="order_ids"):
        Attempt("exc_1", "c", "op", "1001", True)
    with pytest.raises(TypeError, match="idempotent"):
        Attempt("exc_1", "c", "op", (), 1)
    with pytest.raises(TypeError, match="request_id"):
        Attempt("exc_1", "c", "op", (), True, None)


def test_a_stored_response_keeps_its_headers_as_tuples_and_refuses_what_it_cannot_replay():
    response = StoredResponse(200, [["Content-Type", "text/plain"], ("Retry-After", "5")], bytearray(b"ok"))

    assert response == StoredResponse(200, (("Content-Type", "text/plain"), ("Retry-After", "5")), b"ok")
    with pytest.raises(ValueError, match="status"):
        StoredResponse(99, (), b"")
    with pytest.raises(ValueError, match="status"):
        StoredResponse(True, (), b"")
    with pytest.raises(TypeError, match="pairs"):
        StoredResponse(200, ("Content-Type: text/plain",), b"")
    with pytest.raises(TypeError, match="pairs"):
        StoredResponse(200, (("Retry-After", 5),), b"")
    with pytest.raises(TypeError, match="body"):
        StoredResponse(200, (), "text")


def test_the_store_is_opened_in_redis_when_the_events_use_redis_and_beside_the_events_otherwise(tmp_path,
                                                                                                 redis_url):
    events = SimpleNamespace(database=tmp_path / "data" / "events.sqlite3", redis_url=None)
    store = open_idempotency_store(SimpleNamespace(events=events))
    try:
        assert isinstance(store, SqliteIdempotencyStore)
        assert store.path == tmp_path / "data" / "idempotency.sqlite3"
        store.ping()
    finally:
        store.close()

    store = open_idempotency_store(SimpleNamespace(events=SimpleNamespace(database=events.database,
                                                                          redis_url=redis_url)))
    try:
        assert isinstance(store, RedisIdempotencyStore)
        assert store.prefix == "gateway:idempotency:"
        store.ping()
    finally:
        store.close()


# --- what each kind keeps -----------------------------------------------------------------------------------------

def test_the_sqlite_store_uses_wal_and_indexes_the_expiry_time(tmp_path):
    path = tmp_path / "new-folder" / "idempotency.sqlite3"
    SqliteIdempotencyStore(path).close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'idempotency_keys'"
                             " AND sql IS NOT NULL").fetchall()
    db.close()
    assert [row[0] for row in indexes] == [
        "CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at)"]


def test_a_claim_and_its_noted_call_survive_the_crash_of_their_process(tmp_path):
    path = tmp_path / "idempotency.sqlite3"
    crash = "; ".join([
        "import os",
        "from gateway.idempotency import Attempt, SqliteIdempotencyStore",
        f"store = SqliteIdempotencyStore({str(path)!r})",
        f"assert store.begin({KEY!r}, {FP_A!r}, lease_seconds=30, now={T0!r}).state == 'new'",
        f"assert store.attempt({KEY!r}, {FP_A!r}, Attempt{tuple(vars(UPDATE_STATUS).values())!r}, ttl_seconds=60,"
        f" now={T0!r})",
        "os._exit(9)",  # no close, no clean-up: the process is gone
    ])
    assert subprocess.run([sys.executable, "-c", crash], cwd=REPO_ROOT, timeout=60).returncode == 9

    store = SqliteIdempotencyStore(path)
    try:
        assert begin(store, now=T0 + 29) == Begun(IN_PROGRESS)
        assert begin(store, now=T0 + 31) == Begun(OUTCOME_UNKNOWN, attempts=(UPDATE_STATUS,))
    finally:
        store.close()


def test_the_sqlite_store_syncs_the_note_of_a_call_to_disk_and_its_other_commits_not(tmp_path, monkeypatch):
    """A call's note must survive a power cut (else a retry could send the call again): it commits at
    `synchronous = FULL`; a claim and a kept reply commit at NORMAL, and the connection is NORMAL again after."""
    normal, full = 1, 2  # SQLite's numbers for the levels
    commits: list[int] = []

    class Recording(sqlite3.Connection):
        def execute(self, sql, *parameters):
            if sql == "COMMIT":
                commits.append(super().execute("PRAGMA synchronous").fetchone()[0])
            return super().execute(sql, *parameters)

    connect = sqlite3.connect
    monkeypatch.setattr("gateway.sqlite_file.sqlite3.connect",
                        lambda *arguments, **options: connect(*arguments, factory=Recording, **options))
    store = SqliteIdempotencyStore(tmp_path / "idempotency.sqlite3")
    try:
        commits.clear()
        assert begin(store, now=T0) == Begun(NEW)
        assert store.attempt(KEY, FP_A, UPDATE_STATUS, ttl_seconds=60, now=T0 + 1)
        store.complete(KEY, FP_A, RESPONSE, ttl_seconds=60, now=T0 + 2)
        assert begin(store, now=T0 + 3) == Begun(REPLAY, RESPONSE)
    finally:
        store.close()

    assert commits == [normal, full, normal, normal], commits  # claim, note, reply, replay


def test_the_sqlite_store_follows_the_clock_it_is_given(tmp_path):
    store = SqliteIdempotencyStore(tmp_path / "idempotency.sqlite3")
    try:
        assert begin(store, lease_seconds=10, now=T0) == Begun(NEW)
        assert begin(store, now=T0 + 9.999) == Begun(IN_PROGRESS)
        assert begin(store, FP_B, now=T0 + 10) == Begun(NEW)  # the lease ends at T0 + 10 exactly

        store.complete(KEY, FP_B, RESPONSE, ttl_seconds=60, now=T0 + 20)
        assert begin(store, FP_B, now=T0 + 79.999) == Begun(REPLAY, RESPONSE)
        assert store.purge_expired(now=T0 + 79.999) == 0
        assert store.purge_expired(now=T0 + 80) == 1
        assert begin(store, FP_A, now=T0 + 80) == Begun(NEW)

        assert begin(store, key="late", lease_seconds=5, now=T0) == Begun(NEW)
        store.complete("late", FP_A, RESPONSE, ttl_seconds=60, now=T0 + 5)  # the lease is over
        assert begin(store, key="late", now=T0 + 6) == Begun(NEW)

        assert begin(store, key="noted", lease_seconds=10, now=T0) == Begun(NEW)
        assert store.attempt("noted", FP_A, UPDATE_STATUS, ttl_seconds=100, now=T0 + 9.999) is True
        assert begin(store, key="noted", now=T0 + 9.999) == Begun(IN_PROGRESS)
        assert begin(store, key="noted", now=T0 + 10) == Begun(OUTCOME_UNKNOWN, attempts=(UPDATE_STATUS,))
        assert store.attempt("noted", FP_A, UPDATE_STATUS, ttl_seconds=100, now=T0 + 10) is False
        store.purge_expired(now=T0 + 109.998)  # noted at T0 + 9.999, kept for 100 s
        assert begin(store, key="noted", now=T0 + 109.998) == Begun(OUTCOME_UNKNOWN, attempts=(UPDATE_STATUS,))
        assert begin(store, key="noted", now=T0 + 109.999) == Begun(NEW)
    finally:
        store.close()


def test_an_sqlite_file_of_the_first_version_is_migrated_with_its_records(tmp_path):
    path = tmp_path / "idempotency.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('in-progress', 'completed')), expires_at REAL NOT NULL,
                status INTEGER, headers TEXT, body BLOB);
            CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
            PRAGMA user_version = 1;
        """)
        db.execute("INSERT INTO idempotency_keys VALUES (?, ?, 'in-progress', ?, NULL, NULL, NULL)",
                   (KEY, FP_A, T0 + 10))
        db.execute("INSERT INTO idempotency_keys VALUES ('done', ?, 'completed', ?, 201, ?, ?)",
                   (FP_A, T0 + 100, '[["Content-Type", "application/json"], ["Location", "/orders/1001"]]',
                    RESPONSE.body))
    db.close()
    store = SqliteIdempotencyStore(path)
    try:
        assert begin(store, key="done", now=T0 + 1) == Begun(REPLAY, RESPONSE)
        assert begin(store, now=T0 + 1) == Begun(IN_PROGRESS)
        assert store.attempt(KEY, FP_A, UPDATE_STATUS, ttl_seconds=100, now=T0 + 2) is True
        assert begin(store, now=T0 + 10) == Begun(OUTCOME_UNKNOWN, attempts=(UPDATE_STATUS,))
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.close()


def test_the_redis_store_keeps_one_expiring_hash_per_key_under_its_prefix(redis_url):
    prefix = f"test:{uuid.uuid4().hex}:idempotency:"
    store = RedisIdempotencyStore(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        begin(store, key="in-progress", lease_seconds=LEASE)
        completed(store, key="completed", ttl_seconds=TTL)

        assert sorted(client.scan_iter(match="*")) == [f"{prefix}completed".encode(), f"{prefix}in-progress".encode()]
        assert client.type(f"{prefix}completed") == b"hash"
        assert 0 < client.pttl(f"{prefix}in-progress") <= LEASE * 1000
        assert LEASE * 1000 < client.pttl(f"{prefix}completed") <= TTL * 1000

        begin(store, key="noted", lease_seconds=LEASE)
        store.attempt("noted", FP_A, UPDATE_ORDER, ttl_seconds=TTL)
        store.attempt("noted", FP_A, UPDATE_STATUS, ttl_seconds=TTL)
        assert LEASE * 1000 < client.pttl(f"{prefix}noted") <= TTL * 1000
        record = client.hgetall(f"{prefix}noted")
        assert record[b"idempotent"] == b"0"
        assert len(record[b"attempts"].splitlines()) == 2
        store.complete("noted", FP_A, RESPONSE, ttl_seconds=TTL)
        assert sorted(client.hkeys(f"{prefix}noted")) == [b"body", b"fingerprint", b"headers", b"state", b"status"]
    finally:
        client.close()
        store.close()
