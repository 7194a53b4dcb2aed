"""Each vendor simulator can be switched into an outage (503 with Retry-After, or no reply until it ends) without a
restart, and logs every call its service endpoint received, in arrival order, with what it did with it."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
import requests

from sandbox.outages import CallLog, CallSummary
from sandbox.sellercenter.signing import build_string_to_sign, compute_signature

SOAP11_ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{operation}</soap:Body>'
    "</soap:Envelope>"
)


@dataclass(frozen=True)
class Call:
    """A request to a service endpoint, sent alike by Flask's test client and by requests."""

    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Vendor:
    """One simulator as these tests drive it: a call that applies, one it refuses, one it faults, and its view."""

    name: str
    operation: str
    applied_order: str
    refused_order: str
    # order -> a call changing that order to `new_value`
    update: Callable[[str], Call]
    # a call answered with a SOAP fault or a whole-call error
    faulty: Callable[[], Call]
    view_path: str
    # the view of `applied_order` -> the value the update changes
    changed_value: Callable[[dict], object]
    new_value: object
    unavailable_content_type: str


def ongoing_update(order_number: str, password: str = "demo-password") -> Call:
    operation = (
        '<UpdateOrder xmlns="http://ongoingsystems.se/WSI"><GoodsOwnerCode>DEMO</GoodsOwnerCode>'
        f"<UserName>demo</UserName><Password>{password}</Password><updateOrder><OrderUpdateIdentification>"
        "<OrderIdentificationType>GoodsOwnerOrderNumber</OrderIdentificationType>"
        f"<GoodsOwnerOrderNumber>{order_number}</GoodsOwnerOrderNumber></OrderUpdateIdentification>"
        "<UpdateOrderWaybill><Waybill>WB-OUTAGE</Waybill></UpdateOrderWaybill></updateOrder></UpdateOrder>"
    )
    return Call(
        "/ongoing/Service.asmx",
        SOAP11_ENVELOPE.format(operation=operation).encode(),
        {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"http://ongoingsystems.se/WSI/UpdateOrder"'},
    )


def speed4trade_update(order_number: str, document: str | None = None) -> Call:
    if document is None:
        document = (
            '<request method="updateOrderStatus" version="1.0.0"><order significant_key="order_number">'
            f"<mandator_id>1</mandator_id><order_number>{order_number}</order_number><status>FETCHED</status>"
            "</order></request>"
        )
    escaped = document.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    operation = (
        '<ns:updateOrderStatus xmlns:ns="urn:order-gateway-sandbox:speed4trade">'
        f"<argRequestData>{escaped}</argRequestData></ns:updateOrderStatus>"
    )
    credentials = base64.b64encode(b"connect-demo:connect-password").decode()
    return Call(
        "/speed4trade/",
        SOAP11_ENVELOPE.format(operation=operation).encode(),
        {"Content-Type": "text/xml; charset=utf-8", "Authorization": f"Basic {credentials}"},
    )


def sellercenter_update(id_sales_order: str, api_key: str = "sandbox-sellercenter-api-key") -> Call:
    parameters = {
        "Action": "UpdateOrderInformation",
        "ServiceName": "OMS",
        "Timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "Version": "1.0",
    }
    parameters["Signature"] = compute_signature(build_string_to_sign(parameters), api_key)
    body = {"Request": {"Orders": [{"id_sales_order": int(id_sales_order), "address_billing": {"city": "Outage"}}]}}
    return Call(
        f"/sellercenter/oms-api/?{urlencode(parameters)}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Accept": "application/json"},
    )


