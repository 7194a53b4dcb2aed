"""The event store contract: SQLite and Redis stores behave alike, from one thread, many threads and many processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from gateway.events.redis_store import RedisEventStore
from gateway.events.store import DeliveryNotFound, EventStore, EventStoreError, SqliteEventStore
from tests.redis_server import redis_url_fixture
from tests.store_locations import StoreLocation, opened_stores, store_location

# Fractions of a second on purpose: both stores must give back exactly the float they were given.
T0 = 1_714_557_600.123456
ORDER = "ongoing:DEMO:1001"
OTHER_ORDER = "ongoing:DEMO:1002"
CREATED, CHANGED, PICKED = "order.created", "order.status_changed", "order.picked"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store_redis_url(tmp_path_factory):
    """One redis-server for this module's tests; each test gets its own key prefix."""
    yield from redis_url_fixture(tmp_path_factory)


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path) -> StoreLocation:
    """A fresh place for a store: a file in a folder that does not exist yet, or an unused Redis prefix."""
    return store_location(request, tmp_path, "events.sqlite3", (SqliteEventStore, RedisEventStore))


@pytest.fixture
def open_store(location):
    """Opens store instances on the test's data and closes them all afterwards."""
    yield from opened_stores(location)


@pytest.fixture
def store(open_store) -> EventStore:
    """A store on fresh data."""
    return open_store()


def make_event(event_id: str, *, type: str = CHANGED, occurred_at: str = "2024-05-01T10:00:00Z",
               order: dict | None = None) -> dict:
    """A canonical-looking event document."""
    event = {"id": event_id, "type": type, "occurred_at": occurred_at,
             "source": {"backend": "ongoing", "connection": "ongoing-demo"},
             "order": order if order is not None else {"backend_order_id": 1001, "order_number": "SO-1001"},
             "raw": {"note": "åäö ✓", "amount": 12.5, "lines": [1, 2, 3]}}
    return event


def add(store: EventStore, event: dict, *, order_key: str = ORDER, subscribers=("crm", "shop"),
        dedupe_key: str | None = None, now: float = T0) -> tuple[str, bool]:
    """add_event with the defaults most tests want (the dedupe key derived from the id)."""
    return store.add_event(event, dedupe_key=dedupe_key or f"dedupe:{event['id']}", order_key=order_key,
                           subscribers=subscribers, now=now)


def pending(subscriber: str, now: float = T0) -> dict:
    """A delivery as add_event stores it."""
    return {"subscriber": subscriber, "state": "pending", "attempts": 0, "next_attempt_at": now,
            "last_error": None, "delivered_at": None, "history": []}


def ids(items: list[dict]) -> list[str]:
    """The event ids of list_events' items, in order."""
    return [item["event"]["id"] for item in items]


def drain_in_order(store: EventStore, subscriber: str, order_key: str, now: float = T0) -> list[str]:
    """Deliver a stream head by head; the event ids in the order the store handed them out."""
    handed_out = []
    while (head := store.next_delivery(subscriber, order_key)) is not None:
        handed_out.append(head["event_id"])
        store.record_attempt(head["event_id"], subscriber, outcome="delivered", status_code=200, now=now)
    return handed_out


# --- adding and reading -------------------------------------------------------------------------------------------

def test_an_added_event_is_read_back_with_one_pending_delivery_per_subscriber(store):
    event = make_event("evt_1")

    assert add(store, event, subscribers=["shop", "crm", "shop"]) == ("evt_1", True)

    assert store.get_event("evt_1") == {"event": event, "received_at": T0,
                                        "deliveries": [pending("crm"), pending("shop")]}
    assert store.get_event("evt_unknown") is None


def test_an_event_without_subscribers_is_stored_without_deliveries(store):
    assert add(store, make_event("evt_1"), subscribers=[]) == ("evt_1", True)

    assert store.get_event("evt_1")["deliveries"] == []
    assert store.pending_streams() == []
    assert store.next_delivery("crm", ORDER) is None


def test_a_known_dedupe_key_stores_nothing_and_answers_the_first_event_id(store):
    first = make_event("evt_first")
    add(store, first, dedupe_key="ongoing:webhook:77")

    again = make_event("evt_second", type=PICKED, occurred_at="2024-05-02T00:00:00Z")
    result = add(store, again, dedupe_key="ongoing:webhook:77", order_key=OTHER_ORDER, subscribers=["erp"],
                 now=T0 + 5)

    assert result == ("evt_first", False)
    assert store.get_event("evt_second") is None
    assert ids(store.list_events()) == ["evt_first"]
    assert store.get_event("evt_first") == {"event": first, "received_at": T0,
                                            "deliveries": [pending("crm"), pending("shop")]}
    assert store.pending_streams() == [("crm", ORDER), ("shop", ORDER)]


@pytest.mark.parametrize(("event", "problem"), [
    ({"type": CHANGED, "occurred_at": "2024-05-01T10:00:00Z"}, "'id'"),
    ({"id": 7, "type": CHANGED, "occurred_at": "2024-05-01T10:00:00Z"}, "'id'"),
    ({"id": "evt_1", "occurred_at": "2024-05-01T10:00:00Z"}, "'type'"),
    ({"id": "evt_1", "type": CHANGED}, "'occurred_at'"),
    ({"id": "evt_1", "type": CHANGED, "occurred_at": ""}, "'occurred_at'"),
    ({"id": "evt_1", "type": CHANGED, "occurred_at": "2024\x00"}, "NUL"),
    ({"id": "evt_1", "type": CHANGED, "occurred_at": "2024-05-01T10:00:00Z", "raw": {1, 2}}, "JSON-able"),
    ({"id": "evt_1", "type": CHANGED, "occurred_at": "2024-05-01T10:00:00Z", "amount": float("nan")}, "JSON-able"),
])
def test_an_event_the_store_cannot_keep_is_refused_and_nothing_is_stored(store, event, problem):
    with pytest.raises(EventStoreError, match=problem):
        store.add_event(event, dedupe_key="k", order_key=ORDER, subscribers=["crm"], now=T0)

    assert store.list_events() == []
    assert store.pending_streams() == []


