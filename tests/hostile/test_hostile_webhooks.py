"""Webhook payloads that are valid JSON text but poison for the event store: non-finite numbers, lone surrogates,
fractional event ids and deep extra members are refused before anything is stored."""

from __future__ import annotations

import json

import pytest

from tests.hostile.conftest import (
    WEBHOOK_AUTH,
    WEBHOOK_PATH,
    assert_problem,
    nested_arrays,
    object_with,
    stored_events,
)
from tests.test_webhooks_receiving import PAYLOAD


def post_raw(client, text: str):
    """POST raw JSON text as an authenticated Ongoing webhook."""
    return client.post(WEBHOOK_PATH, data=text, content_type="application/json", auth=WEBHOOK_AUTH)


@pytest.mark.parametrize(
    ("member", "raw", "path", "fragment"),
    [
        ("orderId", "1e999", "orderId", "finite"),
        ("goodsOwnerId", "-1e999", "goodsOwnerId", "finite"),
        ("extraWeight", "1e999", "extraWeight", "finite"),
        ("addedLater", '{"weight": -1e999}', "addedLater.weight", "finite"),
        ("orderNumber", '"\\ud800"', "orderNumber", "surrogate"),
        ("goodsOwnerName", '"Demo \\udfff owner"', "goodsOwnerName", "surrogate"),
        ("extraNote", '"\\ud83d"', "extraNote", "surrogate"),
        ("goodsOwnerClasses", '[{"id": 1, "code": "\\ud800B2C", "name": "x"}]', "goodsOwnerClasses.0.code",
         "surrogate"),
    ],
    ids=["infinite-orderId", "negative-infinite-goodsOwnerId", "infinite-extra", "infinite-nested-extra",
         "lone-high-surrogate", "lone-low-surrogate", "lone-surrogate-in-extra", "lone-surrogate-in-list"],
)
def test_unstorable_values_are_422_naming_the_path_and_nothing_is_stored(gateway_client, member, raw, path,
                                                                         fragment):
    problem = assert_problem(post_raw(gateway_client, object_with(PAYLOAD, member, raw)), 422, "validation-failed")
    assert path in problem["errors"], problem["errors"]
    assert any(fragment in message for message in problem["errors"][path]), problem["errors"][path]
    assert stored_events(gateway_client) == []


def test_a_proper_surrogate_pair_is_an_ordinary_character(gateway_client):
    reply = post_raw(gateway_client, object_with(PAYLOAD, "goodsOwnerName", '"Demo \\ud83d\\ude00"'))
    assert reply.status_code == 202, reply.get_data(as_text=True)
    (stored,) = stored_events(gateway_client)
    assert stored["event"]["goods_owner"]["name"] == "Demo \N{GRINNING FACE}"


def test_a_fractional_event_id_is_refused_and_does_not_shadow_the_real_event(gateway_client):
    fractional = post_raw(gateway_client, object_with(PAYLOAD, "webhookEventId", "4242.9"))
    problem = assert_problem(fractional, 422, "validation-failed")
    assert "webhookEventId" in problem["errors"]
    assert stored_events(gateway_client) == []

    real = gateway_client.post(WEBHOOK_PATH, json={**PAYLOAD, "webhookEventId": 4242}, auth=WEBHOOK_AUTH)
    assert real.status_code == 202, real.get_data(as_text=True)
    assert real.get_json()["duplicate"] is False
    (stored,) = stored_events(gateway_client)
    assert stored["event"]["raw"]["webhookEventId"] == 4242


def test_a_deep_extra_member_is_400_and_the_event_list_stays_readable(gateway_client):
    text = object_with(PAYLOAD, "addedLater", nested_arrays(970))
    problem = assert_problem(post_raw(gateway_client, text), 400, "malformed-request")
    assert "nested deeper than" in problem["detail"]
    assert stored_events(gateway_client) == []
    by_order = gateway_client.get("/events", query_string={"order_id": str(PAYLOAD["orderId"])})
    assert by_order.status_code == 200
    assert by_order.get_json()["events"] == []


def test_an_ordinary_webhook_still_goes_through_after_hostile_ones(gateway_client):
    for raw in ("1e999", '"\\ud800"', nested_arrays(970)):
        assert post_raw(gateway_client, object_with(PAYLOAD, "addedLater", raw)).status_code in (400, 422)
    reply = post_raw(gateway_client, json.dumps(PAYLOAD))
    assert reply.status_code == 202, reply.get_data(as_text=True)
    assert len(stored_events(gateway_client)) == 1
