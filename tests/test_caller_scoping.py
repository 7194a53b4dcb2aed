"""A caller sees and acts on the data of its own connections only: GET /events (filtered in the store's query, so
`limit` counts what it may see), GET /events/<id>, POST /events/<id>/redeliver, GET /exchanges, GET
/exchanges/<id>, and every console page and button. Another connection's event or exchange is a 404 exactly like
an unknown id's; a `connection` filter outside the caller's connections is an empty list, exactly like an unknown
connection's. Also: GET /events is bounded in bytes as well as in count, with `next` the way to the rest.

The API's tests run against an app whose events and journal are in SQLite and against one whose are in Redis."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.errors import ConfigError
from gateway.journal import Exchange
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, ongoing_connection, speed4trade_connection
from tests.test_console import csrf_of, log_in, redeliver_form

ALL_KEY = "every-connection-key-0001"
LIMITED_KEY = "ongoing-only-caller-key-01"
SESSION_SECRET = "console-session-secret-for-scoping-tests"
OURS, THEIRS = "ongoing-demo", "speed4trade-demo"
SCOPES = ["orders:write", "events:read", "events:redeliver", "exchanges:read", "console"]
T0 = 1_900_000_000.0


def config(**events) -> dict:
    return {
        "gateway": {"default_connection": OURS},
        "connections": {OURS: ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH),
                        THEIRS: speed4trade_connection("http://127.0.0.1:9/speed4trade/")},
        "callers": {"everything": {"key": ALL_KEY, "connections": ["*"], "scopes": SCOPES},
                    "ongoing-only": {"key": LIMITED_KEY, "connections": [OURS], "scopes": SCOPES}},
        "subscribers": {"demo": {"url": "http://127.0.0.1:9/events",
                                 "secret": "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"}},
        "console": {"session_secret": SESSION_SECRET},
        "events": events,
    }


@pytest.fixture(params=["sqlite", "redis"])
def make_app(request, make_gateway):
    """Gateway apps with both callers, their events and journal in SQLite or in Redis."""
    def make(**events):
        if request.param == "redis":
            events["redis_url"] = request.getfixturevalue("redis_url")
        return make_gateway(config(**events))

    return make


@pytest.fixture
def app(make_app):
    return make_app()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def store_event(app, event_id: str, connection: str | None, *, order: str = "1001", dead: bool = True,
                raw_bytes: int = 0, at: float = T0) -> str:
    """An event of this connection (None: one that names none) about this order, its delivery dead or pending."""
    event = {"id": event_id, "type": "order.status_changed", "occurred_at": "2026-11-23T12:00:00Z",
             "source": {"backend": "ongoing" if connection == OURS else "speed4trade", "connection": connection},
             "order": {"backend_order_id": order, "order_number": f"SO-{order}"}, "raw": {"pad": "x" * raw_bytes}}
    if connection is None:
        del event["source"]["connection"]
    store = gateway_of(app).events.store
    store.add_event(event, dedupe_key=f"{connection}:{event_id}", order_key=f"{connection}:{order}",
                    subscribers=["demo"], now=at)
    if dead:
        store.record_attempt(event_id, "demo", outcome="dead", status_code=400, error="HTTP 400", now=at)
    return event_id


def record_exchange(app, exchange_id: str, connection: str, *, order: str = "1001", at: float = T0) -> str:
    gateway_of(app).recorder.journal.record(Exchange(
        id=exchange_id, at=at, request_id=f"req-{exchange_id}", caller="everything", connection=connection,
        backend="ongoing" if connection == OURS else "speed4trade", operation="UpdateOrder", order_ids=(order,),
        request={"method": "POST", "url": "http://backend/", "headers": {}, "body": f"<secret-of-{exchange_id}/>"},
        reply={"status": 200, "headers": {}, "body": f"<reply-of-{exchange_id}/>"}, duration_ms=2.0, outcome="ok"))
    return exchange_id


@pytest.fixture
def data(app):
    """One dead event and one exchange of each connection, about the same order; THEIRS' the newer."""
    return {"our_event": store_event(app, "evt_ours", OURS, at=T0),
            "their_event": store_event(app, "evt_theirs", THEIRS, at=T0 + 1),
            "our_exchange": record_exchange(app, "exc_ours", OURS, at=T0),
            "their_exchange": record_exchange(app, "exc_theirs", THEIRS, at=T0 + 1)}


def event_ids(reply) -> list[str]:
    assert reply.status_code == 200, reply.get_json()
    return [item["event"]["id"] for item in reply.get_json()["events"]]