VENDORS = {
    "ongoing": Vendor(
        name="ongoing",
        operation="UpdateOrder",
        applied_order="SO-1006",
        refused_order="SO-9999",
        update=ongoing_update,
        faulty=lambda: ongoing_update("SO-1006", password="wrong-password"),
        view_path="/ongoing/orders/1006",
        changed_value=lambda view: view["waybill"],
        new_value="WB-OUTAGE",
        unavailable_content_type="text/plain; charset=utf-8",
    ),
    "speed4trade": Vendor(
        name="speed4trade",
        operation="updateOrderStatus",
        applied_order="10001",
        refused_order="10009",
        update=speed4trade_update,
        faulty=lambda: speed4trade_update("10001", document="<request/>"),
        view_path="/speed4trade/orders/10001",
        changed_value=lambda view: view["status"],
        new_value="FETCHED",
        unavailable_content_type="text/plain; charset=utf-8",
    ),
    "sellercenter": Vendor(
        name="sellercenter",
        operation="UpdateOrderInformation",
        applied_order="300001",
        refused_order="300010",
        update=sellercenter_update,
        faulty=lambda: sellercenter_update("300001", api_key="not-the-api-key"),
        view_path="/sellercenter/orders/300001",
        changed_value=lambda view: view["address_billing"]["city"],
        new_value="Outage",
        unavailable_content_type="application/json",
    ),
}

every_vendor = pytest.mark.parametrize("vendor", VENDORS.values(), ids=VENDORS.keys())


@pytest.fixture
def sandbox(sandbox_app):
    """Flask's test client of a fresh sandbox."""
    return sandbox_app.test_client()


def send(client, call: Call):
    return client.post(call.path, data=call.body, headers=call.headers)


def start_outage(client, vendor: Vendor, **document: object) -> dict:
    reply = client.post(f"/{vendor.name}/_outage", json=document)
    assert reply.status_code == 200, reply.data
    return reply.get_json()


def calls_of(client, vendor: Vendor) -> list[dict]:
    reply = client.get(f"/{vendor.name}/_calls")
    assert reply.status_code == 200
    return reply.get_json()["calls"]


def outcomes(client, vendor: Vendor) -> list[tuple[int, str | None]]:
    return [(call["seq"], call["outcome"]) for call in calls_of(client, vendor)]


@every_vendor
def test_an_outage_answers_503_with_retry_after_and_applies_nothing(sandbox, vendor):
    before = sandbox.get(vendor.view_path).get_json()

    outage = start_outage(sandbox, vendor, seconds=30)
    reply = send(sandbox, vendor.update(vendor.applied_order))

    assert outage["vendor"] == vendor.name
    assert outage["mode"] == "unavailable"
    assert 29 < outage["seconds_left"] <= 30
    assert 29 < (datetime.fromisoformat(outage["until"]) - datetime.now(UTC)).total_seconds() <= 30
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "30"
    assert reply.content_type == vendor.unavailable_content_type
    # the read-only view still answers, and shows the order as it was
    assert sandbox.get(vendor.view_path).get_json() == before
    assert [(call["operation"], call["order_ids"], call["outcome"]) for call in calls_of(sandbox, vendor)] == [
        (vendor.operation, [vendor.applied_order], "unavailable")
    ]


def test_sellercenter_answers_an_outage_with_a_json_error_response(sandbox):
    start_outage(sandbox, VENDORS["sellercenter"], seconds=5)

    reply = send(sandbox, sellercenter_update("300001"))

    assert reply.status_code == 503
    assert reply.get_json()["ErrorResponse"]["Head"] == {
        "RequestAction": "UpdateOrderInformation",
        "ErrorType": "Platform",
        "ErrorCode": "503",
        "ErrorMessage": "E503: Service unavailable",
    }


@every_vendor
def test_an_outage_ended_by_delete_serves_again_at_once(sandbox, vendor):
    start_outage(sandbox, vendor, seconds=30, mode="unavailable")
    assert send(sandbox, vendor.update(vendor.applied_order)).status_code == 503

    ended = sandbox.delete(f"/{vendor.name}/_outage")
    reply = send(sandbox, vendor.update(vendor.applied_order))

    assert ended.status_code == 200
    assert ended.get_json()["outage"] is None
    assert ended.get_json()["ended"]["mode"] == "unavailable"
    assert sandbox.get(f"/{vendor.name}/_outage").get_json() == {"outage": None}
    assert reply.status_code == 200
    assert vendor.changed_value(sandbox.get(vendor.view_path).get_json()) == vendor.new_value
    assert outcomes(sandbox, vendor) == [(1, "unavailable"), (2, "applied")]