def test_an_event_id_that_is_taken_is_refused_under_another_dedupe_key(store):
    add(store, make_event("evt_1"), dedupe_key="first")

    with pytest.raises(EventStoreError, match="already stored"):
        add(store, make_event("evt_1", type=PICKED), dedupe_key="second", subscribers=["erp"])

    assert ids(store.list_events()) == ["evt_1"]
    assert store.get_event("evt_1")["event"]["type"] == CHANGED
    assert store.pending_streams() == [("crm", ORDER), ("shop", ORDER)]
    # The refused call did not claim its dedupe key either.
    assert add(store, make_event("evt_2"), dedupe_key="second") == ("evt_2", True)


# --- listing ------------------------------------------------------------------------------------------------------

def test_events_are_listed_newest_first_by_insertion_up_to_the_limit(store):
    # occurred_at runs backwards on purpose: the list follows insertion, not occurrence.
    for number in range(1, 6):
        add(store, make_event(f"evt_{number}", occurred_at=f"2024-05-01T10:00:0{9 - number}Z"), now=T0 + number)

    assert ids(store.list_events()) == ["evt_5", "evt_4", "evt_3", "evt_2", "evt_1"]
    assert ids(store.list_events(limit=2)) == ["evt_5", "evt_4"]
    assert store.list_events(limit=0) == []
    assert store.list_events() == [store.get_event(f"evt_{number}") for number in (5, 4, 3, 2, 1)]


@pytest.fixture
def filter_fixture(store):
    """Four events: numeric and string order ids, one without an order, in three delivery states."""
    add(store, make_event("evt_1", type=CREATED, order={"backend_order_id": 101, "order_number": "A-1"}))
    add(store, make_event("evt_2", order={"backend_order_id": 102, "order_number": "A-2"}))
    add(store, make_event("evt_3", order={"backend_order_id": 103, "order_number": "101"}))
    event_4 = make_event("evt_4", type=PICKED)
    del event_4["order"]
    add(store, event_4, subscribers=[])
    store.record_attempt("evt_2", "crm", outcome="delivered", status_code=204, now=T0 + 1)
    store.record_attempt("evt_3", "crm", outcome="dead", status_code=410, error="HTTP 410", now=T0 + 1)
    return store


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["evt_4", "evt_3", "evt_2", "evt_1"]),
    ({"order_id": "101"}, ["evt_3", "evt_1"]),  # evt_1's backend_order_id 101 and evt_3's order_number "101"
    ({"order_id": "A-2"}, ["evt_2"]),
    ({"order_id": "102"}, ["evt_2"]),
    ({"order_id": "999"}, []),
    ({"type": CHANGED}, ["evt_3", "evt_2"]),
    ({"type": PICKED}, ["evt_4"]),
    ({"type": "order.cancelled"}, []),
    ({"state": "pending"}, ["evt_3", "evt_2", "evt_1"]),
    ({"state": "delivered"}, ["evt_2"]),
    ({"state": "dead"}, ["evt_3"]),
    ({"type": CHANGED, "state": "dead"}, ["evt_3"]),
    ({"order_id": "101", "type": CREATED}, ["evt_1"]),
    ({"order_id": "101", "state": "dead"}, ["evt_3"]),
    ({"order_id": "101", "limit": 1}, ["evt_3"]),
    ({"state": "pending", "limit": 2}, ["evt_3", "evt_2"]),
])
def test_list_filters(filter_fixture, filters, expected):
    store = filter_fixture

    assert store.list_events(**filters) == [store.get_event(event_id) for event_id in expected]


def test_listing_by_an_unknown_state_is_refused(store):
    with pytest.raises(ValueError, match="unknown delivery state"):
        store.list_events(state="lost")


def test_the_state_filter_follows_every_change_of_state(filter_fixture):
    store = filter_fixture
    store.record_attempt("evt_3", "shop", outcome="dead", error="HTTP 410", now=T0 + 2)
    assert ids(store.list_events(state="pending")) == ["evt_2", "evt_1"]
    assert ids(store.list_events(state="dead")) == ["evt_3"]

    store.redeliver("evt_3", now=T0 + 3)

    assert ids(store.list_events(state="dead")) == []
    assert ids(store.list_events(state="pending")) == ["evt_3", "evt_2", "evt_1"]


# --- listing by connection, and after a cursor -------------------------------------------------------------------

# (event id, its source's connection) in the order they are stored; None: an event that names no connection
CONNECTION_SET = [("evt_1", "a"), ("evt_2", "b"), ("evt_3", "a"), ("evt_4", "c"), ("evt_5", "b"), ("evt_6", None),
                  ("evt_7", "a")]


