"""SellerCenter UpdateOrderInformation: the official signing test vector, golden JSON bodies, the pre-send
check, and the mapping of success, per-item and whole-call replies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from marshmallow import ValidationError

from gateway.backends.sellercenter.signing import SellerCenterSignature, encode_rfc3986, signature_of, string_to_sign
from gateway.canonical import load_order_update
from gateway.errors import (
    BackendError,
    BackendFailure,
    BackendRejected,
    BackendUnavailable,
    OrderNotFound,
    OrderStateConflict,
    TranslationError,
    ValidationFailed,
)
from gateway.transport import BackendReply
from tests.calls import RecordingTransport, make_connection, parse_reply, render
from tests.conftest import sellercenter_connection

GOLDEN = Path(__file__).parent / "fixtures" / "sellercenter"
VECTOR_KEY = "b1bdb357ced10fe4e9a69840cdd4f0e9c03d77fe"
VECTOR_PARAMETERS = [("Action", "FeedList"), ("Format", "XML"), ("Timestamp", "2015-07-01T11:11:11+00:00"),
                     ("UserID", "look@me.com"), ("Version", "1.0")]


def test_the_official_test_vector():
    assert string_to_sign(VECTOR_PARAMETERS) == (
        "Action=FeedList&Format=XML&Timestamp=2015-07-01T11%3A11%3A11%2B00%3A00&UserID=look%40me.com&Version=1.0")
    assert signature_of(VECTOR_PARAMETERS, VECTOR_KEY) == (
        "3ceb8ed91049dfc718b0d2d176fb2ed0e5fd74f76c5971f34cdab48412476041")


def test_signing_sorts_by_name_and_ignores_an_old_signature():
    shuffled = [*reversed(VECTOR_PARAMETERS), ("Signature", "stale")]
    assert signature_of(shuffled, VECTOR_KEY) == "3ceb8ed91049dfc718b0d2d176fb2ed0e5fd74f76c5971f34cdab48412476041"


@pytest.mark.parametrize(("text", "encoded"), [("a b", "a%20b"), ("a~b", "a~b"), ("a+b", "a%2Bb"), ("ä/", "%C3%A4%2F")])
def test_rfc3986_encoding(text, encoded):
    assert encode_rfc3986(text) == encoded


def test_the_auth_signs_the_prepared_request_with_a_fresh_timestamp():
    signer = SellerCenterSignature(VECTOR_KEY, user_id="look@me.com", clock=lambda: "2015-07-01T11:11:11+00:00")
    prepared = requests.Request("POST", "https://sc.test/oms-api/?Action=FeedList&Format=XML&Version=1.0",
                                auth=signer).prepare()
    query = dict(parse_qsl(urlsplit(prepared.url).query))
    assert query["Timestamp"] == "2015-07-01T11:11:11+00:00"
    assert query["UserID"] == "look@me.com"
    assert query["Signature"] == "3ceb8ed91049dfc718b0d2d176fb2ed0e5fd74f76c5971f34cdab48412476041"


@pytest.fixture
def connection():
    connection = make_connection("sc", sellercenter_connection("http://127.0.0.1:9/oms-api/"))
    yield connection
    connection.close()


@pytest.mark.parametrize(
    ("golden", "items"),
    [
        ("billing_partial", [("300001", {"billing_address": {"first_name": "Erika", "city": "Köln"}})]),
        ("both_addresses", [("300002", {
            "billing_address": {"first_name": "John", "last_name": "Doe", "phone": "1234567", "phone2": "1234",
                                "address1": "Sesamestreet 123", "address2": "c/o Bert", "address3": "3rd floor",
                                "address4": "left", "address5": "bell 7", "city": "Berlin", "postcode": "12345",
                                "country": "Germany"},
            "shipping_address": {"address1": "Hauptstraße 5"}})]),
        ("three_orders", [("300001", {"shipping_address": {"city": "Hamburg"}}),
                          ("300002", {"billing_address": {"postcode": "20095"}}),
                          ("300003", {"shipping_address": {"phone": "+49 40 123"}})]),
    ],
)
def test_rendered_body_matches_golden(connection, golden, items):
    updates = [load_order_update(order_id, document) for order_id, document in items]
    request = render(connection, updates)
    assert json.loads(request.body) == json.loads((GOLDEN / f"{golden}.json").read_text())
    assert request.headers == {"Accept": "application/json", "Content-Type": "application/json"}
    assert dict(parse_qsl(urlsplit(request.url).query)) == {
        "Action": "UpdateOrderInformation", "ServiceName": "OMS", "Version": "1.0"}


def test_dry_run_view_masks_the_signature_and_keeps_the_key_out(connection):
    request = render(connection, [load_order_update("300001", {"billing_address": {"city": "B"}})])
    view = connection.backend.dry_run_view(request)
    query = dict(parse_qsl(urlsplit(view.url).query))
    assert query["Signature"] == "********"
    assert query["Timestamp"].endswith("+00:00")
    assert "sandbox-sellercenter-api-key" not in view.url


@pytest.mark.parametrize(
    ("order_id", "document", "path", "fragment"),
    [
        ("SO-1", {"billing_address": {"city": "B"}}, "id", "integer id_sales_order"),
        ("99999999999", {"billing_address": {"city": "B"}}, "id", "integer id_sales_order"),
        ("300001", {"status": "open"}, "status", "Not supported by backend 'sellercenter'"),
        ("300001", {"billing_address": {"city": "B"}, "waybill": "W"}, "waybill", "Not supported"),
        ("300001", {"billing_address": {"city": "B"}, "id_type": "order_number"}, "id_type", "one of: id_sales_order"),
    ],
)
def test_the_backend_refuses_what_it_cannot_carry(connection, order_id, document, path, fragment):
    with pytest.raises(ValidationFailed) as caught:
        connection.check(load_order_update(order_id, document))
    assert any(fragment in message for message in caught.value.errors[path]), caught.value.errors


def test_an_empty_address_is_refused_by_the_schema():
    with pytest.raises(ValidationError) as caught:
        load_order_update("300001", {"billing_address": {}})
    assert "Give at least one of" in caught.value.messages["billing_address"]["_schema"][0]


def test_a_body_that_fails_the_json_check_is_never_sent(connection):
    update = load_order_update("300001", {"billing_address": {"city": "B"}})
    update = dataclasses.replace(update, changes={"billing_address": {"city": 5}})  # past the canonical schema
    with pytest.raises(TranslationError, match="UpdateOrderInformation is invalid"):
        connection.backend.operations["UpdateOrderInformation"].render([update], connection.credentials)


def json_reply(document, status: int = 200, **headers) -> BackendReply:
    return BackendReply(status, {"Content-Type": "application/json", **headers}, json.dumps(document).encode())


UPDATES = [load_order_update(str(300001 + n), {"billing_address": {"city": "B"}}) for n in range(4)]
SUCCESS = {"SuccessResponse": {"Head": {"RequestId": "", "RequestAction": "UpdateOrderInformation",
                                        "ResponseType": "", "Timestamp": "2015-07-02T12:26:03+0200"}, "Body": []}}


def partial(*items) -> dict:
    return {"ErrorResponse": {"Head": {"RequestAction": "UpdateOrderInformation", "ErrorType": "Sender",
                                       "ErrorCode": "0", "ErrorMessage": "Some elements were not processed"},
                              "Body": {"UpdateOrderInformation": list(items)}}}


def whole(code: str, message: str) -> dict:
    return {"ErrorResponse": {"Head": {"RequestAction": "UpdateOrderInformation", "ErrorType": "Sender",
                                       "ErrorCode": code, "ErrorMessage": message}, "Body": ""}}


def test_success_updates_every_order(connection):
    outcomes = parse_reply(connection, json_reply(SUCCESS), UPDATES)
    assert [outcome.message for outcome in outcomes] == ["Order information updated."] * 4


def test_failed_items_are_matched_by_position(connection):
    reply = json_reply(partial(
        {"ErrorCode": None, "ErrorMessage": "Address information cannot be changed since order with src_id: "
                                            "SRC-9 is not in pending status", "Position": 1},
        {"ErrorCode": None, "ErrorMessage": "Order with id_sales_order 300004 does not exist", "Position": 3},
        {"ErrorCode": 12, "ErrorMessage": "Postcode too long", "Position": 0},
    ))
    results = parse_reply(connection, reply, UPDATES)
    assert type(results[0]) is BackendRejected and results[0].backend_details()["code"] == "12"
    assert type(results[1]) is OrderStateConflict and "SRC-9" in results[1].message
    assert not isinstance(results[2], BackendError)
    assert type(results[3]) is OrderNotFound


@pytest.mark.parametrize("position", [4, -1, "1", None, True])
def test_an_unknown_position_fails_the_call(connection, position):
    with pytest.raises(BackendFailure, match="unknown Position"):
        parse_reply(connection, json_reply(partial({"ErrorMessage": "x", "Position": position})), UPDATES)


@pytest.mark.parametrize(
    ("code", "message", "error", "fragment"),
    [
        ("7", "E007: Login failed. Signature mismatch", BackendFailure, "gateway's own credentials"),
        ("9", "E009: Access Denied", BackendFailure, "IP address"),
        ("3", "E003: Timestamp has expired", BackendFailure, "gateway's clock"),
        ("4", "E004: Invalid Timestamp format", BackendFailure, "gateway's clock"),
        ("6", "E006: Unexpected internal error", BackendFailure, "(E006)"),
        ("1000", "Internal Application Error", BackendFailure, "(1000)"),
    ],
)
def test_whole_call_errors_are_mapped_by_code(connection, code, message, error, fragment):
    with pytest.raises(error) as caught:
        parse_reply(connection, json_reply(whole(code, message)), UPDATES)
    assert caught.value.status == 502
    assert fragment in caught.value.detail
    assert caught.value.message == message


def test_the_rate_limit_is_a_503_with_retry_after(connection):
    connection.transport = RecordingTransport(
        json_reply(whole("429", "E429: Too many requests"), 429, **{"Retry-After": "60"}))
    outcomes = connection.send([connection.check(update) for update in UPDATES])
    assert all(isinstance(outcome, BackendUnavailable) for outcome in outcomes)
    assert outcomes[0].status == 503 and outcomes[0].retry_after == "60"
    assert outcomes[0].backend_details()["code"] == "E429"


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (BackendReply(200, {"Content-Type": "text/html"}, b"<html>Maintenance</html>"),
         "not JSON (HTTP 200, text/html)"),
        (BackendReply(502, {}, b""), "empty reply (HTTP 502"),
        (BackendReply(502, {}, b"<html>Bad gateway</html>"), "not JSON (HTTP 502"),
        (json_reply({"Something": {}}), "neither a SuccessResponse nor an ErrorResponse"),
        (json_reply(["SuccessResponse"]), "neither a SuccessResponse"),
        (json_reply({"ErrorResponse": {"Head": {"ErrorCode": "0"}, "Body": ""}}), "without listing them"),
        (BackendReply(401, {}, b"Unauthorized"), "refused the gateway's credentials"),
    ],
)
def test_unusable_replies_are_502(connection, reply, fragment):
    with pytest.raises(BackendFailure) as caught:
        parse_reply(connection, reply, UPDATES)
    assert fragment in caught.value.detail