@every_vendor
def test_a_short_outage_ends_by_itself(sandbox, vendor):
    start_outage(sandbox, vendor, seconds=0.3)
    refused = send(sandbox, vendor.update(vendor.applied_order))
    deadline = time.monotonic() + 2
    while sandbox.get(f"/{vendor.name}/_outage").get_json()["outage"] is not None and time.monotonic() < deadline:
        time.sleep(0.02)

    reply = send(sandbox, vendor.update(vendor.applied_order))

    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert reply.status_code == 200
    assert vendor.changed_value(sandbox.get(vendor.view_path).get_json()) == vendor.new_value


@every_vendor
def test_the_call_log_lists_each_call_in_order_with_its_outcome(sandbox, vendor):
    before = datetime.now(UTC)
    send(sandbox, vendor.update(vendor.applied_order))
    send(sandbox, vendor.update(vendor.refused_order))
    send(sandbox, vendor.faulty())
    start_outage(sandbox, vendor, seconds=30)
    send(sandbox, vendor.update(vendor.applied_order))

    calls = calls_of(sandbox, vendor)

    assert [(call["seq"], call["operation"], call["outcome"]) for call in calls] == [
        (1, vendor.operation, "applied"),
        (2, vendor.operation, "refused"),
        (3, vendor.operation, "fault"),
        (4, vendor.operation, "unavailable"),
    ]
    assert [call["order_ids"] for call in calls] == [
        [vendor.applied_order],
        [vendor.refused_order],
        [] if vendor.name == "speed4trade" else [vendor.applied_order],  # its faulty call names no order
        [vendor.applied_order],
    ]
    times = [datetime.fromisoformat(call["at"]) for call in calls]
    assert all(time_.utcoffset().total_seconds() == 0 for time_ in times)
    assert times == sorted(times)
    assert before.replace(microsecond=0) <= times[0]


@every_vendor
def test_reset_ends_the_outage_and_clears_the_call_log(sandbox, vendor):
    start_outage(sandbox, vendor, seconds=30)
    send(sandbox, vendor.update(vendor.applied_order))

    assert sandbox.post(f"/{vendor.name}/_reset").status_code == 204

    assert sandbox.get(f"/{vendor.name}/_outage").get_json() == {"outage": None}
    assert calls_of(sandbox, vendor) == []
    assert send(sandbox, vendor.update(vendor.applied_order)).status_code == 200
    assert outcomes(sandbox, vendor) == [(1, "applied")]


@every_vendor
def test_get_shows_the_current_outage_and_delete_without_one_is_harmless(sandbox, vendor):
    assert sandbox.get(f"/{vendor.name}/_outage").get_json() == {"outage": None}
    nothing_ended = sandbox.delete(f"/{vendor.name}/_outage")
    start_outage(sandbox, vendor, seconds=60, mode="no-reply")

    shown = sandbox.get(f"/{vendor.name}/_outage").get_json()["outage"]

    assert nothing_ended.status_code == 200
    assert nothing_ended.get_json() == {"outage": None}
    assert shown["vendor"] == vendor.name
    assert shown["mode"] == "no-reply"
    assert 59 < shown["seconds_left"] <= 60


def test_an_outage_of_one_vendor_leaves_the_others_serving(sandbox):
    start_outage(sandbox, VENDORS["ongoing"], seconds=30)

    assert send(sandbox, speed4trade_update("10001")).status_code == 200
    assert send(sandbox, sellercenter_update("300001")).status_code == 200
    assert calls_of(sandbox, VENDORS["ongoing"]) == []


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "seconds"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": 3600.5}, "seconds"),
        ({"seconds": "30"}, "seconds"),
        ({"seconds": True}, "seconds"),
        ({"seconds": None}, "seconds"),
        ({"seconds": 5, "mode": "down"}, "mode"),
        ({"seconds": 5, "mode": None}, "mode"),
        ({"seconds": 5, "until": "tomorrow"}, "until"),
    ],
)
@every_vendor
def test_a_bad_outage_body_is_refused_naming_the_field(sandbox, vendor, document, field):
    reply = sandbox.post(f"/{vendor.name}/_outage", json=document)

    assert reply.status_code == 422
    assert reply.content_type == "application/problem+json"
    assert [error["field"] for error in reply.get_json()["errors"]] == [field]
    assert sandbox.get(f"/{vendor.name}/_outage").get_json() == {"outage": None}


