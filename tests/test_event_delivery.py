"""Delivering events to a subscriber (the sandbox's demo subscriber, over real HTTP): signed, in order,
retried with backoff, parked as dead, redelivered — against both event storages."""

from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import sandbox
from gateway.config import EventSettings, Secret, SubscriberSettings
from gateway.events.delivery import Dispatcher
from gateway.events.signing import sign_delivery
from tests.servers import closed_port, serve_wsgi

SECRET = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"


class Clock:
    """A clock the test moves by hand, so backoff is checked without waiting."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def subscriber_url():
    with serve_wsgi(sandbox.create_app()) as url:
        yield url


def behave(url: str, mode: str, delay: float = 0.0) -> None:
    reply = requests.post(f"{url}/subscriber/_behaviour", json={"mode": mode, "delay": delay}, timeout=5)
    assert reply.status_code in (200, 204)


def received(url: str) -> dict:
    return requests.get(f"{url}/subscriber/events", timeout=5).json()


def event(number: int, order: str = "1004") -> dict:
    return {"id": f"evt_{number:04d}", "type": "order.status_changed",
            "occurred_at": f"2026-11-23T12:00:{number:02d}+00:00",
            "order": {"backend_order_id": order, "order_number": f"SO-{order}"}}


@pytest.fixture
def make_dispatcher(event_store):
    made = []

    def make(url: str, *, max_attempts: int = 4, timeout: float = 2.0, secret: str = SECRET, clock=None):
        settings = EventSettings(database=None, queue_database=None, redis_url=None, max_attempts=max_attempts,
                                 backoff_base_seconds=2.0, backoff_max_seconds=30.0, delivery_timeout=timeout,
                                 worker_threads=1)
        subscribers = {"demo": SubscriberSettings("demo", url, ("order.status_changed",), Secret(secret))}
        dispatcher = Dispatcher(event_store, subscribers, settings, clock=clock or Clock(), jitter=lambda bound: bound)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.close()


def add(store, number: int, order: str = "1004", subscribers=("demo",)) -> str:
    event_id, created = store.add_event(event(number, order), dedupe_key=f"k{number}", order_key=f"c:{order}",
                                        subscribers=list(subscribers), now=1_800_000_000.0)
    assert created
    return event_id


def test_a_delivery_is_signed_and_verified_by_the_subscriber(make_dispatcher, event_store, subscriber_url):
    add(event_store, 1)
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events")
    assert dispatcher.drain_stream("demo", "c:1004") is None
    seen = received(subscriber_url)
    assert [record["webhook_id"] for record in seen["received"]] == ["evt_0001"]
    assert seen["received"][0]["verified"] is True
    assert seen["received"][0]["event"] == event(1)
    shown = event_store.get_event("evt_0001")["deliveries"][0]
    assert shown["state"] == "delivered" and shown["delivered_at"] == 1_800_000_000.0
    assert [entry["outcome"] for entry in shown["history"]] == ["delivered"]


def test_a_wrong_secret_is_rejected_by_the_subscriber_and_parked_as_dead(make_dispatcher, event_store, subscriber_url):
    add(event_store, 1)
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events", secret="whsec_" + "d3Jvbmc=")
    assert dispatcher.drain_stream("demo", "c:1004") is None
    assert received(subscriber_url)["received"] == []
    assert len(received(subscriber_url)["rejected"]) == 1
    delivery = event_store.get_event("evt_0001")["deliveries"][0]
    assert delivery["state"] == "dead" and "HTTP 401" in delivery["last_error"]


def test_down_then_slow_then_up_delivers_once_and_in_order(make_dispatcher, event_store, subscriber_url):
    clock = Clock()
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events", timeout=0.3, clock=clock)
    for number in (1, 2, 3):
        add(event_store, number)

    behave(subscriber_url, "down")
    assert dispatcher.drain_stream("demo", "c:1004") == 2.0  # 503: retry after the first backoff step
    assert dispatcher.drain_stream("demo", "c:1004") == pytest.approx(2.0)  # not due yet: nothing sent
    clock.now += 2.0

    behave(subscriber_url, "slow", delay=1.0)
    assert dispatcher.drain_stream("demo", "c:1004") == 4.0  # timed out: the next step doubles
    clock.now += 4.0

    behave(subscriber_url, "up")
    assert dispatcher.drain_stream("demo", "c:1004") is None
    ids = [record["webhook_id"] for record in received(subscriber_url)["received"]]
    # The slow attempt was recorded by the subscriber after the gateway gave up on it: a subscriber must
    # deduplicate by webhook-id, and the gateway never reports a timed-out attempt as delivered.
    assert [i for n, i in enumerate(ids) if i not in ids[:n]] == ["evt_0001", "evt_0002", "evt_0003"]
    history = event_store.get_event("evt_0001")["deliveries"][0]["history"]
    assert [(entry["outcome"], entry["status_code"]) for entry in history] == [
        ("failed", 503), ("failed", None), ("delivered", 204)]
    assert "timed out" in history[1]["error"]


def test_other_orders_are_not_held_up_by_a_failing_one(make_dispatcher, event_store, subscriber_url):
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events")
    add(event_store, 1, order="1004")
    add(event_store, 2, order="1005")
    behave(subscriber_url, "error")
    assert dispatcher.drain_stream("demo", "c:1004") is not None
    behave(subscriber_url, "up")
    assert dispatcher.drain_stream("demo", "c:1005") is None
    assert [r["webhook_id"] for r in received(subscriber_url)["received"]] == ["evt_0002"]


def test_after_max_attempts_a_delivery_is_dead_and_the_next_event_goes_out(make_dispatcher, event_store,
                                                                          subscriber_url):
    clock = Clock()
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events", max_attempts=3, clock=clock)
    add(event_store, 1)
    add(event_store, 2)
    behave(subscriber_url, "down")
    assert dispatcher.drain_stream("demo", "c:1004") == 2.0
    clock.now += 2.0
    assert dispatcher.drain_stream("demo", "c:1004") == 4.0
    clock.now += 4.0
    # the third failure parks the first event; the second event is tried at once (and fails: still down)
    assert dispatcher.drain_stream("demo", "c:1004") == 2.0
    first = event_store.get_event("evt_0001")["deliveries"][0]
    assert first["state"] == "dead" and first["attempts"] == 3 and first["last_error"] == "HTTP 503"
    assert event_store.get_event("evt_0002")["deliveries"][0]["attempts"] == 1

    behave(subscriber_url, "up")
    clock.now += 2.0
    assert dispatcher.drain_stream("demo", "c:1004") is None
    assert [r["webhook_id"] for r in received(subscriber_url)["received"]] == ["evt_0002"]
    assert [e["event"]["id"] for e in event_store.list_events(state="dead")] == ["evt_0001"]

    assert event_store.redeliver("evt_0001", now=clock.now) == [("demo", "c:1004")]
    assert dispatcher.drain_stream("demo", "c:1004") is None
    assert [r["webhook_id"] for r in received(subscriber_url)["received"]] == ["evt_0002", "evt_0001"]
    assert event_store.get_event("evt_0001")["deliveries"][0]["state"] == "delivered"


def test_an_unreachable_subscriber_is_retried(make_dispatcher, event_store):
    add(event_store, 1)
    dispatcher = make_dispatcher(f"http://127.0.0.1:{closed_port()}/events")
    assert dispatcher.drain_stream("demo", "c:1004") == 2.0
    delivery = event_store.get_event("evt_0001")["deliveries"][0]
    assert delivery["state"] == "pending" and "could not reach" in delivery["last_error"]


def test_a_subscriber_no_longer_configured_parks_its_deliveries(make_dispatcher, event_store, subscriber_url):
    add(event_store, 1, subscribers=("gone",))
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events")
    assert dispatcher.drain_stream("gone", "c:1004") is None
    assert event_store.get_event("evt_0001")["deliveries"][0]["state"] == "dead"


def figure(name: str, **labels: str) -> float:
    """One sample of this process's metrics (0 while nothing was counted)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def delivery_figures(subscriber: str) -> dict[str, float]:
    """The attempts counted for a subscriber by outcome, and its lag histogram's count, sum and two buckets."""
    figures = {outcome: figure("order_gateway_event_deliveries_total", subscriber=subscriber, outcome=outcome)
               for outcome in ("delivered", "failed", "dead")}
    lag = "order_gateway_event_delivery_lag_seconds"
    figures.update(lag_count=figure(f"{lag}_count", subscriber=subscriber),
                   lag_sum=figure(f"{lag}_sum", subscriber=subscriber),
                   lag_within_1s=figure(f"{lag}_bucket", subscriber=subscriber, le="1.0"),
                   lag_within_2_5s=figure(f"{lag}_bucket", subscriber=subscriber, le="2.5"))
    return figures


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def test_every_attempt_is_counted_by_outcome_and_a_delivery_observes_its_lag(make_dispatcher, event_store,
                                                                            subscriber_url):
    clock = Clock()
    dispatcher = make_dispatcher(f"{subscriber_url}/subscriber/events", clock=clock)
    add(event_store, 1)  # stored at the clock's start
    before = delivery_figures("demo")
    behave(subscriber_url, "down")
    assert dispatcher.drain_stream("demo", "c:1004") == 2.0
    assert grown(before, delivery_figures("demo")) == {"delivered": 0, "failed": 1, "dead": 0, "lag_count": 0,
                                                        "lag_sum": 0, "lag_within_1s": 0, "lag_within_2_5s": 0}
    clock.now += 2.0
    behave(subscriber_url, "up")
    assert dispatcher.drain_stream("demo", "c:1004") is None
    # two seconds from storing the event to delivering it, the failed attempt and its wait included
    assert grown(before, delivery_figures("demo")) == {"delivered": 1, "failed": 1, "dead": 0, "lag_count": 1,
                                                        "lag_sum": 2.0, "lag_within_1s": 0, "lag_within_2_5s": 1}

    add(event_store, 2)
    refused = make_dispatcher(f"{subscriber_url}/subscriber/events", secret="whsec_" + "d3Jvbmc=", clock=clock)
    assert refused.drain_stream("demo", "c:1004") is None
    assert grown(before, delivery_figures("demo"))["dead"] == 1
    assert grown(before, delivery_figures("demo"))["lag_count"] == 1  # a dead delivery has no lag


