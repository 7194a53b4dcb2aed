"""Group commit: concurrent webhooks share one SQLite commit, each answered only once its own event is committed;
in Redis, a webhook is one round trip (dedupe, store and the queue's wake-ups)."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.events.store import EventStoreError, GroupCommit, SqliteEventStore
from gateway.runtime import gateway_of
from tests.test_webhooks_receiving import BASIC, PAYLOAD, SECRET, config_with, post

WRITERS = 8


def make_event(name: str) -> dict:
    return {"id": name, "type": "order.picked", "occurred_at": "2026-01-01T00:00:00+00:00"}


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def hold_first_commit(group: GroupCommit, waiting: int):
    """Make the group's first commit wait until `waiting` writes queue behind it; returns the batches seen."""
    commit_batch, batches = group._commit_batch, []

    def held(works):
        if not batches:
            wait_until(lambda: len(group._waiting) >= waiting)
        batches.append(len(works))
        return commit_batch(works)

    group._commit_batch = held
    return batches


@pytest.fixture
def store(tmp_path):
    store = SqliteEventStore(tmp_path / "events.sqlite3")
    yield store
    store.close()


def add(store: SqliteEventStore, name: str):
    return store.add_event(make_event(name), dedupe_key=f"k:{name}", order_key="o:1", subscribers=["crm"])


def test_concurrent_events_share_commits_and_each_returns_once_stored(store):
    batches = hold_first_commit(store._group_commit, WRITERS - 1)
    with ThreadPoolExecutor(WRITERS) as pool:
        outcomes = list(pool.map(lambda number: add(store, f"evt_{number}"), range(WRITERS)))
    assert outcomes == [(f"evt_{number}", True) for number in range(WRITERS)]
    # the first commit, then everything that arrived while it ran, in one
    assert batches == [1, WRITERS - 1]
    assert store._group_commit.commits == 2
    for number in range(WRITERS):
        assert store.get_event(f"evt_{number}")["deliveries"][0]["state"] == "pending"


def test_a_duplicate_in_the_same_batch_is_known_and_a_taken_id_fails_alone(store):
    add(store, "evt_taken")
    batches = hold_first_commit(store._group_commit, 3)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(add, store, "evt_first")
        wait_until(lambda: store._group_commit._leading)
        again = [pool.submit(add, store, "evt_again") for _ in range(2)]
        taken = pool.submit(store.add_event, make_event("evt_taken"), dedupe_key="k:other", order_key="o:1",
                            subscribers=[])
        assert first.result() == ("evt_first", True)
        assert sorted(future.result() for future in again) == [("evt_again", False), ("evt_again", True)]
        with pytest.raises(EventStoreError):
            taken.result()
    assert batches == [1, 3]
    assert store.get_event("evt_again") is not None


def test_a_failed_batch_is_retried_one_by_one_so_only_the_bad_event_fails(store, monkeypatch):
    insert = SqliteEventStore._insert_event

    def failing(db, row):
        if row.event_id == "evt_bad":
            raise sqlite3.OperationalError("disk I/O error")
        return insert(db, row)

    monkeypatch.setattr(SqliteEventStore, "_insert_event", staticmethod(failing))
    batches = hold_first_commit(store._group_commit, 4)
    names = ["evt_0", "evt_1", "evt_bad", "evt_2", "evt_3"]
    with ThreadPoolExecutor(len(names)) as pool:
        first = pool.submit(add, store, names[0])
        wait_until(lambda: store._group_commit._leading)
        rest = {name: pool.submit(add, store, name) for name in names[1:]}
        assert first.result() == ("evt_0", True)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            rest.pop("evt_bad").result()
        assert {name: future.result() for name, future in rest.items()} == {name: (name, True) for name in rest}
    assert batches == [1, 4]
    assert store.get_event("evt_bad") is None
    assert all(store.get_event(name) is not None for name in names if name != "evt_bad")


def test_a_write_that_waits_too_long_fails_as_a_store_failure_and_is_not_written():
    release, written = threading.Event(), []

    def slow(works):
        release.wait(10)
        written.extend(works)
        return works

    group = GroupCommit(slow, what="event store", wait_seconds=0.05)
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(group.submit, "first")
        wait_until(lambda: group._leading)
        with pytest.raises(sqlite3.OperationalError, match="waited") as raised:
            group.submit("second")
        assert raised.value.store == "event store"
        release.set()
        assert leader.result() == "first"
    assert written == ["first"]
    assert group.submit("third") == "third"


