"""Retention: the event worker removes settled events past `[events] retention_days`, expired Idempotency-Keys,
old exchanges and update jobs that ended long ago, in bounded batches, on its schedule, and counts what it removed —
with SQLite and with Redis."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from gateway.config import EventSettings
from gateway.events.redis_store import RedisEventStore
from gateway.events.retention import Retention
from gateway.events.store import EventStore, SqliteEventStore
from gateway.idempotency import IdempotencyStore, StoredResponse
from gateway.idempotency.redis_store import RedisIdempotencyStore
from gateway.idempotency.sqlite_store import SqliteIdempotencyStore
from gateway.journal import Exchange, ExchangeJournal
from gateway.journal.redis_store import RedisExchangeJournal
from gateway.journal.sqlite_store import SqliteExchangeJournal
from tests.processes import start_worker, stop, write_sandbox_config_copy

DAY = 86400.0
SETTINGS = EventSettings(database=None, queue_database=None, redis_url=None, max_attempts=3,
                         backoff_base_seconds=1.0, backoff_max_seconds=10.0, delivery_timeout=1.0, worker_threads=1)
RESPONSE = StoredResponse(200, (("Content-Type", "application/json"),), b"{}")
JOURNAL_AGE = 7 * DAY


@dataclass
class Stores:
    """The three stores retention works on, of one kind."""

    kind: str
    events: EventStore
    idempotency: IdempotencyStore
    journal: ExchangeJournal

    def close(self) -> None:
        self.events.close()
        self.idempotency.close()
        self.journal.close()


@pytest.fixture(params=["sqlite", "redis"])
def stores(request, tmp_path):
    """Fresh event, Idempotency-Key and journal stores in SQLite files or under an unused Redis prefix."""
    journal = {"max_age_seconds": JOURNAL_AGE, "max_count": 1000, "record_bodies": False}
    if request.param == "sqlite":
        made = Stores("sqlite", SqliteEventStore(tmp_path / "events.sqlite3"),
                      SqliteIdempotencyStore(tmp_path / "idempotency.sqlite3"),
                      SqliteExchangeJournal(tmp_path / "journal.sqlite3", **journal))
    else:
        url, prefix = request.getfixturevalue("redis_url"), f"test:{uuid.uuid4().hex}:"
        made = Stores("redis", RedisEventStore(url, prefix=prefix + "events:"),
                      RedisIdempotencyStore(url, prefix=prefix + "idempotency:"),
                      RedisExchangeJournal(url, prefix=prefix + "journal:", **journal))
    yield made
    made.close()


def settled_event(store: EventStore, name: str, settled_at: float, *, subscribers=("crm",)) -> str:
    """An event whose deliveries were all delivered at `settled_at`; its id."""
    event = {"id": f"evt_{name}", "type": "order.picked", "occurred_at": "2026-11-23T12:00:00+00:00",
             "source": {"backend": "ongoing", "connection": "ongoing-demo"}, "order": {"backend_order_id": "1"}}
    store.add_event(event, dedupe_key=f"ongoing-demo:sandbox:{name}", order_key="ongoing-demo:1",
                    subscribers=list(subscribers), now=settled_at - 60)
    for subscriber in subscribers:
        store.record_attempt(event["id"], subscriber, outcome="delivered", status_code=200, now=settled_at)
    return event["id"]


def removed_total(kind: str) -> float:
    return REGISTRY.get_sample_value("order_gateway_retention_removed_total", {"kind": kind}) or 0.0


def exchange(at: float) -> Exchange:
    return Exchange(id=f"exc_{uuid.uuid4().hex}", at=at, request_id="req-1", caller="shop", connection="ongoing-demo",
                    backend="ongoing", operation="cancel_order", order_ids=("1001",), request={"body": None},
                    reply=None, duration_ms=1.0, outcome="ok")


def test_a_run_removes_what_retention_allows_of_each_kind_and_counts_it(stores):
    now = time.time()
    old = settled_event(stores.events, "old", now - 30 * DAY - 1)
    dead = settled_event(stores.events, "dead", now - 40 * DAY, subscribers=())  # nobody wanted it
    recent = settled_event(stores.events, "recent", now - 29 * DAY)
    stores.events.add_event({"id": "evt_pending", "type": "order.picked", "occurred_at": "2026-01-01T00:00:00Z"},
                            dedupe_key="pending", order_key="o", subscribers=["crm"], now=now - 90 * DAY)
    stores.idempotency.begin("expired", "fp", lease_seconds=0.2)
    stores.idempotency.complete("expired", "fp", RESPONSE, ttl_seconds=0.2)
    stores.idempotency.begin("kept", "fp", lease_seconds=60)
    stores.journal.record(exchange(now))  # the journal's own first prune
    stores.journal.record(exchange(now - JOURNAL_AGE - 60))
    time.sleep(0.3)
    before = {kind: removed_total(kind) for kind in ("events", "idempotency_keys", "exchanges")}

    removed = Retention(stores.events, stores.idempotency, stores.journal, SETTINGS).run_once()

    # Redis expires Idempotency-Keys by itself: retention finds none there
    assert removed == {"events": 2, "idempotency_keys": 1 if stores.kind == "sqlite" else 0, "exchanges": 1}
    assert {kind: removed_total(kind) - before[kind] for kind in before} == removed
    assert stores.events.get_event(old) is None and stores.events.get_event(dead) is None
    assert [item["event"]["id"] for item in stores.events.list_events()] == ["evt_pending", recent]
    assert stores.idempotency.begin("expired", "other", lease_seconds=1).state == "new"
    assert stores.idempotency.begin("kept", "other", lease_seconds=1).state == "mismatch"
    assert len(stores.journal.list()) == 1


def test_retention_days_is_the_setting(stores):
    now = time.time()
    settled_event(stores.events, "two-days", now - 2 * DAY - 1)
    settled_event(stores.events, "one-day", now - 1 * DAY + 60)
    removed = Retention(stores.events, None, None, replace(SETTINGS, retention_days=2)).run_once()
    assert removed == {"events": 1}
    assert [item["event"]["id"] for item in stores.events.list_events()] == ["evt_one-day"]


def test_a_run_goes_in_batches_and_stops_at_its_bound_leaving_the_rest_to_the_next(stores, monkeypatch):
    now = time.time()
    for number in range(7):
        settled_event(stores.events, f"e{number}", now - 31 * DAY - number)
    batches = []
    purge = stores.events.purge_settled

    def counted_purge(**arguments):
        batches.append(arguments["limit"])
        return purge(**arguments)

    monkeypatch.setattr(stores.events, "purge_settled", counted_purge)
    retention = Retention(stores.events, None, None, replace(SETTINGS, retention_batch_size=2), max_batches=3,
                          pause_seconds=0)
    assert retention.run_once() == {"events": 6}
    assert batches == [2, 2, 2]
    # the longest settled went first
    assert [item["event"]["id"] for item in stores.events.list_events()] == ["evt_e0"]
    assert retention.run_once() == {"events": 1}
    assert retention.run_once() == {"events": 0}
    assert batches == [2, 2, 2, 2, 2]  # a short batch ends the run


def test_a_stop_ends_a_run_between_two_batches(stores):
    now = time.time()
    for number in range(5):
        settled_event(stores.events, f"e{number}", now - 31 * DAY - number)
    stop = threading.Event()
    stop.set()
    retention = Retention(stores.events, None, None, replace(SETTINGS, retention_batch_size=2))
    assert retention.run_once(stop) == {"events": 2}


def test_a_failing_kind_is_logged_and_the_others_go_on(stores, monkeypatch, caplog):
    now = time.time()
    settled_event(stores.events, "old", now - 31 * DAY)

    def unavailable(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(stores.idempotency, "purge_expired", unavailable)
    stores.journal.record(exchange(now))
    with caplog.at_level(logging.WARNING, logger="gateway.retention"):
        removed = Retention(stores.events, stores.idempotency, stores.journal, SETTINGS).run_once()
    assert removed == {"events": 1, "idempotency_keys": 0, "exchanges": 0}
    (record,) = [record for record in caplog.records if record.name == "gateway.retention"]
    assert "idempotency_keys" in record.getMessage() and record.exc_info is None


def test_the_schedule_runs_at_start_and_then_every_interval(stores):
    now = time.time()
    first = settled_event(stores.events, "first", now - 31 * DAY)
    retention = Retention(stores.events, None, None, replace(SETTINGS, retention_interval_seconds=0.1))
    stop = threading.Event()
    thread = retention.keep_running(stop)
    try:
        wait_until(lambda: stores.events.get_event(first) is None)
        later = settled_event(stores.events, "later", time.time() - 31 * DAY)
        wait_until(lambda: stores.events.get_event(later) is None)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def wait_until(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "retention did not run"
        time.sleep(0.05)


def test_the_event_worker_runs_retention_on_its_schedule_and_counts_it(tmp_path):
    config = Path(write_sandbox_config_copy(tmp_path))
    config.write_text(config.read_text().replace("[events]\n", "[events]\nretention_interval_seconds = 0.2\n", 1))
    now = time.time()
    events = SqliteEventStore(tmp_path / "events.sqlite3")
    keys = SqliteIdempotencyStore(tmp_path / "idempotency.sqlite3")
    root = tmp_path / "metrics"
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"GATEWAY_CONFIG": str(config), "GATEWAY_METRICS_DIR": str(root),
                "ONGOING_URL": "http://127.0.0.1:9/ongoing/Service.asmx",
                "DEMO_SUBSCRIBER_URL": "http://127.0.0.1:9/subscriber/events"})
    worker = None
    try:
        first = settled_event(events, "first", now - 31 * DAY, subscribers=("demo",))
        kept = settled_event(events, "kept", now - 29 * DAY, subscribers=("demo",))
        keys.begin("expired", "fp", lease_seconds=10, now=now - DAY)
        keys.complete("expired", "fp", RESPONSE, ttl_seconds=60, now=now - DAY)
        worker = start_worker(env)
        wait_until(lambda: events.get_event(first) is None, seconds=30)
        later = settled_event(events, "later", time.time() - 31 * DAY, subscribers=("demo",))
        wait_until(lambda: events.get_event(later) is None)
        assert events.get_event(kept) is not None
        assert keys.begin("expired", "other", lease_seconds=1).state == "new"
        figures = CollectorRegistry()
        multiprocess.MultiProcessCollector(figures, path=str(root / f"worker-{worker.pid}"))
        assert figures.get_sample_value("order_gateway_retention_removed_total", {"kind": "events"}) == 2
        assert figures.get_sample_value("order_gateway_retention_removed_total", {"kind": "idempotency_keys"}) == 1
        assert worker.poll() is None
    finally:
        if worker is not None:
            stop(worker)
        events.close()
        keys.close()
    assert worker.returncode == 0


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_run_removes_update_jobs_that_ended_long_enough_ago_and_keeps_queued_ones(kind, tmp_path, request):
    from gateway.jobs import DONE, FAILED, NewJob, SqliteJobStore
    from gateway.jobs.redis_store import RedisJobStore

    if kind == "sqlite":
        jobs = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        jobs = RedisJobStore(request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex}:jobs:")
    now = time.time()

    def job(name: str, ended_at: float | None, state: str = DONE) -> str:
        (stored,) = jobs.add_jobs([NewJob(id=f"upd_{name}", lane="ongoing-demo", connection="ongoing-demo",
                                          backend="ongoing", operation="UpdateOrder", order_ids=("SO-1",),
                                          items=(), idempotent=True)], now=(ended_at or now) - 60)
        if ended_at is not None:
            jobs.claim(stored["id"], "worker", lease_seconds=30, now=ended_at)
            jobs.release(stored["id"], "worker", state=state, result={"status": 200, "body": {}}, now=ended_at)
        return stored["id"]

    old, old_failed = job("old", now - 30 * DAY - 1), job("old-failed", now - 31 * DAY, FAILED)
    recent, queued = job("recent", now - 29 * DAY), job("queued", None)
    events = SqliteEventStore(tmp_path / "events.sqlite3")
    before = removed_total("jobs")
    try:
        removed = Retention(events, None, None, SETTINGS, jobs=jobs, job_retention_days=30).run_once()
        assert removed["jobs"] == 2 and removed_total("jobs") - before == 2
        assert jobs.get_job(old) is None and jobs.get_job(old_failed) is None
        assert {listed["id"] for listed in jobs.list_jobs()} == {recent, queued}
    finally:
        events.close()
        jobs.close()
