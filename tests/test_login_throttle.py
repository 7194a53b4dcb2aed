"""Failed authentication is throttled per client address and per key prefix, on the API and the console's login:
one store contract run against SQLite and Redis, then both surfaces end to end with each store."""

from __future__ import annotations

import logging
import math
import multiprocessing
import re
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from gateway import throttle
from gateway.runtime import gateway_of
from gateway.stores import store_unavailable
from gateway.throttle import (
    KEY_PREFIX_CHARS,
    AuthFailureStore,
    RedisAuthFailureStore,
    SqliteAuthFailureStore,
    address_subject,
    key_prefix_subject,
)
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.servers import closed_port

ADDRESS = address_subject("192.0.2.10")
OTHER_ADDRESS = address_subject("192.0.2.11")
PREFIX = key_prefix_subject("guessed-key-000000001")
#: real seconds for the tests of expiry, which Redis keeps on its own clock
SHORT = 0.4
SPAWN = multiprocessing.get_context("spawn")

WRITER_KEY = "writer-key-for-throttle-01"
OPS_KEY = "ops-console-key-throttle-01"
SESSION_SECRET = "console-session-secret-for-throttle-01"
ALLOWED = 3


# --- the store contract ------------------------------------------------------------------------------------------

def open_failure_store(kind: str, where: str, prefix: str = "") -> AuthFailureStore:
    """A store of `kind` on the failures at `where` (a file, or a Redis URL with a key prefix)."""
    if kind == "sqlite":
        return SqliteAuthFailureStore(where)
    return RedisAuthFailureStore(where, prefix=prefix)


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path) -> tuple[str, str, str]:
    """Where a test's failures live: (kind, file or URL, Redis key prefix)."""
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "not-yet-created" / "auth-failures.sqlite3"), "")
    return ("redis", request.getfixturevalue("redis_url"), f"test:{uuid.uuid4().hex}:auth-failures:")


@pytest.fixture
def open_store(location):
    """Opens store instances on the test's failures and closes them afterwards."""
    opened: list[AuthFailureStore] = []

    def open_() -> AuthFailureStore:
        opened.append(open_failure_store(*location))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store) -> AuthFailureStore:
    """A store without failures."""
    return open_store()


def fail(store: AuthFailureStore, *subjects: str, allowed: int = ALLOWED, window: float = 300.0) -> float:
    return store.add_failure(list(subjects) or [ADDRESS], allowed=allowed, window_seconds=window)


def test_nothing_is_blocked_before_any_failure(store):
    assert store.blocked_for([ADDRESS, PREFIX], allowed=1) == 0


def test_the_allowed_failures_pass_and_then_the_subject_is_blocked_for_the_rest_of_its_window(store):
    assert [fail(store) for _ in range(ALLOWED - 1)] == [0] * (ALLOWED - 1)
    assert store.blocked_for([ADDRESS], allowed=ALLOWED) == 0

    left = fail(store)

    assert 299 < left <= 300
    assert 298 < store.blocked_for([ADDRESS], allowed=ALLOWED) <= left


def test_a_block_holds_wherever_its_subject_appears_and_nowhere_else(store):
    for _ in range(ALLOWED):
        fail(store, ADDRESS, PREFIX)

    assert store.blocked_for([OTHER_ADDRESS, PREFIX], allowed=ALLOWED) > 0
    assert store.blocked_for([ADDRESS], allowed=ALLOWED) > 0
    assert store.blocked_for([OTHER_ADDRESS, key_prefix_subject("another-key-0000000")], allowed=ALLOWED) == 0


def test_subjects_are_counted_apart_however_alike_they_look(store):
    alike = [address_subject("10.0.0.1"), address_subject("10.0.0.10"), address_subject("10.0.0.1 "),
             address_subject("::1"), address_subject("::10")]
    for _ in range(ALLOWED):
        fail(store, alike[0])

    assert [store.blocked_for([subject], allowed=ALLOWED) > 0 for subject in alike] == [True] + [False] * 4


def test_the_same_subject_twice_in_one_attempt_counts_once(store):
    for _ in range(ALLOWED - 1):
        fail(store, ADDRESS, ADDRESS)

    assert store.blocked_for([ADDRESS], allowed=ALLOWED) == 0


def test_a_window_ends_and_the_next_failure_opens_a_new_one(store):
    assert [fail(store, window=SHORT) > 0 for _ in range(ALLOWED)] == [False] * (ALLOWED - 1) + [True]
    time.sleep(SHORT + 0.15)

    assert store.blocked_for([ADDRESS], allowed=ALLOWED) == 0
    assert fail(store, window=SHORT) == 0  # the count started again at one
    store.purge_expired()
    assert store.blocked_for([ADDRESS], allowed=1) > 0