def test_writes_beyond_the_queue_bound_fail_fast():
    release = threading.Event()
    group = GroupCommit(lambda works: (release.wait(10), works)[1], what="event store", wait_seconds=10, queue=2)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(group.submit, "first")]
        wait_until(lambda: group._leading and not group._waiting)
        futures += [pool.submit(group.submit, name) for name in ("second", "third")]
        wait_until(lambda: len(group._waiting) == 2)
        with pytest.raises(sqlite3.OperationalError, match="waiting already"):
            group.submit("fourth")
        release.set()
        assert [future.result() for future in futures] == ["first", "second", "third"]


@pytest.fixture
def client(make_gateway):
    subscriber = {"url": "http://127.0.0.1:9/events", "secret": SECRET, "types": ["order.picked"]}
    return make_gateway(config_with(dict(BASIC), subscribers={"picker": subscriber},
                                    status_map={"picked_and_checked": 400})).test_client()


def test_webhooks_of_a_failed_batch_get_503_and_every_202_is_stored(client, monkeypatch):
    store = gateway_of(client.application).events.store
    insert = SqliteEventStore._insert_event
    bad = {"ongoing-demo:sandbox:703", "ongoing-demo:sandbox:705"}
    failed_transactions = []

    def failing(db, row):
        if row.dedupe_key in bad:
            failed_transactions.append(row.dedupe_key)
            raise sqlite3.OperationalError("database or disk is full")
        return insert(db, row)

    monkeypatch.setattr(SqliteEventStore, "_insert_event", staticmethod(failing))
    batches = hold_first_commit(store._group_commit, WRITERS - 1)
    with ThreadPoolExecutor(WRITERS) as pool:
        replies = dict(zip(range(700, 700 + WRITERS), pool.map(
            lambda number: post(client.application.test_client(), {**PAYLOAD, "webhookEventId": number}),
            range(700, 700 + WRITERS)),
            strict=True))
    assert batches == [1, WRITERS - 1]
    assert {number for number, reply in replies.items() if reply.status_code == 503} == {703, 705}
    assert all(reply.status_code == 202 for number, reply in replies.items() if number not in (703, 705))
    assert "disk is full" not in replies[703].get_data(as_text=True)
    stored_ids = {item["event"]["id"] for item in client.get("/events?limit=50").get_json()["events"]}
    assert stored_ids == {reply.get_json()["id"] for reply in replies.values() if reply.status_code == 202}
    assert len(stored_ids) == WRITERS - 2


def test_a_webhook_in_redis_is_one_round_trip_that_also_queues_its_delivery(make_gateway, redis_url):
    subscriber = {"url": "http://127.0.0.1:9/events", "secret": SECRET, "types": ["order.picked"]}
    config = config_with(dict(BASIC), subscribers={"picker": subscriber, "other": subscriber},
                         status_map={"picked_and_checked": 400})
    config["events"] = {"redis_url": redis_url}
    app = make_gateway(config)
    service = gateway_of(app).events
    assert post(app.test_client(), {**PAYLOAD, "webhookEventId": 1}).status_code == 202  # the script is loaded
    huey = service.queue.huey
    commands = []
    for client in (service.store._redis, huey.storage.conn):
        original = client.execute_command

        def counted(*args, original=original, **kwargs):
            commands.append(args[0])
            return original(*args, **kwargs)

        client.execute_command = counted
    reply = post(app.test_client())
    assert reply.status_code == 202
    assert commands == ["EVALSHA"]
    assert sorted(reply.get_json()["subscribers"]) == ["other", "picker"]
    queued = [huey.deserialize_task(message) for message in huey.storage.enqueued_items()]
    assert sorted(task.args for task in queued) == [("other", "ongoing-demo:1004")] * 2 + \
        [("picker", "ongoing-demo:1004")] * 2
    assert {task.name for task in queued} == {service.queue.drain_task.name}
    commands.clear()
    again = post(app.test_client())
    assert (again.status_code, commands) == (200, ["EVALSHA"])
    assert len(huey.storage.enqueued_items()) == 4
