"""POST /webhooks/ongoing/<connection>: authentication, validation, deduplication and the canonical event."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.ongoing_timestamps import RECENT, recent_timestamp

BASIC = {"auth": "basic", "username": "ongoing-webhooks", "password": "webhook-demo-password"}
TOKEN = {"auth": "token", "header": "X-Ongoing-Token", "token": "t0ken-value"}
SECRET = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"

PAYLOAD = {
    "webhookOrdersId": 3,
    "webhookEventId": 501,
    "system": "sandbox",
    "timestamp": f"{recent_timestamp()}.1234567",
    "orderId": 1004,
    "orderNumber": "SO-1004",
    "goodsOwnerId": 1,
    "path": "/api/v1/orders/1004",
    "byUser": {"userId": 7},
    "byComputer": {"computerId": 3, "computerName": "PACK-01"},
    "orderStatus": {"number": 400},
    "currentShipmentId": None,
    "webhookTemplate": "OrderPicked",
    "goodsOwnerName": "Demo goods owner",
    "goodsOwnerClasses": [{"id": 1, "code": "B2C", "name": "Consumers"}],
    "tracking": [{"trackingUrl": "https://t.example/WB-1", "waybill": "WB-1", "isReturn": False}],
    "parcels": [{"id": 9, "parcelNumber": "P-9", "isReturnParcel": False, "tracking": {"trackingUrl": "https://t/9"}}],
    "addedLater": {"kept": True},
}


def config_with(webhooks: dict | None, *, subscribers: dict | None = None, **connection_overrides) -> dict:
    connection = ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH, **connection_overrides)
    if webhooks is not None:
        connection["webhooks"] = webhooks
    config = gateway_config(**{"ongoing-demo": connection})
    if subscribers:
        config["subscribers"] = subscribers
    return config


@pytest.fixture
def client(make_gateway):
    subscriber = {"url": "http://127.0.0.1:9/events", "secret": SECRET, "types": ["order.picked"]}
    return make_gateway(config_with(dict(BASIC), subscribers={"picker": subscriber},
                                    status_map={"picked_and_checked": 400})).test_client()


def post(client, payload=PAYLOAD, auth=("ongoing-webhooks", "webhook-demo-password"), headers=None, path=None):
    return client.post(path or "/webhooks/ongoing/ongoing-demo", json=payload, auth=auth, headers=headers or {})


def stored(client) -> list[dict]:
    reply = client.get("/events")
    assert reply.status_code == 200
    return reply.get_json()["events"]


@pytest.mark.parametrize(
    ("auth", "headers"),
    [
        (None, {}),
        (("ongoing-webhooks", "wrong"), {}),
        (("someone-else", "webhook-demo-password"), {}),
        (None, {"Authorization": "Bearer webhook-demo-password"}),
        (None, {"X-Ongoing-Token": "t0ken-value"}),
    ],
    ids=["none", "wrong-password", "wrong-user", "bearer", "token-instead-of-basic"],
)
def test_unauthenticated_webhooks_are_401_and_nothing_is_stored(client, auth, headers):
    reply = post(client, auth=auth, headers=headers)
    assert reply.status_code == 401
    assert reply.mimetype == "application/problem+json"
    assert reply.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert stored(client) == []


@pytest.mark.parametrize(("headers", "status"), [({"X-Ongoing-Token": "t0ken-value"}, 202),
                                                  ({"X-Ongoing-Token": "t0ken-valuE"}, 401),
                                                  ({"X-Other": "t0ken-value"}, 401)])
def test_a_static_token_header(make_gateway, headers, status):
    client = make_gateway(config_with(dict(TOKEN))).test_client()
    assert post(client, auth=None, headers=headers).status_code == status
    assert len(stored(client)) == (1 if status == 202 else 0)


def test_an_accepted_webhook_becomes_the_canonical_event(client):
    reply = post(client)
    assert reply.status_code == 202
    accepted = reply.get_json()
    assert accepted["duplicate"] is False and accepted["type"] == "order.picked"
    assert accepted["subscribers"] == ["picker"]
    shown = client.get(f"/events/{accepted['id']}").get_json()
    event = shown["event"]
    assert event == {
        "id": accepted["id"],
        "type": "order.picked",
        "occurred_at": f"{RECENT:%Y-%m-%dT%H:%M:%S}.123456+00:00",
        "source": {"backend": "ongoing", "connection": "ongoing-demo", "system": "sandbox", "template": "OrderPicked"},
        "order": {"backend_order_id": "1004", "order_number": "SO-1004", "status": {"code": 400, "name": "picked"}},
        "goods_owner": {"id": 1, "name": "Demo goods owner",
                        "classes": [{"id": 1, "code": "B2C", "name": "Consumers"}]},
        "tracking": [{"url": "https://t.example/WB-1", "waybill": "WB-1", "is_return": False}],
        "parcels": [{"id": 9, "parcel_number": "P-9", "is_return": False, "tracking_url": "https://t/9"}],
        "actor": {"user": {"id": 7}, "computer": {"id": 3, "name": "PACK-01"}},
        "raw": PAYLOAD,
    }
    assert [delivery["subscriber"] for delivery in shown["deliveries"]] == ["picker"]
    assert shown["deliveries"][0]["state"] == "pending"


def test_retries_of_the_same_event_are_acknowledged_but_stored_once(client):
    first = post(client)
    again = post(client, payload={**PAYLOAD, "timestamp": recent_timestamp(300)})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json() == {"id": first.get_json()["id"], "type": "order.picked", "duplicate": True,
                                "subscribers": []}
    assert len(stored(client)) == 1
    other_system = post(client, payload={**PAYLOAD, "system": "other-warehouse"})
    assert other_system.status_code == 202
    assert len(stored(client)) == 2


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda p: p.pop("webhookEventId"), "webhookEventId"),
        (lambda p: p.update(webhookEventId="five"), "webhookEventId"),
        (lambda p: p.update(orderId=None), "orderId"),
        (lambda p: p.update(timestamp="yesterday"), "timestamp"),
        (lambda p: p.update(orderStatus={"number": "picked"}), "orderStatus.number"),
        (lambda p: p.update(tracking=[{"isReturn": "maybe"}]), "tracking.0.isReturn"),
        (lambda p: p.update(webhookTemplate="InvoiceCreated"), "webhookTemplate"),
    ],
)
def test_invalid_payloads_are_422_with_field_paths(client, change, path):
    payload = copy.deepcopy(PAYLOAD)
    change(payload)
    reply = post(client, payload=payload)
    assert reply.status_code == 422
    assert path in reply.get_json()["errors"], reply.get_json()
    assert stored(client) == []


def test_the_template_mapping_is_configurable(make_gateway):
    webhooks = {**BASIC, "event_types": {"Plockad": "order.picked"}, "timezone": "Europe/Stockholm"}
    client = make_gateway(config_with(webhooks)).test_client()
    reply = post(client, payload={**PAYLOAD, "webhookTemplate": "Plockad"})
    assert reply.status_code == 202
    event = client.get(f"/events/{reply.get_json()['id']}").get_json()["event"]
    assert event["type"] == "order.picked"
    stockholm = datetime.fromisoformat(PAYLOAD["timestamp"][:26]).replace(tzinfo=ZoneInfo("Europe/Stockholm"))
    assert event["occurred_at"] == stockholm.isoformat()
    assert stockholm.utcoffset() != RECENT.utcoffset()  # read in Stockholm's time, not in UTC


@pytest.mark.parametrize(
    "path",
    ["/webhooks/ongoing/nowhere", "/webhooks/speed4trade/ongoing-demo", "/webhooks/ongoing/s4t"],
)
def test_only_configured_webhook_receivers_exist(make_gateway, path):
    config = config_with(dict(BASIC))
    config["connections"]["s4t"] = {
        "backend": "speed4trade", "url": "http://127.0.0.1:9/", "username": "u", "password": "p",
        "mandator_id": 1, "soap_version": "1.1", "namespace": "urn:x"}
    client = make_gateway(config).test_client()
    reply = post(client, path=path)
    assert reply.status_code == 404
    assert reply.get_json()["type"].endswith(":webhook-not-found")


@pytest.mark.expected_traceback
def test_a_store_failure_is_503_so_the_sender_retries(client):
    app = client.application
    service = gateway_of(app).events

    def broken(*args, **kwargs):
        raise OSError("disk full")

    original = service.store.add_event
    service.store.add_event = broken
    try:
        reply = post(client)
    finally:
        service.store.add_event = original
    assert reply.status_code == 503
    assert "disk full" not in reply.get_data(as_text=True)
    assert stored(client) == []


def test_events_can_be_filtered_and_shown(client):
    post(client)
    post(client, payload={**PAYLOAD, "webhookEventId": 502, "orderId": 1005, "orderNumber": "SO-1005",
                          "webhookTemplate": "OrderStatusChanged", "orderStatus": {"number": 450}})
    assert [e["event"]["order"]["order_number"] for e in stored(client)] == ["SO-1005", "SO-1004"]
    by_order = client.get("/events?order_id=SO-1004").get_json()["events"]
    assert [e["event"]["order"]["backend_order_id"] for e in by_order] == ["1004"]
    by_type = client.get("/events?type=order.status_changed").get_json()["events"]
    assert [e["event"]["type"] for e in by_type] == ["order.status_changed"]
    assert client.get("/events?state=delivered").get_json()["events"] == []
    assert client.get("/events?limit=1").get_json()["count"] == 1
    bad = client.get("/events?type=order.lost&state=gone&limit=0")
    assert bad.status_code == 422 and set(bad.get_json()["errors"]) == {"type", "state", "limit"}
    assert client.get("/events/evt_unknown").status_code == 404
    assert client.post("/events/evt_unknown/redeliver").status_code == 404


def test_webhook_settings_are_checked_at_start_up(make_gateway):
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="needs username and password"):
        make_gateway(config_with({"auth": "basic", "username": "x"}))
    with pytest.raises(ConfigError, match="Unknown time zone"):
        make_gateway(config_with({**BASIC, "timezone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match="sends no webhooks"):
        config = config_with(None)
        config["connections"]["sc"] = {"backend": "sellercenter", "url": "http://127.0.0.1:9/", "api_key": "k",
                                       "webhooks": dict(BASIC)}
        make_gateway(config)


def test_redeliver_puts_every_delivery_back_and_queues_it(client):
    event_id = post(client).get_json()["id"]
    service = gateway_of(client.application).events
    service.store.record_attempt(event_id, "picker", outcome="dead", error="HTTP 410")
    assert client.get("/events?state=dead").get_json()["count"] == 1
    queued_before = service.queue.huey.pending_count()
    reply = client.post(f"/events/{event_id}/redeliver")
    assert reply.status_code == 202
    assert reply.get_json() == {"id": event_id, "redelivering_to": ["picker"], "requested_by": "anonymous"}
    history = client.get(f"/events/{event_id}").get_json()["deliveries"][0]["history"]
    assert history[-1]["outcome"] == "redeliver" and history[-1]["requested_by"] == "anonymous"
    delivery = client.get(f"/events/{event_id}").get_json()["deliveries"][0]
    assert (delivery["state"], delivery["attempts"]) == ("pending", 0)
    assert [entry["outcome"] for entry in delivery["history"]] == ["dead", "redeliver"]
    assert service.queue.huey.pending_count() == queued_before + 1


def test_an_accepted_event_is_queued_for_each_subscriber(client):
    service = gateway_of(client.application).events
    before = service.queue.huey.pending_count()
    post(client)
    assert service.queue.huey.pending_count() == before + 1
    post(client)  # a duplicate queues nothing
    assert service.queue.huey.pending_count() == before + 1


# --- replays and the bound on what an event keeps -----------------------------------------------------------------

def utc_timestamp(**ago: float) -> str:
    """Now minus `ago` (timedelta's keywords; negative: ahead), as Ongoing writes it in UTC."""
    return f"{datetime.now(UTC) - timedelta(**ago):%Y-%m-%dT%H:%M:%S.%f}0"


@pytest.mark.parametrize(("ago", "fragment"), [
    ({"hours": 48, "minutes": 5}, "refused as a replay"),
    ({"days": 30}, "refused as a replay"),
    ({"minutes": -905}, "ahead of the gateway's clock"),
    ({"days": -400}, "ahead of the gateway's clock"),
], ids=["just-past-48-h", "a-month-old", "15-h-5-min-ahead", "next-year"])
def test_a_timestamp_outside_the_window_is_422_naming_it_and_nothing_is_stored(client, ago, fragment):
    reply = post(client, payload={**PAYLOAD, "timestamp": utc_timestamp(**ago)})
    assert reply.status_code == 422
    assert reply.mimetype == "application/problem+json"
    problem = reply.get_json()
    assert list(problem["errors"]) == ["timestamp"]
    assert fragment in problem["errors"]["timestamp"][0] and fragment in problem["detail"]
    assert stored(client) == []


@pytest.mark.parametrize("ago", [{"hours": 47, "minutes": 55}, {"hours": -2}, {"minutes": -895}, {"seconds": 0}],
                         ids=["47-h-55-old", "swedish-summer-time-read-as-utc", "14-h-55-min-ahead", "now"])
def test_a_timestamp_inside_the_window_is_accepted(client, ago):
    assert post(client, payload={**PAYLOAD, "timestamp": utc_timestamp(**ago)}).status_code == 202


def test_the_window_is_the_connections_setting_in_its_time_zone(make_gateway):
    webhooks = {**BASIC, "max_age_hours": 2, "max_ahead_minutes": 0, "timezone": "Asia/Tokyo"}
    client = make_gateway(config_with(webhooks)).test_client()
    def tokyo(**delta: float) -> str:
        return f"{datetime.now(ZoneInfo('Asia/Tokyo')) + timedelta(**delta):%Y-%m-%dT%H:%M:%S}"

    three_hours_ago = post(client, payload={**PAYLOAD, "timestamp": tokyo(hours=-3)})
    assert three_hours_ago.status_code == 422
    assert "2.0 h" in three_hours_ago.get_json()["errors"]["timestamp"][0]
    assert "max_age_hours" in three_hours_ago.get_json()["errors"]["timestamp"][0]
    # the same wall-clock time in UTC would be 9 hours ahead: read in Tokyo's time it is an hour old
    assert post(client, payload={**PAYLOAD, "timestamp": tokyo(hours=-1)}).status_code == 202
    ahead = post(client, payload={**PAYLOAD, "webhookEventId": 9, "timestamp": tokyo(minutes=2)})
    assert ahead.status_code == 422
    assert "Asia/Tokyo" in ahead.get_json()["errors"]["timestamp"][0]


def test_a_replay_window_longer_than_the_events_are_kept_stops_start_up(make_gateway):
    from gateway.errors import ConfigError

    config = config_with({**BASIC, "max_age_hours": 72})
    config["events"] = {"retention_days": 2}
    with pytest.raises(ConfigError, match=r"connections\.ongoing-demo\.webhooks\.max_age_hours: 72 h is longer"):
        make_gateway(config)
    config["events"] = {"retention_days": 3}
    assert make_gateway(config) is not None


def compact_size(payload: dict) -> int:
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def test_a_webhook_larger_than_an_event_keeps_is_413_naming_the_limit_and_nothing_is_stored(client):
    reply = post(client, payload={**PAYLOAD, "junk": "x" * (3 * 1024 * 1024)})
    assert reply.status_code == 413
    assert reply.mimetype == "application/problem+json"
    problem = reply.get_json()
    assert problem["type"].endswith(":payload-too-large")
    assert "65536" in problem["detail"] and "max_raw_bytes" in problem["detail"]
    assert stored(client) == []
    # the event it would have been is not a duplicate of anything: sent within the bound, it is stored
    assert post(client).status_code == 202


def test_the_bound_on_raw_is_a_setting_counted_in_bytes_of_compact_json(make_gateway):
    config = config_with(dict(BASIC))
    config["events"] = {"max_raw_bytes": 2048}
    client = make_gateway(config).test_client()
    filler = {**PAYLOAD, "note": ""}
    room = 2048 - compact_size(filler)
    exactly = {**PAYLOAD, "note": "é" * (room // 2) + "x" * (room % 2)}  # two bytes each in UTF-8
    assert compact_size(exactly) == 2048
    one_more = {**exactly, "webhookEventId": 502, "note": exactly["note"] + "x"}
    assert post(client, payload=one_more).status_code == 413
    assert post(client, payload=exactly).status_code == 202
    assert [event["event"]["raw"] for event in stored(client)] == [exactly]