def test_failures_add_up_across_store_instances(open_store):
    first, second = open_store(), open_store()
    fail(first)
    fail(second)

    assert fail(first) > 0
    assert second.blocked_for([ADDRESS], allowed=ALLOWED) > 0


def test_concurrent_failures_are_each_counted(store):
    allowed = 40
    with ThreadPoolExecutor(max_workers=8) as pool:
        lefts = list(pool.map(lambda _: fail(store, allowed=allowed), range(allowed - 1)))

    assert lefts == [0] * (allowed - 1)
    assert store.blocked_for([ADDRESS], allowed=allowed) == 0
    assert fail(store, allowed=allowed) > 0


def _fail_in_a_child(location: tuple[str, str, str], times: int) -> None:
    store = open_failure_store(*location)
    try:
        for _ in range(times):
            store.add_failure([ADDRESS], allowed=1000, window_seconds=300)
    finally:
        store.close()


def test_processes_share_the_count(location, open_store):
    children = [SPAWN.Process(target=_fail_in_a_child, args=(location, 5)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0

    store = open_store()
    assert store.blocked_for([ADDRESS], allowed=10) > 0
    assert store.blocked_for([ADDRESS], allowed=11) == 0


@pytest.mark.parametrize("subjects", [[], "address:x", [""], [None]])
def test_subjects_must_be_a_list_of_names(store, subjects):
    with pytest.raises(ValueError, match="subjects"):
        store.add_failure(subjects, allowed=1, window_seconds=1)
    with pytest.raises(ValueError, match="subjects"):
        store.blocked_for(subjects, allowed=1)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_store_that_cannot_be_used_fails_as_a_store_failure(tmp_path, kind):
    if kind == "redis":
        store: AuthFailureStore = RedisAuthFailureStore(f"redis://127.0.0.1:{closed_port()}/0")
        expected: type[Exception] = redis.ConnectionError
    else:
        broken = tmp_path / "broken.sqlite3"
        store = SqliteAuthFailureStore(broken)
        broken.write_bytes(b"this is not an SQLite database" * 200)
        expected = sqlite3.DatabaseError
    try:
        with pytest.raises(expected) as caught:
            store.blocked_for([ADDRESS], allowed=1)
    finally:
        store.close()
    mapped = store_unavailable(caught.value)
    assert mapped is not None and mapped.store == "authentication throttle"


def test_a_key_prefix_is_kept_only_as_a_digest(tmp_path):
    key = "s3cret-prefix-and-the-rest-of-the-key"
    subject = key_prefix_subject(key)
    assert subject == key_prefix_subject(key[:KEY_PREFIX_CHARS] + "something else entirely")
    assert subject != key_prefix_subject("s3cXet-prefix-and-the-rest-of-the-key")
    assert key[:KEY_PREFIX_CHARS] not in subject and re.fullmatch(r"key:[0-9a-f]{32}", subject)
    store = SqliteAuthFailureStore(tmp_path / "auth-failures.sqlite3")
    try:
        store.add_failure([address_subject("192.0.2.1"), subject], allowed=1, window_seconds=300)
    finally:
        store.close()
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert key[:KEY_PREFIX_CHARS].encode() not in stored and subject.encode() in stored


# --- the API and the console --------------------------------------------------------------------------------------

def throttled_config(sandbox_url: str, *, allowed: int = ALLOWED, window: float = 300.0,
                     redis_url: str | None = None) -> dict:
    config = gateway_config(**{"ongoing-demo": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH)})
    config["gateway"].update(auth_failures_allowed=allowed, auth_failure_window_seconds=window)
    config["callers"] = {"erp": {"key": WRITER_KEY, "scopes": ["orders:write", "events:read"]},
                         "ops": {"key": OPS_KEY, "scopes": ["console", "events:read"]}}
    config["console"] = {"session_secret": SESSION_SECRET}
    if redis_url:
        config["events"] = {"redis_url": redis_url}
    return config


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request) -> str | None:
    """Where the gateway keeps its throttle: None for its SQLite file, else the test Redis's URL."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
def throttled_app(make_gateway, sandbox_url, store_kind):
    app = make_gateway(throttled_config(sandbox_url, redis_url=store_kind))
    yield app
    gateway_of(app).auth_throttle.close()


def from_address(app, address: str):
    """A test client whose requests come from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def events_with(client, key: str):
    return client.get("/events", headers={"Authorization": f"Bearer {key}"})


def assert_throttled(reply, window: float = 300.0) -> None:
    assert reply.status_code == 429, reply.get_data(as_text=True)[:500]
    assert 1 <= int(reply.headers["Retry-After"]) <= math.ceil(window)
    if reply.mimetype == "application/problem+json":
        assert reply.get_json()["type"] == "urn:order-gateway:problem:too-many-failed-attempts"