@pytest.fixture
def connection_fixture(store):
    """CONNECTION_SET: odd numbers about order 1001, even ones about 1002; the first three created, the others
    changed; evt_3 and evt_5 dead."""
    for number, (event_id, connection) in enumerate(CONNECTION_SET, 1):
        event = make_event(event_id, type=CREATED if number <= 3 else CHANGED,
                           order={"backend_order_id": 1000 + 2 - number % 2, "order_number": f"SO-{number}"})
        if connection is None:
            del event["source"]["connection"]
        else:
            event["source"]["connection"] = connection
        add(store, event, now=T0 + number)
    for event_id in ("evt_3", "evt_5"):
        store.record_attempt(event_id, "crm", outcome="dead", status_code=410, error="HTTP 410", now=T0 + 10)
    return store


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, [7, 6, 5, 4, 3, 2, 1]),
    ({"connections": {"a"}}, [7, 3, 1]),
    ({"connections": ["a", "b"]}, [7, 5, 3, 2, 1]),
    ({"connections": ("a", "b", "c")}, [7, 5, 4, 3, 2, 1]),  # one that names no connection is no one's
    ({"connections": set()}, []),
    ({"connections": {"elsewhere"}}, []),
    ({"connections": {"a"}, "limit": 2}, [7, 3]),  # the limit counts what the filter lets through
    ({"connections": {"b", "c"}, "limit": 1}, [5]),
    ({"connections": {"a", "b"}, "order_id": "1002"}, [2]),
    ({"connections": {"a"}, "order_id": "1002"}, []),
    ({"connections": {"b", "elsewhere"}, "state": "dead"}, [5]),
    ({"connections": {"a", "c"}, "type": CHANGED}, [7, 4]),
    ({"before": "evt_5"}, [4, 3, 2, 1]),
    ({"before": "evt_5", "limit": 2}, [4, 3]),
    ({"before": "evt_1"}, []),
    ({"before": "evt_unknown"}, []),
    ({"before": "evt_7", "connections": {"a"}}, [3, 1]),
    ({"before": "evt_7", "connections": {"a", "b"}, "state": "dead"}, [5, 3]),
    ({"before": "evt_5", "type": CREATED}, [3, 2, 1]),
    # a cursor the connections filter hides lists nothing, as an unknown one: it tells nothing of what it hides
    ({"before": "evt_5", "connections": {"a"}}, []),
    ({"before": "evt_6", "connections": {"a", "b", "c"}}, []),
], ids=lambda value: json.dumps(value, default=sorted).replace(" ", "") if isinstance(value, dict) else None)
def test_the_connections_filter_and_the_cursor_alone_and_with_the_others(connection_fixture, filters, expected):
    store = connection_fixture

    assert store.list_events(**filters) == [store.get_event(f"evt_{number}") for number in expected]


def test_paging_with_the_cursor_lists_every_event_of_the_connections_once(connection_fixture):
    store, pages, before = connection_fixture, [], None
    while page := store.list_events(connections={"a", "b"}, limit=2, before=before):
        pages.append(ids(page))
        before = page[-1]["event"]["id"]

    assert pages == [["evt_7", "evt_5"], ["evt_3", "evt_2"], ["evt_1"]]


def test_the_connections_filter_finds_sparse_matches_page_after_page(store, monkeypatch):
    monkeypatch.setattr("gateway.events.redis_store.LIST_PAGE_SIZE", 3)
    for number in range(40):
        event = make_event(f"evt_{number:02}")
        event["source"]["connection"] = "rare" if number % 10 == 0 else "common"
        add(store, event, now=T0 + number)

    assert ids(store.list_events(connections={"rare"}, limit=3)) == ["evt_30", "evt_20", "evt_10"]
    assert ids(store.list_events(connections={"rare"}, before="evt_20")) == ["evt_10", "evt_00"]
    assert ids(store.list_events(connections={"rare"}, order_id="1001", type=CHANGED, state="pending",
                                 limit=10)) == ["evt_30", "evt_20", "evt_10", "evt_00"]


@pytest.mark.parametrize("connections", ["a", 7, [7], [b"a"]])
def test_connections_that_are_not_a_collection_of_names_are_refused(store, connections):
    with pytest.raises(TypeError):
        store.list_events(connections=connections)


def test_an_event_file_of_the_previous_version_gains_the_connection_index(tmp_path):
    path = tmp_path / "old-events.sqlite3"
    SqliteEventStore(path).close()
    with sqlite3.connect(path) as db:  # as version 3 left it: no index of the events' connections
        db.execute("DROP INDEX events_by_connection")
        db.execute("PRAGMA user_version = 3")
    db.close()
    reopened = SqliteEventStore(path)
    try:
        event = make_event("evt_after_upgrade")
        add(reopened, event)
        assert ids(reopened.list_events(connections={"ongoing-demo"})) == ["evt_after_upgrade"]
    finally:
        reopened.close()
    with sqlite3.connect(path) as db:
        plan = " ".join(row[3] for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE json_extract(body, '$.source.connection') IN (?)"
            " ORDER BY seq DESC LIMIT 5", ("ongoing-demo",)))
    db.close()
    assert "USING INDEX events_by_connection" in plan


# --- the next delivery of a stream --------------------------------------------------------------------------------