def exchange_ids(reply) -> list[str]:
    assert reply.status_code == 200, reply.get_json()
    return [item["id"] for item in reply.get_json()["exchanges"]]


def without_ids(problem: dict, hidden_id: str) -> dict:
    """A problem document with what differs between two requests taken out: the id asked for, the request id."""
    return {name: value.replace(hidden_id, "<id>") if isinstance(value, str) else value
            for name, value in problem.items() if name not in ("request_id", "instance")}


# -- GET /events ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["", "?order_id=1001", "?state=dead", "?type=order.status_changed&limit=5"])
def test_a_list_of_events_holds_the_callers_connections_only(app, data, query):
    assert event_ids(app.test_client().get(f"/events{query}", headers=bearer(LIMITED_KEY))) == ["evt_ours"]
    assert event_ids(app.test_client().get(f"/events{query}", headers=bearer(ALL_KEY))) == ["evt_theirs", "evt_ours"]


def test_the_limit_counts_the_callers_events_only(app):
    store_event(app, "evt_ours_1", OURS, at=T0)
    store_event(app, "evt_ours_2", OURS, at=T0 + 1)
    for number in range(5):  # newer, and more than the limit
        store_event(app, f"evt_theirs_{number}", THEIRS, at=T0 + 2 + number)

    reply = app.test_client().get("/events?limit=2", headers=bearer(LIMITED_KEY))

    assert event_ids(reply) == ["evt_ours_2", "evt_ours_1"]
    assert reply.get_json()["count"] == 2 and reply.get_json()["next"] is None


def test_an_event_that_names_no_connection_is_shown_only_to_a_caller_of_every_connection(app, data):
    store_event(app, "evt_nowhere", None, at=T0 + 2)
    assert event_ids(app.test_client().get("/events", headers=bearer(LIMITED_KEY))) == ["evt_ours"]
    assert "evt_nowhere" in event_ids(app.test_client().get("/events", headers=bearer(ALL_KEY)))


def test_a_connection_filter_outside_the_callers_is_an_empty_list_like_an_unknown_connections(app, data):
    client = app.test_client()
    hidden = client.get(f"/events?connection={THEIRS}", headers=bearer(LIMITED_KEY))
    unknown = client.get("/events?connection=no-such-connection", headers=bearer(LIMITED_KEY))

    assert hidden.status_code == unknown.status_code == 200
    assert hidden.get_json() == unknown.get_json() == {"events": [], "count": 0, "next": None, "truncated": False}
    assert event_ids(client.get(f"/events?connection={OURS}", headers=bearer(LIMITED_KEY))) == ["evt_ours"]
    assert event_ids(client.get(f"/events?connection={THEIRS}", headers=bearer(ALL_KEY))) == ["evt_theirs"]


def test_a_cursor_of_another_connection_lists_nothing_like_an_unknown_cursor(app, data):
    store_event(app, "evt_ours_newest", OURS, at=T0 + 2)
    client = app.test_client()
    hidden = client.get("/events?before=evt_theirs", headers=bearer(LIMITED_KEY))
    unknown = client.get("/events?before=evt_unknown", headers=bearer(LIMITED_KEY))

    assert hidden.get_json() == unknown.get_json() == {"events": [], "count": 0, "next": None, "truncated": False}
    assert event_ids(client.get("/events?before=evt_ours_newest", headers=bearer(LIMITED_KEY))) == ["evt_ours"]
    assert event_ids(client.get("/events?before=evt_ours_newest", headers=bearer(ALL_KEY))) == ["evt_theirs",
                                                                                               "evt_ours"]
    assert event_ids(client.get("/events?before=evt_theirs", headers=bearer(ALL_KEY))) == ["evt_ours"]


# -- GET /events/<id> and POST /events/<id>/redeliver -----------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [("GET", "/events/{}"), ("POST", "/events/{}/redeliver")])
def test_another_connections_event_is_a_404_exactly_like_an_unknown_one(app, data, method, path):
    client = app.test_client()
    hidden = client.open(path.format("evt_theirs"), method=method, headers=bearer(LIMITED_KEY))
    unknown = client.open(path.format("evt_unknown"), method=method, headers=bearer(LIMITED_KEY))

    assert hidden.status_code == unknown.status_code == 404
    assert hidden.mimetype == unknown.mimetype == "application/problem+json"
    assert without_ids(hidden.get_json(), "evt_theirs") == without_ids(unknown.get_json(), "evt_unknown")
    assert hidden.get_json()["detail"] == "No event 'evt_theirs'."
    assert sorted(hidden.headers.keys()) == sorted(unknown.headers.keys())