def test_the_api_refuses_an_address_after_its_allowed_failures_even_with_the_right_key(throttled_app):
    client = from_address(throttled_app, "192.0.2.20")
    assert events_with(client, WRITER_KEY).status_code == 200
    for number in range(ALLOWED):
        assert events_with(client, f"wrong-key-{number:012d}").status_code == 401

    assert_throttled(events_with(client, f"wrong-key-{ALLOWED:012d}"))
    right = events_with(client, WRITER_KEY)
    assert_throttled(right)
    assert "try again in" in right.get_json()["detail"]
    # another address, with another key prefix, is not refused
    assert events_with(from_address(throttled_app, "192.0.2.21"), WRITER_KEY).status_code == 200


def test_the_api_refuses_a_key_prefix_guessed_at_from_many_addresses(throttled_app):
    guesses = [f"{WRITER_KEY[:KEY_PREFIX_CHARS]}-guess-{number:06d}" for number in range(ALLOWED)]
    for number, guess in enumerate(guesses):
        assert events_with(from_address(throttled_app, f"198.51.100.{number}"), guess).status_code == 401

    fresh = from_address(throttled_app, "198.51.100.200")
    assert_throttled(events_with(fresh, WRITER_KEY))  # the right key shares the prefix
    assert events_with(fresh, OPS_KEY).status_code == 200  # another prefix from an unblocked address


def test_only_presented_credentials_count(throttled_app):
    client = from_address(throttled_app, "192.0.2.30")
    for _ in range(ALLOWED + 2):
        assert client.get("/events").status_code == 401  # no key: nothing was guessed
    assert events_with(client, WRITER_KEY).status_code == 200
    for _ in range(ALLOWED):
        assert client.get("/events", headers={"Authorization": "Basic ZGVtbzpkZW1v"}).status_code == 401
    assert_throttled(events_with(client, WRITER_KEY))


def test_a_known_key_without_the_scope_is_no_failure(throttled_app):
    client = from_address(throttled_app, "192.0.2.40")
    for _ in range(ALLOWED + 2):
        assert client.patch("/orders/SO-1001?dry_run=true", json={"status": "released"},
                            headers={"Authorization": f"Bearer {OPS_KEY}"}).status_code == 403
    assert events_with(client, WRITER_KEY).status_code == 200


def test_the_throttle_ends_with_its_window(make_gateway, sandbox_url, store_kind):
    window = 1.0
    app = make_gateway(throttled_config(sandbox_url, window=window, redis_url=store_kind))
    try:
        client = from_address(app, "192.0.2.50")
        for number in range(ALLOWED):
            assert events_with(client, f"wrong-key-{number:012d}").status_code == 401
        refused = events_with(client, WRITER_KEY)
        assert_throttled(refused, window)
        time.sleep(window + 0.2)
        assert events_with(client, WRITER_KEY).status_code == 200
    finally:
        gateway_of(app).auth_throttle.close()


