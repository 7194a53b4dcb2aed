"""Webhook deduplication is per connection: a webhookEventId sent with one connection's credentials never hides
another connection's event; stores written before (keys named by the backend) are rewritten when opened."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
import redis
import requests

from gateway.events import redis_store
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import SCHEMA_VERSION, SqliteEventStore, connection_dedupe_key
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.test_webhooks_receiving import BASIC, PAYLOAD, SECRET

DEMO_AUTH = ("ongoing-webhooks", "webhook-demo-password")
OTHER_TOKEN = {"X-Webhook-Token": "other-connection-token"}
T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
def gateway(request, make_gateway, sandbox_url):
    """Two Ongoing connections receiving webhooks (different credentials) and the sandbox's demo subscriber
    wanting their order.picked events; events in SQLite or in Redis."""
    ongoing = ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH)
    config = gateway_config(**{
        "ongoing-demo": {**ongoing, "webhooks": dict(BASIC)},
        "ongoing-b": {**ongoing, "webhooks": {"auth": "token", "token": "other-connection-token"}},
    })
    config["subscribers"] = {"demo": {"url": f"{sandbox_url}/subscriber/events", "secret": SECRET,
                                      "types": ["order.picked"]}}
    if request.param == "redis":
        config["events"] = {"redis_url": request.getfixturevalue("redis_url")}
    return make_gateway(config)


def post_as(client, connection: str, payload: dict):
    """POST a webhook to a connection's receiver with that connection's credentials."""
    path = f"/webhooks/ongoing/{connection}"
    if connection == "ongoing-demo":
        return client.post(path, json=payload, auth=DEMO_AUTH)
    return client.post(path, json=payload, headers=OTHER_TOKEN)


def test_one_webhook_event_id_from_two_connections_is_stored_and_delivered_twice(gateway, sandbox_url):
    client = gateway.test_client()
    payload = {**PAYLOAD, "webhookEventId": 4242}
    planted = post_as(client, "ongoing-b", payload)
    genuine = post_as(client, "ongoing-demo", payload)
    assert (planted.status_code, genuine.status_code) == (202, 202)
    assert planted.get_json()["duplicate"] is False and genuine.get_json()["duplicate"] is False
    assert genuine.get_json()["subscribers"] == ["demo"]
    ids = {planted.get_json()["id"], genuine.get_json()["id"]}
    assert len(ids) == 2

    service = gateway_of(gateway).events
    for connection in ("ongoing-b", "ongoing-demo"):
        assert service.dispatcher.drain_stream("demo", f"{connection}:{PAYLOAD['orderId']}") is None
    received = requests.get(f"{sandbox_url}/subscriber/events", timeout=5).json()["received"]
    assert {record["webhook_id"] for record in received} == ids
    assert all(record["verified"] for record in received)
    assert sorted(record["event"]["source"]["connection"] for record in received) == ["ongoing-b", "ongoing-demo"]


def test_the_same_webhook_event_id_again_from_the_same_connection_is_a_duplicate(gateway):
    client = gateway.test_client()
    payload = {**PAYLOAD, "webhookEventId": 4243}
    first = post_as(client, "ongoing-demo", payload)
    other = post_as(client, "ongoing-b", payload)
    assert (first.status_code, other.status_code) == (202, 202)
    for connection, reply in (("ongoing-demo", first), ("ongoing-b", other)):
        again = post_as(client, connection, payload)
        assert again.status_code == 200
        assert again.get_json() == {"id": reply.get_json()["id"], "type": "order.picked", "duplicate": True,
                                    "subscribers": []}
    assert client.get("/events").get_json()["count"] == 2


@pytest.mark.parametrize(("key", "source", "expected"), [
    ("ongoing:sandbox:4242", {"backend": "ongoing", "connection": "ongoing-demo"}, "ongoing-demo:sandbox:4242"),
    ("ongoing:a:b:7", {"backend": "ongoing", "connection": "east:1"}, "east:1:a:b:7"),
    ("ongoing:sandbox:1", {"backend": "ongoing", "connection": "ongoing"}, "ongoing:sandbox:1"),
    ("ongoing-demo:sandbox:1", {"backend": "ongoing", "connection": "ongoing-demo"}, "ongoing-demo:sandbox:1"),
    ("click", {"backend": "ongoing", "connection": "ongoing-demo"}, "click"),
    ("ongoing:sandbox:1", {"backend": "ongoing"}, "ongoing:sandbox:1"),
    ("ongoing:sandbox:1", None, "ongoing:sandbox:1"),
], ids=["rewritten", "colons", "connection-named-as-backend", "already-new", "not-a-webhook", "no-connection",
        "no-source"])
def test_connection_dedupe_key(key, source, expected):
    event = {"id": "evt_1"} if source is None else {"id": "evt_1", "source": source}
    assert connection_dedupe_key(key, event) == expected


# --- stores of the earlier layout -------------------------------------------------------------------------------

def old_event(number: int, connection: str = "ongoing-demo") -> dict:
    """An Ongoing event as earlier versions stored it."""
    return {"id": f"evt_old{number}", "type": "order.picked", "occurred_at": f"2026-11-23T12:00:{number:02d}+00:00",
            "source": {"backend": "ongoing", "connection": connection, "system": "sandbox",
                       "template": "OrderPicked"},
            "order": {"backend_order_id": str(1000 + number), "order_number": f"SO-{1000 + number}"},
            "raw": {"webhookEventId": number}}


def fill_old_store(store) -> None:
    """Events as the earlier layout kept them: keys named by the backend; evt_old1 delivered at T0 + 10,
    evt_old2 pending, evt_old3 without subscribers, evt_old4 dead at T0 + 20, evt_old5 a key of no backend."""
    for number in (1, 2, 4):
        store.add_event(old_event(number), dedupe_key=f"ongoing:sandbox:{number}", order_key=f"o:{number}",
                        subscribers=["crm"], now=T0)
    store.add_event(old_event(3, "ongoing-b"), dedupe_key="ongoing:sandbox:3", order_key="o:3", subscribers=[],
                    now=T0 + 5)
    store.add_event(old_event(5), dedupe_key="click-5", order_key="o:5", subscribers=["crm"], now=T0)
    store.record_attempt("evt_old1", "crm", outcome="delivered", status_code=200, now=T0 + 10)
    store.record_attempt("evt_old4", "crm", outcome="dead", status_code=410, error="HTTP 410", now=T0 + 20)
    store.record_attempt("evt_old5", "crm", outcome="delivered", status_code=200, now=T0 + 30)


def assert_migrated(store) -> None:
    """Every key names the connection now (the key of no backend unchanged), and the settled events are known by
    when they settled: the pending one is never purged."""
    for number, connection in ((1, "ongoing-demo"), (2, "ongoing-demo"), (3, "ongoing-b"), (4, "ongoing-demo")):
        assert store.add_event(old_event(90 + number), dedupe_key=f"{connection}:sandbox:{number}",
                               order_key="o:x", subscribers=[], now=T0 + 100) == (f"evt_old{number}", False)
    assert store.add_event(old_event(95), dedupe_key="click-5", order_key="o:x", subscribers=[],
                           now=T0 + 100) == ("evt_old5", False)
    # the backend's key is free now: no webhook sends it any more
    assert store.add_event(old_event(96), dedupe_key="ongoing:sandbox:1", order_key="o:x", subscribers=["crm"],
                           now=T0 + 100) == ("evt_old96", True)
    assert store.purge_settled(settled_by=T0 + 4, limit=10) == 0
    assert store.purge_settled(settled_by=T0 + 10, limit=10) == 2  # evt_old3 at T0 + 5, evt_old1 at T0 + 10
    assert store.purge_settled(settled_by=T0 + 99, limit=10) == 2  # evt_old4 at T0 + 20, evt_old5 at T0 + 30
    assert store.get_event("evt_old2")["deliveries"][0]["state"] == "pending"
    assert [store.get_event(f"evt_old{number}") for number in (1, 3, 4, 5)] == [None] * 4


MIGRATED_KEYS = {"ongoing-demo:sandbox:1": "evt_old1", "ongoing-demo:sandbox:2": "evt_old2",
                 "ongoing-b:sandbox:3": "evt_old3", "ongoing-demo:sandbox:4": "evt_old4", "click-5": "evt_old5"}
SETTLED_AT = {"evt_old1": T0 + 10, "evt_old3": T0 + 5, "evt_old4": T0 + 20, "evt_old5": T0 + 30}


def test_an_sqlite_file_of_the_earlier_layout_is_migrated_when_opened(tmp_path):
    path = tmp_path / "events.sqlite3"
    store = SqliteEventStore(path)
    fill_old_store(store)
    store.close()
    with sqlite3.connect(path) as db:  # as version 4 left it: no settled events, keys named by the backend
        db.execute("DROP TABLE settled_events")
        db.execute("PRAGMA user_version = 4")
    db.close()

    reopened = SqliteEventStore(path)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert dict(db.execute("SELECT dedupe_key, id FROM events")) == MIGRATED_KEYS
            assert dict(db.execute("SELECT e.id, s.settled_at FROM settled_events AS s"
                                   " JOIN events AS e ON e.seq = s.event_seq")) == SETTLED_AT
        db.close()
        assert_migrated(reopened)
    finally:
        reopened.close()


@pytest.fixture
def redis_location(redis_url):
    """A Redis URL, an unused key prefix, and a plain client on it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield redis_url, f"test:{uuid.uuid4().hex}:", client
    client.close()