def test_another_connections_event_is_not_redelivered(app, data):
    store = gateway_of(app).events.store
    reply = app.test_client().post("/events/evt_theirs/redeliver",
                                   headers={**bearer(LIMITED_KEY), "Idempotency-Key": '"scoped-1"'})

    assert reply.status_code == 404
    (delivery,) = store.get_event("evt_theirs")["deliveries"]
    assert delivery["state"] == "dead" and not any(entry.get("requested_by") for entry in delivery["history"])


def test_the_callers_own_event_is_shown_and_redelivered(app, data):
    client = app.test_client()
    shown = client.get("/events/evt_ours", headers=bearer(LIMITED_KEY))
    assert shown.status_code == 200 and shown.get_json()["event"]["id"] == "evt_ours"

    redelivered = client.post("/events/evt_ours/redeliver", headers=bearer(LIMITED_KEY))
    assert redelivered.status_code == 202, redelivered.get_json()
    assert redelivered.get_json() == {"id": "evt_ours", "redelivering_to": ["demo"], "requested_by": "ongoing-only"}
    assert client.get("/events/evt_theirs", headers=bearer(ALL_KEY)).status_code == 200


# -- GET /exchanges and GET /exchanges/<id> ----------------------------------------------------------------------

@pytest.mark.parametrize("query", ["", "?order_id=1001", "?outcome=ok", "?request_id=req-exc_theirs"])
def test_a_list_of_exchanges_holds_the_callers_connections_only(app, data, query):
    expected_all = ["exc_theirs"] if "request_id" in query else ["exc_theirs", "exc_ours"]
    limited = exchange_ids(app.test_client().get(f"/exchanges{query}", headers=bearer(LIMITED_KEY)))

    assert limited == [item for item in expected_all if item == "exc_ours"]
    assert exchange_ids(app.test_client().get(f"/exchanges{query}", headers=bearer(ALL_KEY))) == expected_all


def test_the_limit_of_exchanges_counts_the_callers_only(app):
    record_exchange(app, "exc_ours", OURS, at=T0)
    for number in range(3):
        record_exchange(app, f"exc_theirs_{number}", THEIRS, at=T0 + 1 + number)

    reply = app.test_client().get("/exchanges?limit=1", headers=bearer(LIMITED_KEY))

    assert exchange_ids(reply) == ["exc_ours"] and reply.get_json()["count"] == 1


def test_an_exchange_connection_filter_outside_the_callers_is_an_empty_list_like_an_unknown_connections(app, data):
    client = app.test_client()
    hidden = client.get(f"/exchanges?connection={THEIRS}", headers=bearer(LIMITED_KEY))
    unknown = client.get("/exchanges?connection=no-such-connection", headers=bearer(LIMITED_KEY))

    assert hidden.status_code == unknown.status_code == 200
    assert hidden.get_json() == unknown.get_json() == {"exchanges": [], "count": 0}
    assert exchange_ids(client.get(f"/exchanges?connection={THEIRS}", headers=bearer(ALL_KEY))) == ["exc_theirs"]


def test_another_connections_exchange_is_a_404_exactly_like_an_unknown_one(app, data):
    client = app.test_client()
    hidden = client.get("/exchanges/exc_theirs", headers=bearer(LIMITED_KEY))
    unknown = client.get("/exchanges/exc_unknown", headers=bearer(LIMITED_KEY))

    assert hidden.status_code == unknown.status_code == 404
    assert without_ids(hidden.get_json(), "exc_theirs") == without_ids(unknown.get_json(), "exc_unknown")
    assert "secret-of-exc_theirs" not in hidden.get_data(as_text=True)
    assert client.get("/exchanges/exc_ours", headers=bearer(LIMITED_KEY)).get_json()["id"] == "exc_ours"
    assert client.get("/exchanges/exc_theirs", headers=bearer(ALL_KEY)).get_json()["id"] == "exc_theirs"


def test_updating_another_connections_order_is_a_403(app):
    reply = app.test_client().patch("/orders/10001?dry_run=true", json={"connection": THEIRS, "status": "paid"},
                                    headers=bearer(LIMITED_KEY))
    assert reply.status_code == 403
    assert f"may not use connection {THEIRS!r}" in reply.get_json()["detail"]


# -- the console ---------------------------------------------------------------------------------------------------

@pytest.fixture
def limited_console(app):
    client = app.test_client()
    assert log_in(client, LIMITED_KEY).status_code == 303
    return client