def test_a_stream_goes_out_by_occurred_at_then_by_insertion(store):
    add(store, make_event("evt_late", occurred_at="2024-05-01T10:00:02Z"))
    add(store, make_event("evt_early_a", occurred_at="2024-05-01T10:00:01Z"))
    add(store, make_event("evt_early_b", occurred_at="2024-05-01T10:00:01Z"))
    add(store, make_event("evt_other_order", occurred_at="2024-05-01T09:00:00Z"), order_key=OTHER_ORDER)

    assert store.next_delivery("crm", ORDER) == {"event_id": "evt_early_a", "event": store.get_event(
        "evt_early_a")["event"], "received_at": T0, "trace_context": {}, "attempts": 0, "next_attempt_at": T0}
    assert drain_in_order(store, "crm", ORDER) == ["evt_early_a", "evt_early_b", "evt_late"]
    # Each subscriber and each order is a stream of its own.
    assert store.next_delivery("shop", ORDER)["event_id"] == "evt_early_a"
    assert drain_in_order(store, "crm", OTHER_ORDER) == ["evt_other_order"]
    assert store.next_delivery("crm", "no-such-order") is None
    assert store.next_delivery("nobody", ORDER) is None


def test_a_failed_head_that_is_not_due_still_blocks_its_stream(store):
    add(store, make_event("evt_1", occurred_at="2024-05-01T10:00:00Z"))
    add(store, make_event("evt_2", occurred_at="2024-05-01T10:00:01Z"))

    store.record_attempt("evt_1", "crm", outcome="failed", status_code=503, error="HTTP 503",
                         next_attempt_at=T0 + 60, now=T0 + 1)

    head = store.next_delivery("crm", ORDER)
    assert (head["event_id"], head["attempts"], head["next_attempt_at"]) == ("evt_1", 1, T0 + 60)


def test_a_dead_head_lets_the_next_event_through(store):
    add(store, make_event("evt_1", occurred_at="2024-05-01T10:00:00Z"))
    add(store, make_event("evt_2", occurred_at="2024-05-01T10:00:01Z"))

    store.record_attempt("evt_1", "crm", outcome="dead", status_code=400, error="refused", now=T0 + 1)

    assert store.next_delivery("crm", ORDER)["event_id"] == "evt_2"
    assert store.next_delivery("shop", ORDER)["event_id"] == "evt_1"
    assert store.get_event("evt_1")["deliveries"][0]["state"] == "dead"


# --- recording attempts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("outcome", "status_code", "error", "next_attempt_at", "expected"), [
    ("delivered", 200, None, None,
     {"state": "delivered", "attempts": 1, "next_attempt_at": None, "last_error": None, "delivered_at": T0 + 3}),
    ("failed", 503, "HTTP 503", T0 + 30,
     {"state": "pending", "attempts": 1, "next_attempt_at": T0 + 30, "last_error": "HTTP 503", "delivered_at": None}),
    ("failed", None, "timed out after 10 s", None,  # no retry time: due again at once
     {"state": "pending", "attempts": 1, "next_attempt_at": T0 + 3, "last_error": "timed out after 10 s",
      "delivered_at": None}),
    ("dead", 422, "HTTP 422: refused", None,
     {"state": "dead", "attempts": 1, "next_attempt_at": None, "last_error": "HTTP 422: refused",
      "delivered_at": None}),
])
def test_record_attempt(store, outcome, status_code, error, next_attempt_at, expected):
    add(store, make_event("evt_1"))

    store.record_attempt("evt_1", "crm", outcome=outcome, status_code=status_code, error=error,
                         next_attempt_at=next_attempt_at, now=T0 + 3)

    crm, shop = store.get_event("evt_1")["deliveries"]
    assert crm == {"subscriber": "crm", **expected, "history": [
        {"attempt": 1, "at": T0 + 3, "outcome": outcome, "status_code": status_code, "error": error}]}
    assert shop == pending("shop")


def test_history_keeps_every_attempt_in_order(store):
    add(store, make_event("evt_1"))

    store.record_attempt("evt_1", "crm", outcome="failed", status_code=500, error="HTTP 500",
                         next_attempt_at=T0 + 10, now=T0 + 1)
    store.record_attempt("evt_1", "crm", outcome="failed", error="ConnectionError: could not reach the subscriber",
                         next_attempt_at=T0 + 30, now=T0 + 11)
    store.record_attempt("evt_1", "crm", outcome="delivered", status_code=202, now=T0 + 31)

    assert store.get_event("evt_1")["deliveries"][0] == {
        "subscriber": "crm", "state": "delivered", "attempts": 3, "next_attempt_at": None,
        # The last error stays for whoever looks at a delivery that succeeded only in the end.
        "last_error": "ConnectionError: could not reach the subscriber", "delivered_at": T0 + 31,
        "history": [
            {"attempt": 1, "at": T0 + 1, "outcome": "failed", "status_code": 500, "error": "HTTP 500"},
            {"attempt": 2, "at": T0 + 11, "outcome": "failed", "status_code": None,
             "error": "ConnectionError: could not reach the subscriber"},
            {"attempt": 3, "at": T0 + 31, "outcome": "delivered", "status_code": 202, "error": None},
        ]}


@pytest.mark.parametrize(("event_id", "subscriber", "outcome", "exception"), [
    ("evt_unknown", "crm", "delivered", DeliveryNotFound),
    ("evt_1", "erp", "failed", DeliveryNotFound),
    ("evt_1", "crm", "skipped", ValueError),
])
def test_record_attempt_refuses_what_it_does_not_know(store, event_id, subscriber, outcome, exception):
    add(store, make_event("evt_1"))

    with pytest.raises(exception):
        store.record_attempt(event_id, subscriber, outcome=outcome, now=T0 + 1)

    assert store.get_event("evt_1")["deliveries"] == [pending("crm"), pending("shop")]


# --- streams to resume, redelivery --------------------------------------------------------------------------------