def log_in(client, key: str):
    form = client.get("/console/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    return client.post("/console/login", data={"csrf_token": token, "key": key, "next": ""})


def test_the_console_refuses_an_address_after_its_allowed_failures_even_with_the_right_key(throttled_app):
    client = from_address(throttled_app, "192.0.2.60")
    for number in range(ALLOWED):
        refused = log_in(client, f"wrong-console-key-{number:06d}")
        assert refused.status_code == 401 and "That key is not known." in refused.get_data(as_text=True)

    right = log_in(client, OPS_KEY)
    assert_throttled(right)
    assert right.mimetype == "text/html" and "try again in" in right.get_data(as_text=True)
    assert client.get("/console").status_code == 303  # no session was started
    other = from_address(throttled_app, "192.0.2.61")
    assert log_in(other, OPS_KEY).status_code == 303
    assert other.get("/console").status_code == 200


def test_the_api_and_the_console_count_together(throttled_app):
    client = from_address(throttled_app, "192.0.2.70")
    assert events_with(client, "wrong-key-000000000001").status_code == 401
    assert log_in(client, "wrong-console-key-000002").status_code == 401
    assert events_with(client, "wrong-key-000000000003").status_code == 401

    assert_throttled(log_in(client, OPS_KEY))
    assert_throttled(events_with(client, WRITER_KEY))


def test_neither_a_key_nor_its_prefix_is_logged_or_stored(throttled_app, store_kind, tmp_path, caplog):
    client = from_address(throttled_app, "192.0.2.80")
    guesses = [f"Zq9xPrefix-guess-{number:08d}" for number in range(ALLOWED)]
    with caplog.at_level(logging.DEBUG):
        for guess in guesses[:-1]:
            events_with(client, guess)
        log_in(client, guesses[-1])
        assert_throttled(events_with(client, guesses[0]))
    assert "too often from 192.0.2.80" in caplog.text
    assert "Zq9xPref" not in caplog.text
    if store_kind is None:
        stored = b"".join(path.read_bytes() for path in tmp_path.rglob("auth-failures.sqlite3*"))
        assert stored and b"Zq9xPref" not in stored
    else:
        keys = redis.Redis.from_url(store_kind).keys("*")
        assert keys and not any(b"Zq9xPref" in key for key in keys)


def test_a_throttle_that_cannot_be_read_answers_503_and_lets_nobody_in(make_gateway, sandbox_url, caplog):
    app = make_gateway(throttled_config(sandbox_url, redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    try:
        client = app.test_client()
        reply = events_with(client, WRITER_KEY)
        assert reply.status_code == 503, reply.get_json()
        assert reply.get_json()["store"] == "authentication throttle" and reply.headers["Retry-After"] == "1"
        console = log_in(client, OPS_KEY)
        assert console.status_code == 503 and console.get_json()["store"] == "authentication throttle"
    finally:
        gateway_of(app).auth_throttle.close()


def test_the_openapi_document_names_the_429(throttled_app):
    document = throttled_app.test_client().get("/openapi.json").get_json()
    for path, method in [("/orders/{order_id}", "patch"), ("/events", "get"), ("/exchanges", "get")]:
        reply = document["paths"][path][method]["responses"]["429"]
        assert "Retry-After" in reply["headers"]
    assert "429" not in document["paths"]["/webhooks/{backend}/{connection}"]["post"]["responses"]
    assert "429" not in document["paths"]["/livez"]["get"]["responses"]


def test_a_block_counted_by_another_instance_is_seen_at_once_in_sqlite_and_within_a_bound_in_redis(
        location, open_store, monkeypatch):
    monkeypatch.setattr(throttle, "FRESH_SECONDS", 0.3)
    first, second = open_store(), open_store()
    assert first.blocked_for([ADDRESS], allowed=ALLOWED) == 0  # found without failures

    for _ in range(ALLOWED):
        fail(second)

    if location[0] == "redis":  # what it found answers for FRESH_SECONDS, then Redis is asked again
        assert first.blocked_for([ADDRESS], allowed=ALLOWED) == 0
        time.sleep(0.35)
    assert 298 < first.blocked_for([ADDRESS], allowed=ALLOWED) <= 300
    assert first.blocked_for([OTHER_ADDRESS], allowed=ALLOWED) == 0


def test_a_subject_with_failures_is_read_every_time_and_one_without_once_in_a_while_from_redis(redis_url,
                                                                                              monkeypatch):
    monkeypatch.setattr(throttle, "FRESH_SECONDS", 0.3)
    store = RedisAuthFailureStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:auth-failures:")
    reads = []
    counts = store._counts_script
    monkeypatch.setattr(store, "_counts_script", lambda **kwargs: reads.append(kwargs["keys"]) or counts(**kwargs))
    try:
        for _ in range(5):
            assert store.blocked_for([ADDRESS, PREFIX], allowed=ALLOWED) == 0
        assert len(reads) == 1
        time.sleep(0.35)
        assert store.blocked_for([ADDRESS, PREFIX], allowed=ALLOWED) == 0
        assert len(reads) == 2

        fail(store, ADDRESS)  # from now on the address is read every time, and its block is seen at once
        for _ in range(3):
            assert store.blocked_for([ADDRESS, PREFIX], allowed=ALLOWED) == 0
        assert len(reads) == 5
        fail(store, ADDRESS, allowed=ALLOWED)
        fail(store, ADDRESS, allowed=ALLOWED)
        assert store.blocked_for([ADDRESS, PREFIX], allowed=ALLOWED) > 0
    finally:
        store.close()


def test_an_sqlite_store_sees_each_commit_of_another_process_and_of_its_own_other_connections(tmp_path):
    path = tmp_path / "auth-failures.sqlite3"
    store, other = SqliteAuthFailureStore(path), SqliteAuthFailureStore(path)
    try:
        for allowed in (1, 2, 3):
            assert store.blocked_for([ADDRESS], allowed=allowed) == 0
            other.add_failure([ADDRESS], allowed=allowed, window_seconds=300)
            assert store.blocked_for([ADDRESS], allowed=allowed) > 0
        other.purge_expired(now=time.time() + 301)
        assert store.blocked_for([ADDRESS], allowed=1) == 0
        # the store's own failure, counted on one of its pooled connections, is seen from every other one
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(lambda _: store.blocked_for([ADDRESS], allowed=1), range(8))) == [0] * 8
        store.add_failure([ADDRESS], allowed=1, window_seconds=300)
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert all(left > 0 for left in pool.map(lambda _: store.blocked_for([ADDRESS], allowed=1), range(8)))
    finally:
        store.close()
        other.close()