def test_the_overview_shows_the_callers_connections_and_deliveries_only(app, data, limited_console):
    store_event(app, "evt_theirs_pending", THEIRS, dead=False, at=T0 + 2)
    store_event(app, "evt_ours_pending", OURS, dead=False, at=T0 + 3)
    html = limited_console.get("/console").get_data(as_text=True)

    assert 'id="connection-ongoing-demo"' in html and THEIRS not in html
    assert 'data-event="evt_ours"' in html and 'data-event="evt_ours_pending"' in html
    assert "evt_theirs" not in html
    assert "/console/events/evt_ours/redeliver" in html

    everything = app.test_client()
    log_in(everything, ALL_KEY)
    html = everything.get("/console").get_data(as_text=True)
    assert 'data-event="evt_theirs"' in html and 'data-event="evt_theirs_pending"' in html


def test_the_overview_lists_the_callers_dead_deliveries_however_many_others_are_newer(app, limited_console,
                                                                                      monkeypatch):
    monkeypatch.setattr("gateway.console.views.LIST_LIMIT", 3)
    store_event(app, "evt_ours", OURS, at=T0)
    for number in range(4):
        store_event(app, f"evt_theirs_{number}", THEIRS, at=T0 + 1 + number)

    assert 'data-event="evt_ours"' in limited_console.get("/console").get_data(as_text=True)


def test_an_orders_timeline_shows_the_callers_exchanges_and_events_only(app, data, limited_console):
    html = limited_console.get("/console/orders?order_id=1001").get_data(as_text=True)

    assert "evt_ours" in html and "secret-of-exc_ours" in html
    assert "evt_theirs" not in html and "exc_theirs" not in html and THEIRS not in html


def test_an_orders_timeline_counts_the_callers_entries_only(app, limited_console, monkeypatch):
    monkeypatch.setattr("gateway.console.views.TIMELINE_LIMIT", 2)
    store_event(app, "evt_ours", OURS, at=T0)
    record_exchange(app, "exc_ours", OURS, at=T0)
    for number in range(3):
        store_event(app, f"evt_theirs_{number}", THEIRS, at=T0 + 1 + number)
        record_exchange(app, f"exc_theirs_{number}", THEIRS, at=T0 + 1 + number)

    html = limited_console.get("/console/orders?order_id=1001").get_data(as_text=True)

    assert "evt_ours" in html and "secret-of-exc_ours" in html


def test_searching_another_connection_is_refused_like_an_unknown_one(app, data, limited_console):
    hidden = limited_console.get(f"/console/orders?order_id=1001&connection={THEIRS}")
    unknown = limited_console.get("/console/orders?order_id=1001&connection=no-such-connection")

    assert hidden.status_code == unknown.status_code == 422
    assert "evt_theirs" not in hidden.get_data(as_text=True) and "exc_theirs" not in hidden.get_data(as_text=True)
    assert re.sub(r"value=\"[^\"]*\"", "", hidden.get_data(as_text=True).replace(THEIRS, "<c>")) == \
        re.sub(r"value=\"[^\"]*\"", "", unknown.get_data(as_text=True).replace("no-such-connection", "<c>"))


def test_the_redeliver_button_on_another_connections_event_says_it_is_unknown(app, data, limited_console):
    html = limited_console.get("/console").get_data(as_text=True)
    form = {**redeliver_form(html, "evt_ours"), "idempotency_key": "button-1"}

    reply = limited_console.post("/console/events/evt_theirs/redeliver", data=form)

    assert reply.status_code == 303
    assert "No event &#39;evt_theirs&#39;." in limited_console.get("/console").get_data(as_text=True)
    (delivery,) = gateway_of(app).events.store.get_event("evt_theirs")["deliveries"]
    assert delivery["state"] == "dead"


def test_the_redeliver_button_on_the_callers_own_event_queues_it(app, data, limited_console):
    form = redeliver_form(limited_console.get("/console").get_data(as_text=True), "evt_ours")

    assert limited_console.post("/console/events/evt_ours/redeliver", data=form).status_code == 303

    assert "Event evt_ours is queued again for demo." in limited_console.get("/console").get_data(as_text=True)
    (delivery,) = gateway_of(app).events.store.get_event("evt_ours")["deliveries"]
    assert delivery["state"] == "pending" and delivery["history"][-1]["requested_by"] == "ongoing-only"