def test_pending_streams_lists_each_stream_with_something_pending_once(store):
    assert store.pending_streams() == []
    add(store, make_event("evt_1"), subscribers=["crm", "shop"])
    add(store, make_event("evt_2"), subscribers=["crm", "shop"])
    add(store, make_event("evt_3"), order_key=OTHER_ORDER, subscribers=["crm"])

    assert store.pending_streams() == [("crm", ORDER), ("crm", OTHER_ORDER), ("shop", ORDER)]

    store.record_attempt("evt_3", "crm", outcome="delivered", now=T0 + 1)
    store.record_attempt("evt_1", "shop", outcome="dead", error="gone", now=T0 + 1)
    store.record_attempt("evt_1", "crm", outcome="failed", error="HTTP 500", next_attempt_at=T0 + 60, now=T0 + 1)
    assert store.pending_streams() == [("crm", ORDER), ("shop", ORDER)]

    store.record_attempt("evt_2", "shop", outcome="delivered", now=T0 + 2)
    drain_in_order(store, "crm", ORDER, now=T0 + 61)
    assert store.pending_streams() == []


def test_pending_counts_follow_every_change_of_state(store):
    assert store.pending_counts(["crm", "shop"]) == {"crm": 0, "shop": 0}
    add(store, make_event("evt_1"), subscribers=["crm", "shop"])
    add(store, make_event("evt_2"), subscribers=["crm", "shop"])
    add(store, make_event("evt_3"), order_key=OTHER_ORDER, subscribers=["crm"])
    assert store.pending_counts(["crm", "shop", "nobody"]) == {"crm": 3, "shop": 2, "nobody": 0}

    store.record_attempt("evt_1", "crm", outcome="failed", error="HTTP 500", next_attempt_at=T0 + 60, now=T0 + 1)
    store.record_attempt("evt_3", "crm", outcome="delivered", now=T0 + 1)
    store.record_attempt("evt_1", "shop", outcome="dead", error="gone", now=T0 + 1)
    assert store.pending_counts(["crm", "shop"]) == {"crm": 2, "shop": 1}

    store.redeliver("evt_3", now=T0 + 2)
    store.redeliver("evt_1", now=T0 + 2)
    assert store.pending_counts(["shop", "crm"]) == {"shop": 2, "crm": 3}
    drain_in_order(store, "crm", ORDER, now=T0 + 3)
    assert store.pending_counts(["crm"]) == {"crm": 1}


def test_pending_counts_count_no_further_than_the_limit(store):
    for number in range(5):
        add(store, make_event(f"evt_{number}"), subscribers=["crm"])
    assert store.pending_counts(["crm", "shop"], limit=3) == {"crm": 3, "shop": 0}
    assert store.pending_counts(["crm"], limit=5) == {"crm": 5}
    assert store.pending_counts([]) == {}


def test_redeliver_makes_every_delivery_pending_again_and_keeps_the_history(store):
    add(store, make_event("evt_1", occurred_at="2024-05-01T10:00:00Z"))
    add(store, make_event("evt_2", occurred_at="2024-05-01T10:00:01Z"), subscribers=["crm"])
    store.record_attempt("evt_1", "crm", outcome="delivered", status_code=200, now=T0 + 1)
    store.record_attempt("evt_1", "shop", outcome="failed", status_code=502, error="HTTP 502",
                         next_attempt_at=T0 + 10, now=T0 + 1)
    store.record_attempt("evt_1", "shop", outcome="dead", status_code=400, error="HTTP 400", now=T0 + 10)
    assert store.pending_streams() == [("crm", ORDER)]

    assert store.redeliver("evt_1", now=T0 + 100, requested_by="ops-console") == [("crm", ORDER), ("shop", ORDER)]

    redelivered = {"attempt": 0, "at": T0 + 100, "outcome": "redeliver", "status_code": None, "error": None,
                   "requested_by": "ops-console"}
    crm, shop = store.get_event("evt_1")["deliveries"]
    assert crm == {**pending("crm", T0 + 100), "history": [
        {"attempt": 1, "at": T0 + 1, "outcome": "delivered", "status_code": 200, "error": None}, redelivered]}
    assert shop == {**pending("shop", T0 + 100), "history": [
        {"attempt": 1, "at": T0 + 1, "outcome": "failed", "status_code": 502, "error": "HTTP 502"},
        {"attempt": 2, "at": T0 + 10, "outcome": "dead", "status_code": 400, "error": "HTTP 400"}, redelivered]}
    assert store.pending_streams() == [("crm", ORDER), ("shop", ORDER)]
    # The redelivered event is older than evt_2, so it goes out first again; it was received when it was.
    assert store.next_delivery("crm", ORDER) == {"event_id": "evt_1", "event": make_event(
        "evt_1", occurred_at="2024-05-01T10:00:00Z"), "received_at": T0, "trace_context": {}, "attempts": 0,
        "next_attempt_at": T0 + 100}
    assert drain_in_order(store, "crm", ORDER, now=T0 + 101) == ["evt_1", "evt_2"]


def test_redeliver_of_an_unknown_event_answers_none(store):
    add(store, make_event("evt_1"))

    assert store.redeliver("evt_unknown", now=T0) is None
    assert store.get_event("evt_1")["deliveries"] == [pending("crm"), pending("shop")]


# --- durability ---------------------------------------------------------------------------------------------------