def test_a_delivery_parked_for_a_subscriber_no_longer_configured_counts_as_dead(make_dispatcher, event_store,
                                                                               subscriber_url):
    add(event_store, 1, subscribers=("gone",))
    before = delivery_figures("gone")
    assert make_dispatcher(f"{subscriber_url}/subscriber/events").drain_stream("gone", "c:1004") is None
    assert grown(before, delivery_figures("gone")) == {"delivered": 0, "failed": 0, "dead": 1, "lag_count": 0,
                                                        "lag_sum": 0, "lag_within_1s": 0, "lag_within_2_5s": 0}


def test_the_standard_webhooks_library_verifies_our_signature():
    body = json.dumps(event(1)).encode()
    headers = sign_delivery(SECRET, "evt_0001", int(time.time()), body)
    assert Webhook(SECRET).verify(body, headers) == event(1)
    tampered = body.replace(b"SO-1004", b"SO-1005")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)


def test_the_embedded_queue_commits_without_waiting_for_the_disk(tmp_path):
    """The queue only wakes the worker (the event store is durable): NORMAL in WAL, not FULL, and not OFF."""
    from gateway.config import EventSettings
    from gateway.events.queue import make_huey

    huey = make_huey(EventSettings(database=tmp_path / "events.sqlite3", queue_database=tmp_path / "queue.sqlite3",
                                   redis_url=None, max_attempts=3, backoff_base_seconds=1.0, backoff_max_seconds=10.0,
                                   delivery_timeout=5.0, worker_threads=1))
    try:
        huey.storage.enqueue(b"task", 0)
        with huey.storage.db() as cursor:
            assert cursor.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert huey.storage.dequeue() == b"task"
    finally:
        huey.storage.close()