def make_layout_1(client: redis.Redis, prefix: str) -> None:
    """Turn a store's data into what the earlier layout left: no version, no settled index, no keys on events."""
    client.delete(prefix + "version", prefix + "settled")
    for key in client.scan_iter(match=prefix + "event:*"):
        client.hdel(key, "dedupe_key")


def test_redis_data_of_the_earlier_layout_is_upgraded_when_opened(redis_location):
    url, prefix, client = redis_location
    store = RedisEventStore(url, prefix=prefix)
    fill_old_store(store)
    store.close()
    make_layout_1(client, prefix)

    reopened = RedisEventStore(url, prefix=prefix)
    try:
        assert client.get(prefix + "version") == "2"
        assert client.hgetall(prefix + "dedupe") == MIGRATED_KEYS
        assert not client.exists(prefix + "dedupe:legacy")
        assert dict(client.zrange(prefix + "settled", 0, -1, withscores=True)) == SETTLED_AT
        assert {event_id: client.hget(f"{prefix}event:{event_id}", "dedupe_key")
                for event_id in MIGRATED_KEYS.values()} == {event_id: key for key, event_id in MIGRATED_KEYS.items()}
        assert_migrated(reopened)
        # nothing of a purged event is left, its dedupe key neither
        assert not [key for key in client.scan_iter(match=prefix + "*") if "evt_old1" in key]
        assert not [key for key, event_id in client.hgetall(prefix + "dedupe").items() if event_id == "evt_old1"]
    finally:
        reopened.close()