def test_everything_survives_closing_and_reopening_the_store(open_store):
    store = open_store()
    add(store, make_event("evt_1", occurred_at="2024-05-01T10:00:00Z"), dedupe_key="hook-1")
    add(store, make_event("evt_2", occurred_at="2024-05-01T10:00:01Z", type=PICKED), dedupe_key="hook-2")
    store.record_attempt("evt_1", "crm", outcome="delivered", status_code=200, now=T0 + 1)
    store.record_attempt("evt_2", "shop", outcome="dead", error="HTTP 410", now=T0 + 2)
    store.redeliver("evt_2", now=T0 + 3)
    store.record_attempt("evt_2", "shop", outcome="failed", error="HTTP 503", next_attempt_at=T0 + 9, now=T0 + 4)
    before = store.list_events()
    store.close()

    reopened = open_store()

    assert reopened.list_events() == before
    assert reopened.pending_streams() == [("crm", ORDER), ("shop", ORDER)]
    assert reopened.pending_counts(["crm", "shop"]) == {"crm": 1, "shop": 2}
    assert reopened.next_delivery("crm", ORDER)["event_id"] == "evt_2"
    assert reopened.next_delivery("shop", ORDER)["event_id"] == "evt_1"
    assert add(reopened, make_event("evt_again"), dedupe_key="hook-1") == ("evt_1", False)
    assert add(reopened, make_event("evt_3"), dedupe_key="hook-3") == ("evt_3", True)
    assert ids(reopened.list_events()) == ["evt_3", "evt_2", "evt_1"]


# --- concurrency --------------------------------------------------------------------------------------------------

def assert_one_consistent_sequence(store: EventStore, writers: dict[str, list[str]]) -> None:
    """Every written event is stored once, in one order that keeps each writer's own order and that the stream
    hands out unchanged (all events share one occurred_at, so only the store's sequence decides)."""
    written = [event_id for events in writers.values() for event_id in events]
    inserted = list(reversed(ids(store.list_events(limit=len(written) + 10))))
    assert sorted(inserted) == sorted(written)
    assert len(set(inserted)) == len(written)
    for events in writers.values():
        assert [event_id for event_id in inserted if event_id in set(events)] == events
    assert drain_in_order(store, "crm", ORDER) == inserted
    assert drain_in_order(store, "shop", ORDER) == inserted
    assert store.pending_streams() == []


def test_eight_threads_adding_to_one_order_get_one_sequence(store):
    writers = {f"thread{number}": [f"evt_t{number}_{index:02d}" for index in range(25)] for number in range(8)}
    start = threading.Barrier(len(writers))

    def write(events: list[str]) -> list[bool]:
        start.wait()
        return [add(store, make_event(event_id))[1] for event_id in events]

    with ThreadPoolExecutor(max_workers=len(writers)) as pool:
        results = list(pool.map(write, writers.values()))

    assert results == [[True] * 25] * 8
    assert_one_consistent_sequence(store, writers)


WRITER_PROCESS = """
import os, sys, time
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import SqliteEventStore

kind, target, prefix, name, count, ready_dir, writers, order_key = sys.argv[1:]
# Start together with the other writers (opening the store included), so that their work overlaps.
open(os.path.join(ready_dir, name), "w").close()
deadline = time.monotonic() + 30
while len(os.listdir(ready_dir)) < int(writers) and time.monotonic() < deadline:
    time.sleep(0.001)
store = SqliteEventStore(target) if kind == "sqlite" else RedisEventStore(target, prefix=prefix)
for index in range(int(count)):
    event = {"id": f"evt_{name}_{index:03d}", "type": "order.status_changed", "occurred_at": "2024-05-01T10:00:00Z"}
    event_id, created = store.add_event(event, dedupe_key=event["id"], order_key=order_key,
                                        subscribers=["crm", "shop"])
    assert created, event_id
    # A breath between events gives the other writers a turn: SQLite's busy wait favours whoever holds the lock.
    time.sleep(0.001)
store.close()
"""


def run_writer_processes(location: StoreLocation, writers: dict[str, list[str]], ready: Path) -> None:
    """Run one process per writer, all at once, each adding its events (named evt_<writer>_<nnn>) to ORDER."""
    ready.mkdir()
    processes = [subprocess.Popen(
        [sys.executable, "-c", WRITER_PROCESS, location.kind, location.target, location.prefix, name,
         str(len(events)), str(ready), str(len(writers)), ORDER],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for name, events in writers.items()]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [(process.returncode, err) for process, (_, err) in zip(processes, outputs, strict=True)] == [
        (0, "")] * len(writers)


def test_two_processes_adding_to_one_order_get_one_sequence(location, store, tmp_path):
    writers = {name: [f"evt_{name}_{index:03d}" for index in range(60)] for name in ("alpha", "beta")}

    run_writer_processes(location, writers, tmp_path / "ready")

    assert_one_consistent_sequence(store, writers)


def test_processes_creating_one_sqlite_file_at_once_all_succeed(tmp_path):
    location = StoreLocation("sqlite", str(tmp_path / "fresh" / "events.sqlite3"),
                             classes=(SqliteEventStore, RedisEventStore))
    writers = {f"p{number}": [f"evt_p{number}_{index:03d}" for index in range(5)] for number in range(8)}

    run_writer_processes(location, writers, tmp_path / "ready")

    store = location.open()
    try:
        assert_one_consistent_sequence(store, writers)
    finally:
        store.close()


def test_one_dedupe_key_from_eight_threads_at_once_creates_one_event(store):
    start = threading.Barrier(8)

    def write(number: int) -> tuple[str, bool]:
        start.wait()
        return add(store, make_event(f"evt_{number}"), dedupe_key="ongoing:webhook:same")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(write, range(8)))

    created = [event_id for event_id, was_created in results if was_created]
    assert len(created) == 1
    assert results.count((created[0], False)) == 7
    assert ids(store.list_events()) == created
    assert store.get_event(created[0])["deliveries"] == [pending("crm"), pending("shop")]
    assert store.pending_streams() == [("crm", ORDER), ("shop", ORDER)]


