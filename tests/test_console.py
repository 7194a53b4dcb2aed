"""The operator's console: login and its cookie, scopes, CSRF, the overview, an order's timeline, masking, and the
redeliver button (the API's rules, Idempotency-Key included)."""

from __future__ import annotations

import re

import pytest

from gateway.console import charts
from gateway.runtime import gateway_of
from gateway.scrubbing import Scrubber
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.ongoing_timestamps import recent_timestamp

OPS_KEY = "ops-console-key-000001"
VIEWER_KEY = "viewer-console-key-0001"
API_KEY = "api-only-caller-key-0001"
SESSION_SECRET = "console-session-secret-for-tests-0001"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")
SUBSCRIBER_SECRET = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"


def console_config(url: str, **console) -> dict:
    config = gateway_config(**{"ongoing-demo": ongoing_connection(url, webhooks={
        "auth": "basic", "username": WEBHOOK_AUTH[0], "password": WEBHOOK_AUTH[1]})})
    config["callers"] = {
        "ops": {"key": OPS_KEY, "scopes": ["console", "events:redeliver", "orders:write"]},
        "viewer": {"key": VIEWER_KEY, "scopes": ["console"]},
        "api": {"key": API_KEY, "scopes": ["orders:write", "events:read"]},
    }
    config["subscribers"] = {"demo": {"url": "http://127.0.0.1:9/events", "secret": SUBSCRIBER_SECRET}}
    config["console"] = {"session_secret": SESSION_SECRET, **console}
    return config


@pytest.fixture
def app(make_gateway, sandbox_url):
    return make_gateway(console_config(sandbox_url + ONGOING_SERVICE_PATH))


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def log_in(client, key: str = OPS_KEY, next_page: str = ""):
    token = csrf_of(client.get("/console/login").get_data(as_text=True))
    return client.post("/console/login", data={"csrf_token": token, "key": key, "next": next_page})


@pytest.fixture
def ops(app):
    client = app.test_client()
    assert log_in(client).status_code == 303
    return client


def store_dead_event(app, number: int = 1, order: str = "SO-1004") -> str:
    store = gateway_of(app).events.store
    event = {"id": f"evt_console{number}", "type": "order.picked", "occurred_at": "2026-11-23T12:00:00Z",
             "source": {"backend": "ongoing", "connection": "ongoing-demo", "template": "OrderPicked"},
             "order": {"backend_order_id": order.removeprefix("SO-"), "order_number": order}}
    store.add_event(event, dedupe_key=f"console:{number}", order_key=f"ongoing:DEMO:{order}", subscribers=["demo"])
    store.record_attempt(event["id"], "demo", outcome="dead", status_code=400, error="HTTP 400: refused")
    return event["id"]


def redeliver_form(html: str, event_id: str) -> dict:
    form = re.search(rf'<form class="inline" method="post" action="/console/events/{event_id}/redeliver">(.*?)</form>',
                     html, re.S).group(1)
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))


# -- access --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/console", "/console/orders?order_id=SO-1001"])
def test_without_a_session_a_page_sends_to_the_login_form(app, path):
    reply = app.test_client().get(path)
    assert reply.status_code == 303
    assert reply.headers["Location"].startswith("/console/login?next=")


def test_the_api_keys_bearer_header_is_no_way_into_the_console(app):
    reply = app.test_client().get("/console", headers={"Authorization": f"Bearer {OPS_KEY}"})
    assert reply.status_code == 303 and "/console/login" in reply.headers["Location"]


def test_logging_in_sets_a_strict_httponly_secure_cookie_for_the_console_only(app):
    client = app.test_client()
    reply = log_in(client, next_page="/console/orders?order_id=SO-1001")
    assert reply.status_code == 303
    assert reply.headers["Location"] == "/console/orders?order_id=SO-1001"
    cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith("order_gateway_console=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/console", "Expires="):
        assert attribute in cookie
    assert OPS_KEY not in cookie and "ops-console" not in cookie
    page = client.get("/console")
    assert page.status_code == 200 and 'id="caller-name">ops<' in page.get_data(as_text=True)