@pytest.mark.parametrize("body", [b"", b"[30]", b"{not json", b'"seconds"'])
def test_an_outage_body_that_is_no_json_object_is_refused(sandbox, body):
    reply = sandbox.post("/ongoing/_outage", data=body, content_type="application/json")

    assert reply.status_code == 422
    assert reply.get_json()["detail"] == "The body must be a JSON object."


def test_the_longest_outage_is_an_hour(sandbox):
    assert 3599 < start_outage(sandbox, VENDORS["ongoing"], seconds=3600)["seconds_left"] <= 3600


def send_over_http(base_url: str, call: Call) -> tuple[requests.Response, float]:
    started = time.monotonic()
    reply = requests.post(base_url + call.path, data=call.body, headers=call.headers, timeout=10)
    return reply, time.monotonic() - started


@every_vendor
def test_no_reply_holds_the_reply_until_the_outage_ends(sandbox_url, vendor):
    before = requests.get(sandbox_url + vendor.view_path, timeout=5).json()
    started = requests.post(
        f"{sandbox_url}/{vendor.name}/_outage", json={"seconds": 0.5, "mode": "no-reply"}, timeout=5
    )

    reply, elapsed = send_over_http(sandbox_url, vendor.update(vendor.applied_order))

    assert started.status_code == 200
    assert elapsed >= 0.4
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "1"
    assert requests.get(sandbox_url + vendor.view_path, timeout=5).json() == before
    calls = requests.get(f"{sandbox_url}/{vendor.name}/_calls", timeout=5).json()["calls"]
    assert [(call["order_ids"], call["outcome"]) for call in calls] == [([vendor.applied_order], "no-reply")]


def test_a_caller_with_a_shorter_read_timeout_sees_no_reply_and_nothing_is_applied(sandbox_url):
    vendor = VENDORS["ongoing"]
    requests.post(f"{sandbox_url}/ongoing/_outage", json={"seconds": 0.5, "mode": "no-reply"}, timeout=5)
    call = vendor.update(vendor.applied_order)

    with pytest.raises(requests.ReadTimeout):
        requests.post(sandbox_url + call.path, data=call.body, headers=call.headers, timeout=(1, 0.2))

    assert requests.get(sandbox_url + vendor.view_path, timeout=5).json()["waybill"] != vendor.new_value
    # the held call ends within this test, not in the next one's logs
    requests.delete(f"{sandbox_url}/ongoing/_outage", timeout=5)
    deadline = time.monotonic() + 5
    while any(call["outcome"] is None for call in requests.get(f"{sandbox_url}/ongoing/_calls", timeout=5).json()[
            "calls"]):
        assert time.monotonic() < deadline, "the held call never ended"
        time.sleep(0.02)


def test_delete_releases_a_held_call_early(sandbox_url):
    vendor = VENDORS["ongoing"]
    requests.post(f"{sandbox_url}/ongoing/_outage", json={"seconds": 60, "mode": "no-reply"}, timeout=5)
    held: list[tuple[requests.Response, float]] = []
    caller = threading.Thread(target=lambda: held.append(send_over_http(sandbox_url, vendor.update("SO-1006"))))
    caller.start()
    deadline = time.monotonic() + 5
    while not requests.get(f"{sandbox_url}/ongoing/_calls", timeout=5).json()["calls"]:
        assert time.monotonic() < deadline, "the call never reached the sandbox"
        time.sleep(0.02)

    requests.delete(f"{sandbox_url}/ongoing/_outage", timeout=5)
    caller.join(timeout=5)

    ((reply, elapsed),) = held
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "1"
    assert elapsed < 5
    assert send_over_http(sandbox_url, vendor.update("SO-1006"))[0].status_code == 200


def test_the_call_log_keeps_the_last_calls_and_numbers_them_across_threads():
    log = CallLog(max_calls=50)

    def record_many() -> None:
        for _ in range(100):
            log.close(log.open(CallSummary("UpdateOrder", ("SO-1",))), "applied")

    threads = [threading.Thread(target=record_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    calls = log.calls()
    assert [call["seq"] for call in calls] == list(range(351, 401))
    assert {call["outcome"] for call in calls} == {"applied"}
    log.clear()
    assert log.calls() == []
    assert log.open(CallSummary(None))["seq"] == 1
