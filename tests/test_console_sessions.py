"""Console sessions live on the server: one store contract run against SQLite and Redis; then, with each store, the
cookie holds only a random id, logging out ends every copy of it, a session ends at its absolute end whatever is
done with it, and a caller that loses the console (removed, its scope or its key removed) loses its sessions."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from dataclasses import replace

import pytest
import redis

from gateway.callers import Authenticator
from gateway.config import load_settings
from gateway.console import COOKIE_NAME
from gateway.console.sessions import (
    ConsoleSessionStore,
    RedisConsoleSessionStore,
    SqliteConsoleSessionStore,
    id_digest,
)
from gateway.runtime import gateway_of
from gateway.stores import store_unavailable
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.servers import closed_port

#: real seconds for the tests of expiry, which Redis keeps on its own clock
SHORT = 0.4
LONG = 3600.0

OPS_KEYS = ["ops-console-key-sessions-01", "ops-console-key-sessions-02"]
VIEWER_KEY = "viewer-console-key-sessions-1"
SESSION_SECRET = "console-session-secret-for-sessions-01"


# --- the store contract ------------------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path):
    """Opens store instances on one test's sessions and closes them afterwards."""
    opened: list[ConsoleSessionStore] = []
    if request.param == "sqlite":
        path = tmp_path / "not-yet-created" / "console-sessions.sqlite3"

        def open_() -> ConsoleSessionStore:
            opened.append(SqliteConsoleSessionStore(path))
            return opened[-1]
    else:
        url, prefix = request.getfixturevalue("redis_url"), f"test:{uuid.uuid4().hex}:"

        def open_() -> ConsoleSessionStore:
            opened.append(RedisConsoleSessionStore(url, prefix=prefix))
            return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store) -> ConsoleSessionStore:
    return open_store()


def test_a_started_session_is_found_by_its_id_from_any_store_instance(open_store):
    first = open_store()
    started = first.start("ops", "tag-1", lifetime_seconds=LONG)

    found = open_store().get(started.id)

    assert found == started
    assert (found.caller, found.key_tag, found.notes) == ("ops", "tag-1", ())
    assert abs(found.expires_at - found.started_at - LONG) < 1e-6


def test_ids_and_csrf_tokens_are_random_and_unknown_ids_find_nothing(store):
    sessions = [store.start("ops", "tag-1", lifetime_seconds=LONG) for _ in range(5)]
    assert len({session.id for session in sessions} | {session.csrf_token for session in sessions}) == 10
    assert all(len(session.id) >= 40 for session in sessions)
    assert store.get("no-such-session") is None
    assert store.get(sessions[0].id + "x") is None


def test_an_ended_session_is_gone_and_stays_gone(store):
    started = store.start("ops", "tag-1", lifetime_seconds=LONG)
    kept = store.start("ops", "tag-1", lifetime_seconds=LONG)

    store.end(started.id)
    store.end(started.id)
    store.set_notes(started.id, [("info", "too late")])

    assert store.get(started.id) is None
    assert store.get(kept.id) == kept


def test_a_session_ends_at_its_end_whatever_is_done_with_it(store):
    started = store.start("ops", "tag-1", lifetime_seconds=SHORT)
    time.sleep(SHORT / 2)
    assert store.get(started.id) is not None
    store.set_notes(started.id, [("info", "read and written just before the end")])
    time.sleep(SHORT / 2 + 0.15)

    assert store.get(started.id) is None
    store.set_notes(started.id, [("info", "after the end")])
    assert store.get(started.id) is None
    store.purge_expired()
    assert store.get(started.id) is None


def test_notes_wait_with_the_session_and_keep_their_text(store):
    started = store.start("ops", "tag-1", lifetime_seconds=LONG)
    notes = (("info", "Event evt_1 is queued again for demo."), ("error", "åäö ✓ <b>\"quoted\"</b>"))

    store.set_notes(started.id, notes)
    assert store.get(started.id).notes == notes
    store.set_notes(started.id, [])
    assert store.get(started.id).notes == ()


def test_end_unless_ends_exactly_the_sessions_no_longer_allowed(store):
    kept = store.start("ops", "tag-1", lifetime_seconds=LONG)
    other_key = store.start("ops", "tag-2", lifetime_seconds=LONG)
    removed = store.start("gone", "tag-3", lifetime_seconds=LONG)

    ended = store.end_unless(lambda caller, key_tag: (caller, key_tag) == ("ops", "tag-1"))

    assert ended == 2
    assert store.get(kept.id) == kept
    assert store.get(other_key.id) is None and store.get(removed.id) is None
    assert store.end_unless(lambda caller, key_tag: True) == 0