@pytest.mark.parametrize(("key", "status", "says"), [
    ("not-a-known-key-000000", 401, "That key is not known."),
    (API_KEY, 403, "The caller api lacks the scope console."),
    ("", 401, "That key is not known."),
    ("x" * 10_000, 401, "That key is not known."),
])
def test_a_key_that_may_not_use_the_console_is_refused(app, key, status, says):
    client = app.test_client()
    reply = log_in(client, key)
    assert reply.status_code == status
    assert says in reply.get_data(as_text=True)
    assert client.get("/console").status_code == 303


def test_a_login_without_the_forms_csrf_token_is_refused(app):
    client = app.test_client()
    reply = client.post("/console/login", data={"key": OPS_KEY})
    assert reply.status_code == 403 and "The login form expired" in reply.get_data(as_text=True)
    assert client.get("/console").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/console", "/elsewhere",
                                    "/console\\@evil.example"])
def test_after_login_only_a_console_page_is_a_place_to_go_back_to(app, target):
    reply = log_in(app.test_client(), next_page=target)
    assert reply.headers["Location"] == "/console"


def test_a_session_ends_when_its_caller_loses_the_scope(make_gateway, sandbox_url, app):
    client = app.test_client()
    log_in(client)
    config = console_config(sandbox_url + ONGOING_SERVICE_PATH)
    config["callers"]["ops"]["scopes"] = ["orders:write"]  # the same cookie secret, a new configuration
    cookie = client.get_cookie("order_gateway_console", path="/console")
    reloaded = make_gateway(config).test_client()
    reloaded.set_cookie("order_gateway_console", cookie.value, path="/console")
    assert reloaded.get("/console").status_code == 303


def test_log_out_needs_the_csrf_token_and_ends_the_session(ops):
    html = ops.get("/console").get_data(as_text=True)
    assert ops.post("/console/logout", data={}).status_code == 403
    assert ops.get("/console").status_code == 200
    assert ops.post("/console/logout", data={"csrf_token": csrf_of(html)}).status_code == 303
    assert ops.get("/console").status_code == 303


def test_pages_are_not_framed_cached_or_fed_from_elsewhere(ops):
    reply = ops.get("/console")
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Frame-Options"] == "DENY" and reply.headers["Cache-Control"] == "no-store"
    html = reply.get_data(as_text=True)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # every asset is the gateway's own
    css = ops.get(re.search(r'href="(/console/static/console\.css)"', html).group(1))
    css.close()
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")


# -- the overview --------------------------------------------------------------------------------------------------

def test_the_overview_draws_each_connections_calls_and_latency(ops, app):
    for waybill in ("OV-1", "OV-2"):
        assert app.test_client().patch("/orders/SO-1006", json={"waybill": waybill},
                                       headers={"Authorization": f"Bearer {OPS_KEY}"}).status_code == 200
    html = ops.get("/console").get_data(as_text=True)
    card = html[html.index('id="connection-ongoing-demo"'):html.index("</article>")]
    assert "ongoing" in card and "breaker closed" in card
    assert "<strong>2</strong> calls" in card and "last failure never" in card
    assert re.search(r"last success \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", card)
    assert '<svg class="latency"' in card and 'aria-label="ongoing-demo: latency over the last hour: 2 calls' in card


def test_the_overview_lists_dead_deliveries_with_a_redeliver_button(ops, app):
    event_id = store_dead_event(app)
    html = ops.get("/console").get_data(as_text=True)
    row = html[html.index(f'<tr class="dead" data-event="{event_id}"'):]
    assert "HTTP 400: refused" in row[:row.index("</tr>")]
    assert f"/console/events/{event_id}/redeliver" in row


