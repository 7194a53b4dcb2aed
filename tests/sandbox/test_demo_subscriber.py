"""The demo subscriber records deliveries signed as Standard Webhooks, rejects the rest, and can act out outages."""

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from sandbox import create_app

EVENTS = "/subscriber/events"
SECRET = "whsec_" + base64.b64encode(b"order-gateway-demo-subscriber-secret").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-subscriber-secret").decode()


def order_event(order_id: str = "SO-1001", status: str = "released") -> dict:
    return {"type": "order.status_changed", "data": {"order_id": order_id, "status": status}}


def signed_headers(body: bytes, msg_id: str = "msg_1", secret: str = SECRET, timestamp: datetime | None = None) -> dict:
    timestamp = timestamp or datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body.decode()),
    }


def deliver(client, event: dict | None = None, msg_id: str = "msg_1", path: str = EVENTS, **signing):
    body = json.dumps(event or order_event()).encode()
    return client.post(path, data=body, headers=signed_headers(body, msg_id, **signing))


def records(client) -> dict:
    response = client.get(EVENTS)
    assert response.status_code == 200
    return response.get_json()


def set_behaviour(client, **document):
    return client.post("/subscriber/_behaviour", json=document)


def test_a_deliverys_trace_context_is_recorded(client):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = json.dumps(order_event("SO-1006", "picked")).encode()
    client.post(EVENTS, data=body, headers={**signed_headers(body, "msg_trace"), "traceparent": traceparent,
                                            "tracestate": "gw=1"})
    (record,) = records(client)["received"]
    assert (record["traceparent"], record["tracestate"]) == (traceparent, "gw=1")


def test_signed_delivery_is_recorded(client):
    response = deliver(client, order_event("SO-1006", "picked"), msg_id="msg_2Xv9")

    assert response.status_code == 204
    assert response.data == b""
    seen = records(client)
    assert seen["rejected"] == []
    (record,) = seen["received"]
    received_at = datetime.fromisoformat(record.pop("received_at"))
    assert abs(datetime.now(UTC) - received_at) < timedelta(seconds=5)
    assert record == {
        "webhook_id": "msg_2Xv9",
        "traceparent": None,
        "tracestate": None,
        "verified": True,
        "event": order_event("SO-1006", "picked"),
        "error": None,
    }


def test_several_signatures_pass_when_one_matches(client):
    body = json.dumps(order_event()).encode()
    headers = signed_headers(body)
    rotated_out = Webhook(OTHER_SECRET).sign("msg_1", datetime.now(UTC), body.decode())
    headers["webhook-signature"] = f"{rotated_out} v1a,ignored {headers['webhook-signature']}"

    assert client.post(EVENTS, data=body, headers=headers).status_code == 204
    assert len(records(client)["received"]) == 1


def tampered(headers: dict, body: bytes) -> tuple[dict, bytes]:
    return headers, body.replace(b"released", b"canceled")


def without(name: str):
    def remove(headers: dict, body: bytes) -> tuple[dict, bytes]:
        return {key: value for key, value in headers.items() if key != name}, body

    return remove


def signed_with(secret: str | None = None, timestamp: datetime | None = None):
    def resign(headers: dict, body: bytes) -> tuple[dict, bytes]:
        return signed_headers(body, secret=secret or SECRET, timestamp=timestamp), body

    return resign


def replaced(name: str, value: str):
    def replace(headers: dict, body: bytes) -> tuple[dict, bytes]:
        return {**headers, name: value}, body

    return replace


@pytest.mark.parametrize(
    "spoil",
    [
        signed_with(secret=OTHER_SECRET),
        tampered,
        without("webhook-id"),
        without("webhook-timestamp"),
        without("webhook-signature"),
        signed_with(timestamp=datetime.now(UTC) - timedelta(minutes=10)),
        signed_with(timestamp=datetime.now(UTC) + timedelta(minutes=10)),
        replaced("webhook-timestamp", "yesterday"),
        replaced("webhook-id", "msg_other"),
        replaced("webhook-signature", "not-a-signature"),
    ],
    ids=[
        "wrong-secret",
        "tampered-body",
        "no-id",
        "no-timestamp",
        "no-signature",
        "stale-timestamp",
        "future-timestamp",
        "timestamp-not-a-number",
        "other-id",
        "malformed-signature",
    ],
)
def test_unverifiable_delivery_is_rejected(client, spoil):
    body = json.dumps(order_event()).encode()
    headers, body = spoil(signed_headers(body), body)

    response = client.post(EVENTS, data=body, headers=headers)

    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    # Why the signature failed is standardwebhooks' to word (its wording changes between releases): the sandbox
    # refuses with a 401, says why, and records the delivery as rejected, unverified, with that same reason.
    detail = response.get_json()["detail"]
    assert isinstance(detail, str) and detail.strip()
    seen = records(client)
    assert seen["received"] == []
    (record,) = seen["rejected"]
    assert (record["verified"], record["error"], record["event"]) == (False, detail, json.loads(body))
    assert record["webhook_id"] == headers.get("webhook-id")


def test_signed_body_that_is_not_json_is_rejected(client):
    body = b"order SO-1001 released"

    response = client.post(EVENTS, data=body, headers=signed_headers(body, "msg_text"))

    assert response.status_code == 400
    seen = records(client)
    assert seen["received"] == []
    assert [
        (record["webhook_id"], record["verified"], record["event"], record["error"]) for record in seen["rejected"]
    ] == [("msg_text", True, None, "The body is not JSON.")]