def test_the_store_keeps_no_session_id_in_clear(open_store, tmp_path, request):
    store = open_store()
    started = store.start("ops", "tag-1", lifetime_seconds=LONG)
    if isinstance(store, SqliteConsoleSessionStore):
        stored = b"".join(path.read_bytes() for path in store.path.parent.iterdir())
        assert id_digest(started.id).encode() in stored
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        stored = b"".join(client.keys("*")) + b"".join(
            b"".join(client.hvals(key)) for key in client.keys("*session:*"))
        client.close()
        assert id_digest(started.id).encode() in stored
    assert started.id.encode() not in stored


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_store_that_cannot_be_used_fails_as_a_store_failure(tmp_path, kind):
    if kind == "redis":
        store: ConsoleSessionStore = RedisConsoleSessionStore(f"redis://127.0.0.1:{closed_port()}/0")
        expected: type[Exception] = redis.ConnectionError
    else:
        broken = tmp_path / "broken.sqlite3"
        store = SqliteConsoleSessionStore(broken)
        broken.write_bytes(b"this is not an SQLite database" * 200)
        expected = sqlite3.DatabaseError
    try:
        with pytest.raises(expected) as caught:
            store.get("some-session-id")
    finally:
        store.close()
    mapped = store_unavailable(caught.value)
    assert mapped is not None and mapped.store == "console session store"


# --- the console --------------------------------------------------------------------------------------------------

def console_config(url: str, *, redis_url: str | None = None, **console) -> dict:
    config = gateway_config(**{"ongoing-demo": ongoing_connection(url)})
    config["callers"] = {
        "ops": {"keys": list(OPS_KEYS), "scopes": ["console", "events:read"]},
        "viewer": {"key": VIEWER_KEY, "scopes": ["console"]},
    }
    config["console"] = {"session_secret": SESSION_SECRET, **console}
    if redis_url:
        config["events"] = {"redis_url": redis_url}
    return config