# --- what only one of the stores has ------------------------------------------------------------------------------

def test_the_sqlite_store_creates_its_folder_and_uses_wal(tmp_path):
    path = tmp_path / "var" / "events" / "events.sqlite3"
    store = SqliteEventStore(path)
    try:
        add(store, make_event("evt_1"))
    finally:
        store.close()

    with sqlite3.connect(path) as db:
        journal_mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        stored = db.execute("SELECT id, body FROM events").fetchall()
    db.close()
    assert journal_mode == "wal"
    assert [(event_id, json.loads(body)) for event_id, body in stored] == [("evt_1", make_event("evt_1"))]


def test_opening_the_sqlite_store_waits_while_another_process_creates_the_file(tmp_path):
    path = tmp_path / "events.sqlite3"
    # Another gateway process that is half-way through creating the file holds its write lock.
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE made_by_the_other_process (a)")
    finish_creating = threading.Timer(0.3, creator.execute, ("COMMIT",))
    finish_creating.start()
    try:
        store = SqliteEventStore(path)
    finally:
        finish_creating.join()
        creator.close()
    try:
        add(store, make_event("evt_1"))
        assert ids(store.list_events()) == ["evt_1"]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_redis_stores_with_different_prefixes_do_not_see_each_other(store_redis_url):
    prefix = f"test:{uuid.uuid4().hex}:"
    one = RedisEventStore(store_redis_url, prefix=prefix + "one:")
    two = RedisEventStore(store_redis_url, prefix=prefix + "two:")
    try:
        add(one, make_event("evt_1"), dedupe_key="shared-key")

        assert add(two, make_event("evt_2"), dedupe_key="shared-key") == ("evt_2", True)
        assert ids(one.list_events()) == ["evt_1"]
        assert ids(two.list_events()) == ["evt_2"]
    finally:
        one.close()
        two.close()
    client = redis.Redis.from_url(store_redis_url, decode_responses=True)
    try:
        assert {key.split(":")[2] for key in client.scan_iter(match=prefix + "*")} == {"one", "two"}
    finally:
        client.close()


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_trace_context_an_event_was_received_in_comes_back_with_its_deliveries(store):
    store.add_event(make_event("evt_traced"), dedupe_key="dedupe:evt_traced", order_key=ORDER, subscribers=["crm"],
                    now=T0, trace_context={"traceparent": TRACEPARENT, "tracestate": "gw=1"})
    assert store.next_delivery("crm", ORDER)["trace_context"] == {"traceparent": TRACEPARENT, "tracestate": "gw=1"}
    store.record_attempt("evt_traced", "crm", outcome="dead", status_code=400, error="HTTP 400", now=T0 + 1)
    store.redeliver("evt_traced", now=T0 + 2)
    # a redelivery continues the trace the event came in with
    assert store.next_delivery("crm", ORDER)["trace_context"] == {"traceparent": TRACEPARENT, "tracestate": "gw=1"}


@pytest.mark.parametrize("given", [
    None, {}, {"tracestate": "gw=1"}, {"traceparent": ""}, {"traceparent": "x" * 56}, {"traceparent": 7},
], ids=["none", "empty", "state-alone", "blank", "oversized", "not-text"])
def test_no_usable_traceparent_keeps_no_trace_context(store, given):
    store.add_event(make_event("evt_untraced"), dedupe_key="dedupe:evt_untraced", order_key=ORDER,
                    subscribers=["crm"], now=T0, trace_context=given)
    assert store.next_delivery("crm", ORDER)["trace_context"] == {}


def test_only_the_trace_headers_are_kept_each_within_its_bound(store):
    store.add_event(make_event("evt_extra"), dedupe_key="dedupe:evt_extra", order_key=ORDER, subscribers=["crm"],
                    now=T0, trace_context={"traceparent": TRACEPARENT, "tracestate": "s" * 513, "baggage": "a=b"})
    assert store.next_delivery("crm", ORDER)["trace_context"] == {"traceparent": TRACEPARENT}


def test_an_event_file_of_the_previous_version_gains_the_trace_context_column(tmp_path):
    path = tmp_path / "old-events.sqlite3"
    SqliteEventStore(path).close()
    with sqlite3.connect(path) as db:  # as version 2 left it: no trace_context column
        db.execute("ALTER TABLE events DROP COLUMN trace_context")
        db.execute("PRAGMA user_version = 2")
    db.close()
    reopened = SqliteEventStore(path)
    try:
        add(reopened, make_event("evt_after_upgrade"), subscribers=["crm"])
        assert reopened.next_delivery("crm", ORDER)["trace_context"] == {}
    finally:
        reopened.close()


# --- retention: purging settled events ------------------------------------------------------------------------------

def settle(store: EventStore, event_id: str, at: float, subscribers=("crm", "shop"), outcome: str = "delivered"):
    """Record an attempt with this outcome for each subscriber at `at`."""
    for subscriber in subscribers:
        store.record_attempt(event_id, subscriber, outcome=outcome, status_code=200, now=at)