def test_a_console_form_needs_its_csrf_token_whatever_the_event(app, data, limited_console):
    html = limited_console.get("/console").get_data(as_text=True)
    reply = limited_console.post("/console/events/evt_theirs/redeliver",
                                 data={"csrf_token": csrf_of(html) + "x", "idempotency_key": "k", "next": "/console"})
    assert reply.status_code == 403


# -- GET /events bounded in bytes ------------------------------------------------------------------------------------

MAX_LIST_BYTES = 4096


def pages_of(client, path: str, key: str = ALL_KEY) -> list:
    """Every page from `path` on, following `next`, each as its reply."""
    replies = []
    while path is not None:
        reply = client.get(path, headers=bearer(key))
        assert reply.status_code == 200, reply.get_json()
        replies.append(reply)
        path = reply.get_json()["next"]
        assert len(replies) < 50
    return replies


def test_a_list_stops_before_the_event_that_would_take_it_past_max_list_bytes(make_app):
    app = make_app(max_list_bytes=MAX_LIST_BYTES)
    for number in range(12):
        store_event(app, f"evt_{number:02}", OURS, raw_bytes=900, at=T0 + number)
    client = app.test_client()

    replies = pages_of(client, "/events?limit=10")

    newest_first = [f"evt_{number:02}" for number in range(11, -1, -1)]
    assert [event for reply in replies for event in event_ids(reply)] == newest_first
    assert all(len(reply.get_data()) <= MAX_LIST_BYTES for reply in replies)
    first = replies[0].get_json()
    assert first["truncated"] is True and 1 < first["count"] < 10
    # the next event would not have fitted
    following = client.get(f"/events/{newest_first[first['count']]}", headers=bearer(ALL_KEY)).get_data()
    assert len(replies[0].get_data()) + len(following.rstrip(b"\n")) + 1 > MAX_LIST_BYTES
    assert replies[-1].get_json()["next"] is None and replies[-1].get_json()["truncated"] is False
    assert replies[0].get_json()["next"].startswith("/events?")
    assert parse_qs(urlsplit(first["next"]).query) == {"limit": ["10"], "before": [newest_first[first["count"] - 1]]}


def test_next_keeps_the_filters_and_the_caller_keeps_its_connections_page_after_page(make_app):
    app = make_app(max_list_bytes=MAX_LIST_BYTES)
    for number in range(8):
        store_event(app, f"evt_{number:02}", OURS if number % 2 else THEIRS, raw_bytes=900, at=T0 + number)
    client = app.test_client()

    replies = pages_of(client, f"/events?state=dead&connection={OURS}&limit=1000", key=LIMITED_KEY)

    assert [event for reply in replies for event in event_ids(reply)] == ["evt_07", "evt_05", "evt_03", "evt_01"]
    assert len(replies) > 1
    query = parse_qs(urlsplit(replies[0].get_json()["next"]).query)
    assert query["state"] == ["dead"] and query["connection"] == [OURS] and query["limit"] == ["1000"]


def test_pages_by_count_say_whether_there_is_more(app):
    for number in range(4):
        store_event(app, f"evt_{number}", OURS, at=T0 + number)
    client = app.test_client()

    replies = pages_of(client, "/events?limit=2")

    assert [event_ids(reply) for reply in replies] == [["evt_3", "evt_2"], ["evt_1", "evt_0"]]
    assert [reply.get_json()["truncated"] for reply in replies] == [False, False]
    assert replies[1].get_json()["next"] is None


def test_an_event_larger_than_max_list_bytes_is_a_page_of_its_own(make_app):
    app = make_app(max_list_bytes=MAX_LIST_BYTES)
    store_event(app, "evt_small", OURS, at=T0)
    store_event(app, "evt_huge", OURS, raw_bytes=2 * MAX_LIST_BYTES, at=T0 + 1)
    client = app.test_client()

    replies = pages_of(client, "/events")

    assert [event_ids(reply) for reply in replies] == [["evt_huge"], ["evt_small"]]
    assert replies[0].get_json()["truncated"] is True


@pytest.mark.parametrize("value", [100, 4095, "a lot"])
def test_max_list_bytes_is_at_least_4096(make_gateway, value):
    with pytest.raises(ConfigError, match="max_list_bytes"):
        make_gateway(config(max_list_bytes=value))


@pytest.mark.parametrize("query", ["before=", "before=" + "x" * 256, "connection=", "connection=" + "c" * 101,
                                   "before=a&before=b"])
def test_unusable_cursors_and_connections_are_422(app, query):
    reply = app.test_client().get(f"/events?{query}", headers=bearer(ALL_KEY))
    assert reply.status_code == 422, reply.get_json()