def test_an_interrupted_redis_upgrade_is_finished_by_the_next_store_opened(redis_location, monkeypatch):
    url, prefix, client = redis_location
    store = RedisEventStore(url, prefix=prefix)
    for number in range(1, 601):  # more than Redis keeps as one listpack, so the hash is scanned in batches
        store.add_event(old_event(number % 60, connection=f"c{number % 3}") | {"id": f"evt_{number}"},
                        dedupe_key=f"ongoing:sandbox:{number}", order_key=f"o:{number}", subscribers=[], now=T0)
    store.close()
    make_layout_1(client, prefix)
    monkeypatch.setattr(redis_store, "UPGRADE_BATCH_SIZE", 40)
    moves = []
    real_move = RedisEventStore._move_dedupe_keys

    def move_then_lose_redis(self, entries):
        if len(moves) == 2:
            raise redis.ConnectionError("Redis went away")
        moves.append(len(entries))
        real_move(self, entries)

    monkeypatch.setattr(RedisEventStore, "_move_dedupe_keys", move_then_lose_redis)
    interrupted = RedisEventStore(url, prefix=prefix)
    interrupted.close()
    assert client.get(prefix + "version") == "upgrading"
    left = client.hlen(prefix + "dedupe:legacy")
    assert 0 < left < 600 and client.hlen(prefix + "dedupe") == 600 - left == sum(moves)

    monkeypatch.setattr(RedisEventStore, "_move_dedupe_keys", real_move)
    finished = RedisEventStore(url, prefix=prefix)
    try:
        assert client.get(prefix + "version") == "2"
        assert not client.exists(prefix + "dedupe:legacy")
        assert client.hgetall(prefix + "dedupe") == {f"c{number % 3}:sandbox:{number}": f"evt_{number}"
                                                     for number in range(1, 601)}
        assert client.zcard(prefix + "settled") == 600
        # opening it again changes nothing
        before = client.hgetall(prefix + "dedupe")
        RedisEventStore(url, prefix=prefix).close()
        assert client.hgetall(prefix + "dedupe") == before
    finally:
        finished.close()


def test_a_redis_store_opened_while_redis_is_down_upgrades_when_first_used(redis_location, monkeypatch):
    url, prefix, client = redis_location
    store = RedisEventStore(url, prefix=prefix)
    fill_old_store(store)
    store.close()
    make_layout_1(client, prefix)
    real_upgrade = RedisEventStore.upgrade
    calls = []

    def upgrade_once_down(self):
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Redis is not there yet")
        real_upgrade(self)

    monkeypatch.setattr(RedisEventStore, "upgrade", upgrade_once_down)
    store = RedisEventStore(url, prefix=prefix)
    try:
        assert client.get(prefix + "version") is None
        assert_migrated(store)
        assert client.get(prefix + "version") == "2" and len(calls) == 2
    finally:
        store.close()


def test_events_of_the_earlier_layout_keep_their_json(redis_location):
    url, prefix, client = redis_location
    store = RedisEventStore(url, prefix=prefix)
    fill_old_store(store)
    store.close()
    make_layout_1(client, prefix)
    RedisEventStore(url, prefix=prefix).close()
    assert json.loads(client.hget(prefix + "event:evt_old2", "body")) == old_event(2)