def test_purge_settled_removes_what_settled_by_then_and_never_what_is_pending(store):
    add(store, make_event("evt_1"))  # delivered to crm, dead for shop: settled when the last one ended
    settle(store, "evt_1", T0 + 10, ["crm"])
    settle(store, "evt_1", T0 + 20, ["shop"], outcome="dead")
    add(store, make_event("evt_2"))  # delivered to crm, still being retried for shop: pending
    settle(store, "evt_2", T0 + 5, ["crm"])
    store.record_attempt("evt_2", "shop", outcome="failed", error="HTTP 503", next_attempt_at=T0 + 60, now=T0 + 6)
    add(store, make_event("evt_3", type=PICKED), subscribers=[], now=T0 + 1)  # nobody wanted it: settled at once
    add(store, make_event("evt_4"))
    settle(store, "evt_4", T0 + 100)
    add(store, make_event("evt_5"), order_key=OTHER_ORDER)  # never attempted

    assert store.purge_settled(settled_by=T0 + 0.5, limit=100) == 0
    assert store.purge_settled(settled_by=T0 + 19.999, limit=100) == 1
    assert store.get_event("evt_3") is None
    assert store.purge_settled(settled_by=T0 + 20, limit=100) == 1
    assert store.get_event("evt_1") is None
    assert store.purge_settled(settled_by=T0 + 99, limit=100) == 0
    assert ids(store.list_events()) == ["evt_5", "evt_4", "evt_2"]
    assert store.purge_settled(settled_by=T0 + 10_000, limit=100) == 1
    assert ids(store.list_events()) == ["evt_5", "evt_2"]
    assert store.pending_streams() == [("crm", OTHER_ORDER), ("shop", ORDER), ("shop", OTHER_ORDER)]
    assert store.pending_counts(["crm", "shop"]) == {"crm": 1, "shop": 2}


def test_purge_settled_takes_the_longest_settled_first_and_no_more_than_the_limit(store):
    for number in range(1, 6):
        add(store, make_event(f"evt_{number}"), subscribers=["crm"])
        settle(store, f"evt_{number}", T0 + 10 - number, ["crm"])  # evt_5 settled first
    assert store.purge_settled(settled_by=T0 + 100, limit=0) == 0
    assert store.purge_settled(settled_by=T0 + 100, limit=2) == 2
    assert ids(store.list_events()) == ["evt_3", "evt_2", "evt_1"]
    assert store.purge_settled(settled_by=T0 + 100, limit=2) == 2
    assert store.purge_settled(settled_by=T0 + 100, limit=2) == 1
    assert store.purge_settled(settled_by=T0 + 100, limit=2) == 0
    assert store.list_events() == []


def test_a_redelivered_event_settles_again_only_when_its_deliveries_end_again(store):
    add(store, make_event("evt_1"), subscribers=["crm"])
    settle(store, "evt_1", T0 + 10, ["crm"], outcome="dead")
    store.redeliver("evt_1", now=T0 + 50, requested_by="operator")
    assert store.purge_settled(settled_by=T0 + 10_000, limit=10) == 0
    settle(store, "evt_1", T0 + 60, ["crm"])
    assert store.purge_settled(settled_by=T0 + 59, limit=10) == 0
    assert store.purge_settled(settled_by=T0 + 60, limit=10) == 1
    assert store.get_event("evt_1") is None


def test_a_purged_event_leaves_no_trace_in_any_listing_and_its_dedupe_key_is_free(store):
    add(store, make_event("evt_1", type=PICKED), dedupe_key="ongoing-demo:sandbox:1")
    settle(store, "evt_1", T0 + 10)
    add(store, make_event("evt_2", type=PICKED))
    settle(store, "evt_2", T0 + 30)
    assert store.purge_settled(settled_by=T0 + 20, limit=10) == 1
    for filters in ({"type": PICKED}, {"order_id": "1001"}, {"order_id": "SO-1001"}, {"state": "delivered"}, {}):
        assert ids(store.list_events(**filters)) == ["evt_2"], filters
    assert store.redeliver("evt_1") is None
    with pytest.raises(DeliveryNotFound):
        store.record_attempt("evt_1", "crm", outcome="delivered")
    assert add(store, make_event("evt_1b"), dedupe_key="ongoing-demo:sandbox:1") == ("evt_1b", True)


def test_purging_from_another_store_instance_sees_what_this_one_settled(open_store):
    first, second = open_store(), open_store()
    add(first, make_event("evt_1"), subscribers=["crm"])
    settle(first, "evt_1", T0 + 1, ["crm"])
    assert second.purge_settled(settled_by=T0 + 1, limit=10) == 1
    assert first.get_event("evt_1") is None


def test_a_purged_event_leaves_no_redis_key_behind(store_redis_url):
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisEventStore(store_redis_url, prefix=prefix)
    client = redis.Redis.from_url(store_redis_url, decode_responses=True)
    try:
        add(store, make_event("evt_gone", type=PICKED), subscribers=["crm", "shop"])
        settle(store, "evt_gone", T0 + 1)
        add(store, make_event("evt_kept"), subscribers=["crm"])
        assert store.purge_settled(settled_by=T0 + 1, limit=10) == 1
        left = {key: client.type(key) for key in client.scan_iter(match=prefix + "*")}
        mentioning = [key for key, kind in left.items()
                      if "evt_gone" in key
                      or (kind == "zset" and client.zscore(key, "evt_gone") is not None)
                      or (kind == "hash" and "evt_gone" in client.hvals(key))]
        assert mentioning == []
    finally:
        store.close()
        client.close()