def test_a_store_that_cannot_be_read_leaves_the_page_saying_so(ops, app, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("redis://user:pw@10.0.0.1 is down")

    monkeypatch.setattr(gateway_of(app).events.store, "list_events", broken)
    reply = ops.get("/console")
    assert reply.status_code == 200
    html = reply.get_data(as_text=True)
    assert "Could not be read just now: the dead deliveries, the pending deliveries." in html
    assert "10.0.0.1" not in html


# -- an order's timeline --------------------------------------------------------------------------------------------

def test_an_orders_timeline_shows_its_exchange_masked_and_its_event(ops, app):
    client = app.test_client()
    assert client.patch("/orders/SO-1004", json={"waybill": "TL-1"},
                        headers={"Authorization": f"Bearer {OPS_KEY}"}).status_code == 200
    webhook = {"webhookEventId": 41, "system": "console", "timestamp": recent_timestamp(), "orderId": 1004,
               "orderNumber": "SO-1004", "webhookTemplate": "OrderPicked", "orderStatus": {"number": 400}}
    assert client.post("/webhooks/ongoing/ongoing-demo", json=webhook, auth=WEBHOOK_AUTH).status_code == 202
    reply = ops.get("/console/orders?order_id=SO-1004")
    assert reply.status_code == 200
    html = reply.get_data(as_text=True)
    exchange = html[html.index('<li class="exchange outcome-ok"'):]
    assert "<strong>UpdateOrder</strong> on ongoing-demo" in exchange and "by ops" in exchange
    assert "&lt;Password&gt;********&lt;/Password&gt;" in exchange  # masked as a dry run shows it
    assert "\n  &lt;soap:Body&gt;\n    &lt;UpdateOrder" in exchange  # pretty-printed
    assert "&lt;Waybill&gt;TL-1&lt;/Waybill&gt;" in exchange
    event = html[html.index('<li class="event"'):]
    assert "event <strong>order.picked</strong>" in event and 'data-subscriber="demo"' in event
    assert html.index('<li class="exchange') < html.index('<li class="event"')  # in the order they happened
    assert "demo-password" not in html


def test_an_unknown_order_says_nothing_is_kept(ops):
    html = ops.get("/console/orders?order_id=NO-SUCH-ORDER").get_data(as_text=True)
    assert 'id="nothing-found"' in html


@pytest.mark.parametrize(("query", "says"), [
    ("order_id=" + "x" * 201, "An order id has at most 200 characters."),
    ("order_id=SO-1&connection=elsewhere", "Unknown connection &#39;elsewhere&#39;; one of: ongoing-demo."),
])
def test_an_unusable_search_is_a_422_page(ops, query, says):
    reply = ops.get(f"/console/orders?{query}")
    assert reply.status_code == 422 and says in reply.get_data(as_text=True)


def test_no_page_shows_a_secret_even_when_a_backend_echoes_one(ops, app):
    scrubber = Scrubber.for_settings(app.config["GATEWAY_SETTINGS"])
    store_dead_event(app, order="SO-1003")
    gateway_of(app).recorder.journal.record(_echoing_exchange())
    for path in ("/console", "/console/orders?order_id=SO-1003", "/console/login"):
        html = ops.get(path).get_data(as_text=True)
        assert scrubber.scrub(html) == html, path
        for secret in ("demo-password", OPS_KEY, SESSION_SECRET, WEBHOOK_AUTH[1]):
            assert secret not in html


def _echoing_exchange():
    from gateway.journal import Exchange

    # as a journal written by an older gateway might hold it: a reply echoing the password, unscrubbed
    return Exchange(id="exc_echo", at=1_900_000_000.0, request_id="r", caller="ops", connection="ongoing-demo",
                    backend="ongoing", operation="UpdateOrder", order_ids=("SO-1003",),
                    request={"method": "POST", "url": "http://backend/", "headers": {}, "body": "<a/>"},
                    reply={"status": 500, "headers": {}, "body": "<fault>bad password demo-password &amp; "
                                                                 "demo-password</fault>"},
                    duration_ms=3.0, outcome="failed", error="the password demo-password was refused")


# -- redelivering ------------------------------------------------------------------------------------------------

def test_the_redeliver_button_queues_the_event_once_however_often_it_is_pressed(ops, app):
    event_id = store_dead_event(app)
    store = gateway_of(app).events.store
    form = redeliver_form(ops.get("/console").get_data(as_text=True), event_id)
    first = ops.post(f"/console/events/{event_id}/redeliver", data=form)
    assert first.status_code == 303 and first.headers["Location"] == "/console"
    assert f"Event {event_id} is queued again for demo." in ops.get("/console").get_data(as_text=True)
    (delivery,) = store.get_event(event_id)["deliveries"]
    assert delivery["state"] == "pending"
    assert delivery["history"][-1]["requested_by"] == "ops"

    store.record_attempt(event_id, "demo", outcome="dead", error="again")  # dead again; the old form sent again
    again = ops.post(f"/console/events/{event_id}/redeliver", data=form)
    assert again.status_code == 303
    assert "was already queued again by this button" in ops.get("/console").get_data(as_text=True)
    (delivery,) = store.get_event(event_id)["deliveries"]
    assert delivery["state"] == "dead"
    assert sum(1 for entry in delivery["history"] if entry.get("requested_by")) == 1


def test_the_button_and_the_api_share_an_idempotency_key(ops, app):
    event_id = store_dead_event(app)
    form = redeliver_form(ops.get("/console").get_data(as_text=True), event_id)
    ops.post(f"/console/events/{event_id}/redeliver", data=form)
    api = app.test_client().post(f"/events/{event_id}/redeliver", headers={
        "Authorization": f"Bearer {OPS_KEY}", "Idempotency-Key": f'"{form["idempotency_key"]}"'})
    assert api.status_code == 202 and api.headers["Idempotent-Replayed"] == "true"


def test_a_redeliver_without_the_csrf_token_is_refused(ops, app):
    event_id = store_dead_event(app)
    form = redeliver_form(ops.get("/console").get_data(as_text=True), event_id)
    for token in ("", "forged-token"):
        reply = ops.post(f"/console/events/{event_id}/redeliver", data={**form, "csrf_token": token})
        assert reply.status_code == 403 and 'id="refused"' in reply.get_data(as_text=True)
    assert gateway_of(app).events.store.get_event(event_id)["deliveries"][0]["state"] == "dead"


def test_without_events_redeliver_there_is_no_button_and_the_form_is_refused(app):
    event_id = store_dead_event(app)
    viewer = app.test_client()
    log_in(viewer, VIEWER_KEY)
    html = viewer.get("/console").get_data(as_text=True)
    assert f"/console/events/{event_id}/redeliver" not in html
    reply = viewer.post(f"/console/events/{event_id}/redeliver",
                        data={"csrf_token": csrf_of(html), "idempotency_key": "k-1", "next": "/console"})
    assert reply.status_code == 303
    assert "lacks the scope events:redeliver" in viewer.get("/console").get_data(as_text=True)
    assert gateway_of(app).events.store.get_event(event_id)["deliveries"][0]["state"] == "dead"


def test_redelivering_an_unknown_event_says_so(ops):
    html = ops.get("/console").get_data(as_text=True)
    ops.post("/console/events/evt_unknown/redeliver",
             data={"csrf_token": csrf_of(html), "idempotency_key": "k-unknown", "next": "/console"})
    assert "No event &#39;evt_unknown&#39;." in ops.get("/console").get_data(as_text=True)


# -- the chart ----------------------------------------------------------------------------------------------------

def test_minutes_hold_each_minutes_calls_failures_and_percentiles():
    now = 10_000.0
    timings = [(now - 30, 10.0, "ok"), (now - 40, 30.0, "ok"), (now - 50, 20.0, "timeout"),
               (now - 90, 5.0, "ok"), (now - 3700, 1.0, "ok")]  # the last one is older than the hour
    per_minute = charts.minutes(timings, now)
    assert len(per_minute) == 60
    assert per_minute[-1] == charts.Minute(calls=3, failures=1, p50=20.0, p99=30.0)
    assert per_minute[-2] == charts.Minute(calls=1, failures=0, p50=5.0, p99=5.0)
    assert all(minute.calls == 0 for minute in per_minute[:-2])


def test_the_chart_draws_lines_breaks_them_where_no_call_was_and_marks_failures():
    minute = charts.Minute(calls=2, failures=0, p50=12.0, p99=40.0)
    quiet = charts.Minute(calls=0, failures=0, p50=None, p99=None)
    failed = charts.Minute(calls=1, failures=1, p50=80.0, p99=80.0)
    svg = str(charts.latency_chart([minute, minute, quiet, failed], label="a <b>"))
    assert svg.startswith('<svg class="latency"') and svg.endswith("</svg>")
    assert svg.count('<polyline class="p50"') == 1 and svg.count('<circle class="p50"') == 1
    assert svg.count('<rect class="failure"') == 1
    assert ">100 ms<" in svg  # the axis' top: the next of 1, 2, 5 x 10^n above the highest p99
    assert "a &lt;b&gt;" in svg and "<b>" not in svg
    empty = str(charts.latency_chart([quiet] * 60, label="idle"))
    assert "no calls in the last hour" in empty and "<polyline" not in empty


@pytest.mark.parametrize("path", [
    "/console/orders?order_id=%00%ff%fe", "/console/orders?order_id=" + "%F0%9F%98%80" * 60,
    "/console/orders?order_id=SO-1&connection=%00", "/console/orders?order_id=%20%20",
    "/console/orders?order_id=SO-1&order_id=SO-2", "/console/login?next=%00//x", "/console/static/..%2f..%2fsetup.cfg",
    "/console/nowhere",
])
def test_hostile_queries_get_a_page_never_a_500(ops, path):
    reply = ops.get(path)
    assert reply.status_code in (200, 303, 404, 422), (path, reply.status_code)
    reply.close()


@pytest.mark.parametrize("form", [
    {"idempotency_key": "ключ"}, {"idempotency_key": "x" * 300}, {"idempotency_key": ""}, {"next": "//evil"},
    {"next": "\x00"}, {"idempotency_key": "k\x07"},
])
def test_hostile_redeliver_forms_are_refused_with_a_message(ops, app, form):
    event_id = store_dead_event(app)
    html = ops.get("/console").get_data(as_text=True)
    sent = {**redeliver_form(html, event_id), **form}
    reply = ops.post(f"/console/events/{event_id}/redeliver", data=sent)
    assert reply.status_code == 303 and reply.headers["Location"] == "/console"
    state = gateway_of(app).events.store.get_event(event_id)["deliveries"][0]["state"]
    assert state == ("pending" if set(form) == {"next"} else "dead")


def test_a_long_event_id_is_an_unknown_event(ops):
    html = ops.get("/console").get_data(as_text=True)
    reply = ops.post("/console/events/" + "e" * 5000 + "/redeliver",
                     data={"csrf_token": csrf_of(html), "idempotency_key": "k-long", "next": "/console"})
    assert reply.status_code == 303
    assert "No event" in ops.get("/console").get_data(as_text=True)


def test_the_console_cookie_opens_nothing_of_the_api_and_the_api_sets_no_cookie(app):
    client = app.test_client()
    cookie = log_in(client).headers["Set-Cookie"].split(";", 1)[0]
    reply = app.test_client().get("/events", headers={"Cookie": cookie})
    assert reply.status_code == 401
    assert "Set-Cookie" not in reply.headers
    assert "Set-Cookie" not in app.test_client().get("/events", headers={"Authorization": f"Bearer {OPS_KEY}"}).headers
