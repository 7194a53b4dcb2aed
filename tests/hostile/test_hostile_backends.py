"""Backends sending crafted replies: deep JSON, non-ASCII digits, huge codes and deep XML are a 502
backend-failure with a bounded `backend` member, never a 500."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import (
    ARABIC_INDIC_TEN,
    assert_problem,
    nested_arrays,
    sellercenter_item_errors,
    sellercenter_whole_call_error,
    send_valid_update,
    soap11_fault,
    speed4trade_reports,
)

JSON = "application/json"
XML = "text/xml; charset=utf-8"
DIGITS_5000 = "9" * 5000
DEEP_XML = "<a>" * 10_000 + "x" + "</a>" * 10_000

HOSTILE_REPLIES = [
    ("sellercenter", nested_arrays(200_000), JSON, "nested deeper than"),
    ("sellercenter", '{"a":' * 100_000 + "1" + "}" * 100_000, JSON, "nested deeper than"),
    ("sellercenter", '{"ErrorResponse": {"Head": {"ErrorCode": "7"}, "Body": ' + nested_arrays(50_000) + "}}", JSON,
     "nested deeper than"),
    ("sellercenter", sellercenter_whole_call_error("²", "x"), JSON, None),
    ("sellercenter", sellercenter_whole_call_error(ARABIC_INDIC_TEN, "x"), JSON, None),
    ("sellercenter", sellercenter_whole_call_error(DIGITS_5000, "x"), JSON, None),
    ("sellercenter", sellercenter_whole_call_error("E" + DIGITS_5000, "x"), JSON, None),
    ("sellercenter", sellercenter_whole_call_error("@@code@@", "x").replace('"@@code@@"', DIGITS_5000), JSON, None),
    ("sellercenter", sellercenter_item_errors({"Position": "@@p@@"}).replace('"@@p@@"', DIGITS_5000), JSON, None),
    ("sellercenter", sellercenter_item_errors({"Position": "@@p@@"}).replace('"@@p@@"', "1e999"), JSON, None),
    ("ongoing", soap11_fault("soap:Server", "x").replace(b"<faultstring>x", DEEP_XML.encode() + b"<faultstring>x"),
     XML, None),
    ("ongoing", soap11_fault("soap:" + DIGITS_5000, "x"), XML, None),
    ("speed4trade", speed4trade_reports(("²", None)), XML, None),
    ("speed4trade", speed4trade_reports((DIGITS_5000, None)), XML, None),
    ("speed4trade", speed4trade_reports(("0", None)).replace(b"&lt;report", DEEP_XML.replace("<", "&lt;").encode()
                                                               + b"&lt;report"), XML, None),
]
HOSTILE_IDS = [
    "sc-200000-deep-array", "sc-100000-deep-object", "sc-deep-body-of-an-error", "sc-superscript-code",
    "sc-arabic-indic-code", "sc-5000-digit-code", "sc-E-and-5000-digits-code", "sc-5000-digit-code-literal",
    "sc-5000-digit-position", "sc-infinite-position", "ongoing-10000-deep-fault", "ongoing-5000-digit-faultcode",
    "s4t-superscript-return-code", "s4t-5000-digit-return-code", "s4t-10000-deep-return-document",
]


@pytest.mark.parametrize(("kind", "body", "content_type", "fragment"), HOSTILE_REPLIES, ids=HOSTILE_IDS)
def test_a_hostile_reply_is_a_bounded_502(gateway_to_fake, kind, body, content_type, fragment):
    client, fake = gateway_to_fake(kind)
    fake.answer(body, status=200, content_type=content_type)
    reply = send_valid_update(client, kind)
    problem = assert_problem(reply, 502, "backend-failure")
    assert len(fake.requests) == 1
    if fragment is not None:
        assert fragment in problem["detail"]
    backend = problem["backend"]
    assert backend["connection"] == "hostile"
    assert len(backend["code"] or "") <= 100


@pytest.mark.parametrize("status", [200, 500])
def test_a_deep_json_reply_is_refused_whatever_its_status(gateway_to_fake, status):
    client, fake = gateway_to_fake("sellercenter")
    fake.answer(nested_arrays(200_000), status=status, content_type=JSON)
    problem = assert_problem(send_valid_update(client, "sellercenter"), 502, "backend-failure")
    assert "nested deeper than" in problem["detail"]


def test_a_bulk_call_answered_with_deep_json_fails_its_items_not_the_request(gateway_to_fake):
    client, fake = gateway_to_fake("sellercenter")
    fake.answer(nested_arrays(200_000), content_type=JSON)
    reply = client.patch("/orders", json={"orders": [{"order_id": 300001, "shipping_address": {"city": "Bonn"}},
                                                     {"order_id": 300002, "shipping_address": {"city": "Kiel"}}]})
    assert reply.status_code == 207, reply.get_data(as_text=True)[:2000]
    results = reply.get_json()["results"]
    assert [result["status"] for result in results] == [502, 502]
    assert all("nested deeper than" in result["body"]["detail"] for result in results)