@pytest.fixture(params=["sqlite", "redis"])
def redis_or_not(request) -> str | None:
    """None: the gateway keeps its sessions in SQLite; else the test Redis's URL."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
def build(make_gateway, sandbox_url, redis_or_not):
    """Builds gateway apps on one store of sessions (the same folder or Redis), closing them afterwards."""
    apps = []

    def build_(mutate=None, **console):
        config = console_config(sandbox_url + ONGOING_SERVICE_PATH, redis_url=redis_or_not, **console)
        if mutate is not None:
            mutate(config)
        apps.append(make_gateway(config))
        return apps[-1]

    yield build_
    for app in apps:
        gateway_of(app).console_sessions.close()
        gateway_of(app).auth_throttle.close()


def log_in(client, key: str = OPS_KEYS[0]):
    form = client.get("/console/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    return client.post("/console/login", data={"csrf_token": token, "key": key, "next": ""})


def cookie_of(client) -> str:
    return client.get_cookie(COOKIE_NAME, path="/console").value


def with_cookie(app, value: str):
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, value, path="/console")
    return client


def test_the_cookie_holds_only_the_sessions_random_id(build):
    app = build()
    client = app.test_client()
    reply = log_in(client)
    assert reply.status_code == 303
    held = app.session_interface.get_signing_serializer(app).loads(cookie_of(client))

    assert set(held) == {"sid"}
    started = gateway_of(app).console_sessions.get(held["sid"])
    assert started is not None and started.caller == "ops"
    assert "ops" not in held["sid"] and started.csrf_token not in cookie_of(client)
    # a flashed message waits on the server, not in the cookie
    page = client.post("/console/events/evt_unknown/redeliver",
                       data={"csrf_token": started.csrf_token, "idempotency_key": "k-1"})
    assert page.status_code == 303 and "Set-Cookie" not in page.headers
    assert gateway_of(app).console_sessions.get(held["sid"]).notes
    assert "lacks the scope events:redeliver" in client.get("/console").get_data(as_text=True)
    assert gateway_of(app).console_sessions.get(held["sid"]).notes == ()


def test_logging_out_ends_every_copy_of_the_cookie(build):
    app = build()
    client = app.test_client()
    log_in(client)
    copied = cookie_of(client)
    session_id = app.session_interface.get_signing_serializer(app).loads(copied)["sid"]
    html = client.get("/console").get_data(as_text=True)
    assert with_cookie(app, copied).get("/console").status_code == 200

    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert client.post("/console/logout", data={"csrf_token": token}).status_code == 303

    assert gateway_of(app).console_sessions.get(session_id) is None
    refused = with_cookie(app, copied).get("/console")
    assert refused.status_code == 303 and refused.headers["Location"].startswith("/console/login")
    assert client.get("/console").status_code == 303


def test_a_login_gets_a_new_id_so_an_id_planted_before_it_is_worth_nothing(build):
    app = build()
    client = app.test_client()
    form = client.get("/console/login").get_data(as_text=True)
    serializer = app.session_interface.get_signing_serializer(app)
    before = serializer.loads(cookie_of(client))["sid"]
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    assert client.post("/console/login", data={"csrf_token": token, "key": OPS_KEYS[0]}).status_code == 303

    after = serializer.loads(cookie_of(client))["sid"]
    assert after != before
    assert gateway_of(app).console_sessions.get(before) is None
    assert with_cookie(app, serializer.dumps({"sid": before})).get("/console").status_code == 303
    # the form sent again (another tab's copy) is refused: its token belonged to the id before the login
    again = client.post("/console/login", data={"csrf_token": token, "key": VIEWER_KEY})
    assert again.status_code == 403
    assert 'id="caller-name">ops<' in client.get("/console").get_data(as_text=True)


def test_a_session_lasts_its_minutes_from_the_login_however_it_is_used(build):
    lifetime = 3.0
    app = build(session_minutes=lifetime / 60)
    client = app.test_client()
    logged_in_before = time.time()
    reply = log_in(client)
    logged_in_after = time.time()
    expires = reply.headers["Set-Cookie"]
    assert "Expires=" in expires
    seen = []
    while time.time() < logged_in_before + lifetime - 0.6:
        page = client.get("/console")
        seen.append((time.time(), page.status_code))
        time.sleep(0.3)
    assert len(seen) >= 3
    assert all(status == 200 for at, status in seen if at < logged_in_before + lifetime)
    time.sleep(max(0.0, logged_in_after + lifetime + 0.2 - time.time()))

    assert client.get("/console").status_code == 303


def test_the_end_is_the_servers_even_for_a_cookie_that_outlives_it(build):
    lifetime = 0.9
    app = build(session_minutes=lifetime / 60)
    client = app.test_client()
    log_in(client)
    copied = cookie_of(client)
    time.sleep(lifetime + 0.2)
    # a gateway whose cookies last longer (the same secret) still refuses: the session ended on the server
    longer = build(session_minutes=60)
    assert with_cookie(longer, copied).get("/console").status_code == 303


def without_scope(config: dict) -> None:
    config["callers"]["ops"]["scopes"] = ["events:read"]


def without_caller(config: dict) -> None:
    del config["callers"]["ops"]


def without_first_key(config: dict) -> None:
    config["callers"]["ops"]["keys"] = OPS_KEYS[1:]


@pytest.mark.parametrize("change", [without_scope, without_caller, without_first_key],
                         ids=["scope-removed", "caller-removed", "its-key-removed"])
def test_a_caller_that_loses_the_console_loses_its_sessions_for_good(build, change):
    client = build().test_client()
    log_in(client)
    cookie = cookie_of(client)

    changed = build(change)  # the gateway restarts with the new configuration, on the same store
    assert with_cookie(changed, cookie).get("/console").status_code == 303
    # and giving it back does not bring the session back
    assert with_cookie(build(), cookie).get("/console").status_code == 303


def test_removing_another_key_of_the_caller_keeps_the_session(build):
    client = build().test_client()
    log_in(client, OPS_KEYS[1])
    cookie = cookie_of(client)

    assert with_cookie(build(without_first_key), cookie).get("/console").status_code == 200


def test_every_request_checks_the_callers_configuration_as_it_is_now(build):
    app = build()
    client = app.test_client()
    log_in(client)
    session_id = app.session_interface.get_signing_serializer(app).loads(cookie_of(client))["sid"]
    settings = app.config["GATEWAY_SETTINGS"]
    ops = settings.callers["ops"]
    reloaded = replace(settings, callers={**settings.callers, "ops": replace(ops, scopes=frozenset({"events:read"}))})
    gateway_of(app).authenticator = Authenticator(reloaded)  # a configuration reloaded in the process

    assert client.get("/console").status_code == 303
    assert gateway_of(app).console_sessions.get(session_id) is None


def test_an_old_style_cookie_naming_a_caller_opens_nothing(build):
    app = build()
    forged = app.session_interface.get_signing_serializer(app).dumps(
        {"caller": "ops", "csrf": "x", "since": time.time()})
    assert with_cookie(app, forged).get("/console").status_code == 303


def test_a_session_store_that_cannot_be_read_answers_503(make_gateway, sandbox_url):
    config = console_config(sandbox_url + ONGOING_SERVICE_PATH, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    app = make_gateway(config)
    try:
        client = app.test_client()
        client.set_cookie(COOKIE_NAME, app.session_interface.get_signing_serializer(app).dumps({"sid": "x" * 43}),
                          path="/console")
        reply = client.get("/console")
        assert reply.status_code == 503 and reply.get_json()["store"] == "console session store"
    finally:
        gateway_of(app).console_sessions.close()
        gateway_of(app).auth_throttle.close()


def test_settings_say_how_long_a_session_lasts(sandbox_url):
    from gateway.backends import BACKENDS

    settings = load_settings(console_config(sandbox_url, session_minutes=0.5), "<test>", BACKENDS)
    assert settings.console.session_minutes == 0.5
    assert load_settings(console_config(sandbox_url), "<test>", BACKENDS).console.session_minutes == 480