def test_deliveries_are_listed_in_arrival_order_duplicates_included(client):
    for msg_id, order_id in [("msg_a", "SO-1001"), ("msg_b", "SO-1002"), ("msg_a", "SO-1001")]:
        assert deliver(client, order_event(order_id), msg_id=msg_id).status_code == 204
    assert deliver(client, msg_id="msg_c", secret=OTHER_SECRET).status_code == 401

    seen = records(client)
    assert [(record["webhook_id"], record["event"]["data"]["order_id"]) for record in seen["received"]] == [
        ("msg_a", "SO-1001"),
        ("msg_b", "SO-1002"),
        ("msg_a", "SO-1001"),
    ]
    assert [record["webhook_id"] for record in seen["rejected"]] == ["msg_c"]


def test_concurrent_deliveries_are_all_recorded(app):
    start = threading.Barrier(12)
    statuses = []

    def send(number):
        client = app.test_client()
        start.wait()
        statuses.append(deliver(client, order_event(f"SO-{number}"), msg_id=f"msg_{number}").status_code)

    threads = [threading.Thread(target=send, args=(number,)) for number in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [204] * 12
    received = records(app.test_client())["received"]
    assert sorted(record["webhook_id"] for record in received) == sorted(f"msg_{number}" for number in range(12))


# --- simulated outages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "status"), [("down", 503), ("error", 500)])
def test_outage_modes_answer_an_error_and_record_nothing(client, mode, status):
    assert set_behaviour(client, mode=mode).get_json() == {"mode": mode, "delay": 0.0}

    response = deliver(client)

    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert records(client) == {"received": [], "rejected": []}
    assert set_behaviour(client, mode="up").status_code == 200
    assert deliver(client).status_code == 204
    assert len(records(client)["received"]) == 1


def test_slow_mode_answers_after_the_delay_and_still_records(client):
    assert set_behaviour(client, mode="slow", delay=0.3).status_code == 200
    assert client.get("/subscriber/_behaviour").get_json() == {"mode": "slow", "delay": 0.3}

    started = time.monotonic()
    response = deliver(client)
    elapsed = time.monotonic() - started

    assert response.status_code == 204
    assert elapsed >= 0.3
    assert len(records(client)["received"]) == 1


def test_slow_mode_still_checks_signatures(client):
    assert set_behaviour(client, mode="slow", delay=0.05).status_code == 200

    assert deliver(client, secret=OTHER_SECRET).status_code == 401
    assert len(records(client)["rejected"]) == 1


def test_behaviour_is_up_by_default(client):
    assert client.get("/subscriber/_behaviour").get_json() == {"mode": "up", "delay": 0.0}


@pytest.mark.parametrize(
    ("document", "fields"),
    [
        ({"mode": "sideways"}, ["mode"]),
        ({}, ["mode"]),
        ({"mode": "slow", "delay": -1}, ["delay"]),
        ({"mode": "slow", "delay": "2"}, ["delay"]),
        ({"mode": "slow", "delay": True}, ["delay"]),
        ({"mode": "slow", "delay": 61}, ["delay"]),
        ({"mode": "up", "status": 200}, ["status"]),
    ],
    ids=["unknown-mode", "no-mode", "negative-delay", "delay-text", "delay-bool", "delay-too-long", "unknown-member"],
)
def test_invalid_behaviour_is_a_422(client, document, fields):
    response = set_behaviour(client, **document)

    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert [error["field"] for error in response.get_json()["errors"]] == fields
    assert client.get("/subscriber/_behaviour").get_json() == {"mode": "up", "delay": 0.0}


def test_behaviour_that_is_not_json_is_a_422(client):
    response = client.post("/subscriber/_behaviour", data=b"down", content_type="text/plain")

    assert response.status_code == 422
    assert response.get_json()["detail"] == "The body must be a JSON object."


def test_reset_forgets_deliveries_and_ends_an_outage(client):
    assert deliver(client).status_code == 204
    assert deliver(client, secret=OTHER_SECRET).status_code == 401
    assert set_behaviour(client, mode="down").status_code == 200

    assert client.post("/subscriber/_reset").status_code == 204

    assert records(client) == {"received": [], "rejected": []}
    assert deliver(client).status_code == 204


# --- configuration ----------------------------------------------------------------------------------------------


def test_path_and_secret_are_configurable():
    client = create_app(
        {"TESTING": True, "SUBSCRIBER_PATH": "/internal/order-events", "SUBSCRIBER_SECRET": OTHER_SECRET}
    ).test_client()

    assert deliver(client, path="/internal/order-events", secret=OTHER_SECRET).status_code == 204
    assert deliver(client, path="/internal/order-events").status_code == 401
    assert client.get("/internal/order-events").get_json()["received"][0]["event"] == order_event()
    assert deliver(client).status_code == 404


def test_secret_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SANDBOX_SUBSCRIBER_SECRET", OTHER_SECRET)
    client = create_app({"TESTING": True}).test_client()

    assert deliver(client, secret=OTHER_SECRET).status_code == 204
    assert deliver(client).status_code == 401


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_events_path_takes_only_get_and_post(client, method):
    assert client.open(EVENTS, method=method).status_code == 405
