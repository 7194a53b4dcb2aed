"""The Ongoing sandbox serves one goods owner's calls one after another and times out one that overlaps another."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from lxml import etree

from sandbox import create_app
from tests.servers import serve_wsgi

SERVICE_PATH = "/ongoing/Service.asmx"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSI_NS = "http://ongoingsystems.se/WSI"
NS = {"soap": SOAP_NS, "wsi": WSI_NS}
UPDATE_ORDER = "UpdateOrder"
PROCESS_ORDER = "ProcessOrder"

CALL_SECONDS = 0.5
OVERLAP_DELAY_SECONDS = 0.2

DEMO = {"goods_owner_code": "DEMO", "user_name": "demo", "password": "demo-password"}
OTHER = {"goods_owner_code": "OTHER", "user_name": "other", "password": "other-password"}
# SystemIds of the demo data's orders.
SYSTEM_IDS = {"SO-1001": 1001, "SO-1002": 1002, "SO-1006": 1006, "OT-2001": 2001}


def overlap_fault(code: str) -> str:
    return (
        "Server was unable to process request. ---> Timeout expired. Another call for goods owner "
        f"'{code}' was in progress; Ongoing processes one goods owner's calls one after another."
    )


def _wsi(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{WSI_NS}}}{name}")
    element.text = text
    return element


def _envelope(operation: str, credentials: dict) -> tuple[etree._Element, etree._Element]:
    """A SOAP 1.1 envelope whose Body holds the operation element (default namespace) with its credentials."""
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    body = etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    element = etree.SubElement(body, f"{{{WSI_NS}}}{operation}", nsmap={None: WSI_NS})
    _wsi(element, "GoodsOwnerCode", credentials["goods_owner_code"])
    _wsi(element, "UserName", credentials["user_name"])
    _wsi(element, "Password", credentials["password"])
    return envelope, element


def update_waybill_document(order_number: str, waybill: str, credentials: dict = DEMO) -> bytes:
    envelope, element = _envelope(UPDATE_ORDER, credentials)
    update = _wsi(element, "updateOrder")
    identification = _wsi(update, "OrderUpdateIdentification")
    _wsi(identification, "OrderIdentificationType", "GoodsOwnerOrderNumber")
    _wsi(identification, "GoodsOwnerOrderNumber", order_number)
    _wsi(_wsi(update, "UpdateOrderWaybill"), "Waybill", waybill)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def remove_order_document(order_number: str, credentials: dict = DEMO) -> bytes:
    envelope, element = _envelope(PROCESS_ORDER, credentials)
    order_info = _wsi(_wsi(element, "co"), "OrderInfo")
    _wsi(order_info, "OrderIdentification", "GoodsOwnerOrderNumber")
    _wsi(order_info, "OrderOperation", "Remove")
    _wsi(order_info, "GoodsOwnerOrderNumber", order_number)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


@dataclass(frozen=True)
class Call:
    """A SOAP call to send: its operation, its document, and the order it changes."""

    operation: str
    document: bytes
    order_number: str


def set_waybill(order_number: str, waybill: str, credentials: dict = DEMO) -> Call:
    return Call(UPDATE_ORDER, update_waybill_document(order_number, waybill, credentials), order_number)


def remove(order_number: str, credentials: dict = DEMO) -> Call:
    return Call(PROCESS_ORDER, remove_order_document(order_number, credentials), order_number)


@dataclass(frozen=True)
class Answer:
    """What came back for a call, and when it was sent and answered on the monotonic clock."""

    call: Call
    response: requests.Response
    started: float
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def succeeded(self) -> bool:
        """Whether the call was answered 200 with Success true."""
        if self.response.status_code != 200:
            return False
        envelope = etree.fromstring(self.response.content)
        (success,) = envelope.xpath(f"//wsi:{self.call.operation}Result/wsi:Success", namespaces=NS)
        return success.text == "true"

    def fault(self) -> tuple[str, str]:
        """faultcode and faultstring of a SOAP 1.1 fault, answered 500 in the SOAP content type."""
        assert self.response.status_code == 500, self.response.text
        assert self.response.headers["Content-Type"] == "text/xml; charset=utf-8"
        (fault,) = etree.fromstring(self.response.content).xpath("/soap:Envelope/soap:Body/soap:Fault", namespaces=NS)
        return fault.findtext("faultcode"), fault.findtext("faultstring")


def send(sandbox_url: str, call: Call) -> Answer:
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{WSI_NS}/{call.operation}"'}
    started = time.monotonic()
    response = requests.post(sandbox_url + SERVICE_PATH, data=call.document, headers=headers, timeout=10)
    return Answer(call, response, started, time.monotonic())


def send_together(sandbox_url: str, *calls: Call) -> list[Answer]:
    """Send the calls at once, each from its own thread; the answers in the order of the calls."""
    start = threading.Barrier(len(calls))

    def send_when_all_are_ready(call: Call) -> Answer:
        start.wait(timeout=5)
        return send(sandbox_url, call)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(send_when_all_are_ready, calls))


def concurrency(sandbox_url: str) -> dict:
    response = requests.get(sandbox_url + "/ongoing/concurrency", timeout=5)
    assert response.status_code == 200
    return response.json()["goods_owners"]


def order_json(sandbox_url: str, order_number: str) -> dict:
    response = requests.get(f"{sandbox_url}/ongoing/orders/{SYSTEM_IDS[order_number]}", timeout=5)
    assert response.status_code == 200
    return response.json()


@pytest.fixture
def sandbox_url():
    app = create_app(
        {"TESTING": True, "ONGOING_CALL_SECONDS": CALL_SECONDS, "ONGOING_OVERLAP_DELAY_SECONDS": OVERLAP_DELAY_SECONDS}
    )
    with serve_wsgi(app) as url:
        yield url


def split(answers: list[Answer]) -> tuple[Answer, Answer]:
    """The one answer that succeeded and the one that did not."""
    succeeded = [answer for answer in answers if answer.succeeded]
    refused = [answer for answer in answers if not answer.succeeded]
    assert len(succeeded) == 1 and len(refused) == 1, [answer.response.text for answer in answers]
    return succeeded[0], refused[0]


def test_two_concurrent_update_orders_for_one_goods_owner_let_one_through_and_time_out_the_other(sandbox_url):
    waybills = {"SO-1001": "WB-FIRST", "SO-1002": "WB-SECOND"}
    answers = send_together(sandbox_url, *(set_waybill(number, waybill) for number, waybill in waybills.items()))

    succeeded, refused = split(answers)
    assert refused.fault() == ("soap:Server", overlap_fault("DEMO"))
    # Refused after the overlap delay, without waiting for the call in progress to finish.
    assert OVERLAP_DELAY_SECONDS <= refused.seconds < CALL_SECONDS
    assert succeeded.seconds >= CALL_SECONDS
    applied = succeeded.call.order_number
    assert order_json(sandbox_url, applied)["waybill"] == waybills[applied]
    assert order_json(sandbox_url, refused.call.order_number)["waybill"] is None
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 1, "overlaps": 1, "max_in_progress": 2}}


def test_the_same_calls_one_after_another_both_succeed(sandbox_url):
    first = send(sandbox_url, set_waybill("SO-1001", "WB-FIRST"))
    second = send(sandbox_url, set_waybill("SO-1002", "WB-SECOND"))

    assert first.succeeded and second.succeeded
    assert first.seconds >= CALL_SECONDS and second.seconds >= CALL_SECONDS
    assert order_json(sandbox_url, "SO-1001")["waybill"] == "WB-FIRST"
    assert order_json(sandbox_url, "SO-1002")["waybill"] == "WB-SECOND"
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 2, "overlaps": 0, "max_in_progress": 1}}


def test_concurrent_calls_for_different_goods_owners_both_succeed(sandbox_url):
    demo, other = send_together(
        sandbox_url, set_waybill("SO-1001", "WB-DEMO"), set_waybill("OT-2001", "WB-OTHER", OTHER)
    )

    assert demo.succeeded and other.succeeded
    assert max(demo.started, other.started) < min(demo.finished, other.finished), "the calls did not overlap"
    assert order_json(sandbox_url, "SO-1001")["waybill"] == "WB-DEMO"
    assert order_json(sandbox_url, "OT-2001")["waybill"] == "WB-OTHER"
    assert concurrency(sandbox_url) == {
        "DEMO": {"calls": 1, "overlaps": 0, "max_in_progress": 1},
        "OTHER": {"calls": 1, "overlaps": 0, "max_in_progress": 1},
    }


def test_process_order_overlapping_update_order_is_timed_out_like_it(sandbox_url):
    answers = send_together(sandbox_url, set_waybill("SO-1001", "WB-FIRST"), remove("SO-1006"))

    succeeded, refused = split(answers)
    assert refused.fault() == ("soap:Server", overlap_fault("DEMO"))
    update_applied = succeeded.call.operation == UPDATE_ORDER
    assert order_json(sandbox_url, "SO-1001")["waybill"] == ("WB-FIRST" if update_applied else None)
    assert order_json(sandbox_url, "SO-1006")["status"] == (200 if update_applied else 1000)
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 1, "overlaps": 1, "max_in_progress": 2}}


def test_process_order_is_counted_as_a_call(sandbox_url):
    answer = send(sandbox_url, remove("SO-1006"))

    assert answer.succeeded
    assert answer.seconds >= CALL_SECONDS
    assert order_json(sandbox_url, "SO-1006")["status"] == 1000
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 1, "overlaps": 0, "max_in_progress": 1}}


@pytest.mark.parametrize(
    "credentials",
    [
        {**DEMO, "password": "wrong-password"},
        {**DEMO, "user_name": "other"},
        {**DEMO, "goods_owner_code": "NOBODY"},
    ],
    ids=["wrong password", "another goods owner's user", "unknown goods owner"],
)
def test_a_call_with_wrong_credentials_is_neither_counted_nor_timed_out(sandbox_url, credentials):
    alone = send(sandbox_url, set_waybill("SO-1001", "WB-INTRUDER", credentials))
    assert alone.fault() == ("soap:Client", "Invalid credentials.")
    assert concurrency(sandbox_url) == {}

    valid, intruder = send_together(
        sandbox_url, set_waybill("SO-1001", "WB-VALID"), set_waybill("SO-1002", "WB-INTRUDER", credentials)
    )

    assert valid.succeeded
    assert intruder.fault() == ("soap:Client", "Invalid credentials.")
    assert intruder.seconds < OVERLAP_DELAY_SECONDS
    assert order_json(sandbox_url, "SO-1002")["waybill"] is None
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 1, "overlaps": 0, "max_in_progress": 1}}


def test_reset_clears_the_counters(sandbox_url):
    send_together(sandbox_url, set_waybill("SO-1001", "WB-FIRST"), set_waybill("SO-1002", "WB-SECOND"))
    assert send(sandbox_url, set_waybill("OT-2001", "WB-OTHER", OTHER)).succeeded
    assert concurrency(sandbox_url) == {
        "DEMO": {"calls": 1, "overlaps": 1, "max_in_progress": 2},
        "OTHER": {"calls": 1, "overlaps": 0, "max_in_progress": 1},
    }

    assert requests.post(sandbox_url + "/ongoing/_reset", timeout=5).status_code == 204

    assert concurrency(sandbox_url) == {}
    assert send(sandbox_url, set_waybill("SO-1001", "WB-AFTER-RESET")).succeeded
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 1, "overlaps": 0, "max_in_progress": 1}}


def test_a_call_in_progress_during_a_reset_still_keeps_the_next_one_out_but_is_not_counted(sandbox_url):
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow_call = pool.submit(send, sandbox_url, set_waybill("SO-1001", "WB-SLOW"))
        time.sleep(CALL_SECONDS / 5)
        assert requests.post(sandbox_url + "/ongoing/_reset", timeout=5).status_code == 204
        assert concurrency(sandbox_url) == {}
        late = send(sandbox_url, set_waybill("SO-1002", "WB-LATE"))
        assert slow_call.result().succeeded

    assert late.fault() == ("soap:Server", overlap_fault("DEMO"))
    assert order_json(sandbox_url, "SO-1002")["waybill"] is None
    assert concurrency(sandbox_url) == {"DEMO": {"calls": 0, "overlaps": 1, "max_in_progress": 2}}


def test_the_call_time_is_spent_outside_the_data_lock(sandbox_url):
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow_call = pool.submit(send, sandbox_url, set_waybill("SO-1001", "WB-SLOW"))
        time.sleep(CALL_SECONDS / 5)
        started = time.monotonic()
        response = requests.get(sandbox_url + "/ongoing/orders", timeout=5)
        read_seconds = time.monotonic() - started
        assert slow_call.result().succeeded

    assert response.status_code == 200
    assert read_seconds < CALL_SECONDS / 2


def test_by_default_calls_take_no_time_and_an_overlap_is_refused_after_two_seconds():
    config = create_app().config

    assert config["ONGOING_CALL_SECONDS"] == 0.0
    assert config["ONGOING_OVERLAP_DELAY_SECONDS"] == 2.0


@pytest.mark.parametrize("setting", ["ONGOING_CALL_SECONDS", "ONGOING_OVERLAP_DELAY_SECONDS"])
@pytest.mark.parametrize("value", [-0.1, "0.5", True, None, float("inf"), float("nan")])
def test_the_seconds_settings_must_be_non_negative_numbers(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be a non-negative number of seconds"):
        create_app({setting: value})
