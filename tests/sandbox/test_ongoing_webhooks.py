"""The Ongoing sandbox fires order webhooks as Ongoing does, to a real HTTP receiver, and retries failed ones."""

import base64
import itertools
import json
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from sandbox import create_app
from sandbox.ongoing.webhook_payload import format_ongoing_timestamp
from sandbox.ongoing.webhook_sender import SENDER_THREAD_NAME

SERVICE = "/ongoing/Service.asmx"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"http://ongoingsystems.se/WSI/UpdateOrder"'}
WSI_NS = "http://ongoingsystems.se/WSI"
RECEIVER_PATH = "/webhooks/ongoing/ongoing-demo"
FAST_RETRIES = [0.05, 0.05, 0.05]
ONGOING_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}$")

# The members of WebhookOrderPayload, in the order the vendor's specification lists them.
SPEC_MEMBERS = [
    "webhookOrdersId",
    "webhookEventId",
    "system",
    "timestamp",
    "orderId",
    "orderNumber",
    "goodsOwnerId",
    "path",
    "byUser",
    "byComputer",
    "orderStatus",
    "currentShipmentId",
    "webhookTemplate",
    "goodsOwnerName",
    "goodsOwnerClasses",
    "tracking",
    "parcels",
]

# SO-1001 (Open) to Released, as Ongoing's own example request sends it.
RELEASE_SO_1001 = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
               xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <soap:Body>
    <UpdateOrder xmlns="http://ongoingsystems.se/WSI">
      <GoodsOwnerCode>DEMO</GoodsOwnerCode>
      <UserName>demo</UserName>
      <Password>demo-password</Password>
      <updateOrder>
        <OrderUpdateIdentification>
          <OrderIdentificationType>GoodsOwnerOrderNumber</OrderIdentificationType>
          <GoodsOwnerOrderNumber>SO-1001</GoodsOwnerOrderNumber>
        </OrderUpdateIdentification>
        <UpdateOrderStatus>
          <OrderStatus>300</OrderStatus>
        </UpdateOrderStatus>
      </updateOrder>
    </UpdateOrder>
  </soap:Body>
</soap:Envelope>
"""

UPDATE_ORDER = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <UpdateOrder xmlns="http://ongoingsystems.se/WSI">
      <GoodsOwnerCode>{goods_owner_code}</GoodsOwnerCode>
      <UserName>{user_name}</UserName>
      <Password>{password}</Password>
      <updateOrder>
        <OrderUpdateIdentification>
          <OrderIdentificationType>GoodsOwnerOrderNumber</OrderIdentificationType>
          <GoodsOwnerOrderNumber>{order_number}</GoodsOwnerOrderNumber>
        </OrderUpdateIdentification>
        {blocks}
      </updateOrder>
    </UpdateOrder>
  </soap:Body>
</soap:Envelope>
"""

CREDENTIALS = {"DEMO": ("demo", "demo-password"), "OTHER": ("other", "other-password")}


def status_block(status: int) -> str:
    return f"<UpdateOrderStatus><OrderStatus>{status}</OrderStatus></UpdateOrderStatus>"


def waybill_block(waybill: str) -> str:
    return f"<UpdateOrderWaybill><Waybill>{waybill}</Waybill></UpdateOrderWaybill>"


def return_waybill_block(waybill: str) -> str:
    return f"<UpdateOrderReturnWaybill><ReturnWaybill>{waybill}</ReturnWaybill></UpdateOrderReturnWaybill>"


def post_update_order(client, document: bytes) -> tuple[str, str | None]:
    """Success and Message of the UpdateOrderResult."""
    response = client.post(SERVICE, data=document, headers=SOAP_HEADERS)
    assert response.status_code == 200, response.data
    result = etree.fromstring(response.data).find(f".//{{{WSI_NS}}}UpdateOrderResult")
    return result.findtext(f"{{{WSI_NS}}}Success"), result.findtext(f"{{{WSI_NS}}}Message")


def update_order(client, order_number: str, blocks: str, goods_owner_code: str = "DEMO") -> tuple[str, str | None]:
    user_name, password = CREDENTIALS[goods_owner_code]
    document = UPDATE_ORDER.format(
        goods_owner_code=goods_owner_code,
        user_name=user_name,
        password=password,
        order_number=order_number,
        blocks=blocks,
    )
    return post_update_order(client, document.encode("utf-8"))


def create_order(client, **document):
    return client.post("/ongoing/orders", json=document)


class WebhookReceiver:
    """Stands in for the gateway's webhook endpoint: answers from a script and records every request."""

    def __init__(self):
        self.url = ""
        self.answers: list[int] = []  # statuses for the next requests, then `default_status`
        self.default_status = 204
        self.answer_delay = 0.0
        self.release = threading.Event()  # ends every delayed answer at once
        self._arrived = threading.Condition()
        self._requests: list[dict] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        with self._arrived:
            self._requests.append(
                {"headers": dict(request.headers), "body": body, "path": request.path, "at": time.monotonic()}
            )
            status = self.answers.pop(0) if self.answers else self.default_status
            self._arrived.notify_all()
        if self.answer_delay:
            self.release.wait(self.answer_delay)
        return Response(status=status)(environ, start_response)

    @property
    def requests(self) -> list[dict]:
        with self._arrived:
            return list(self._requests)

    def payloads(self) -> list[dict]:
        return [json.loads(request["body"]) for request in self.requests]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self._requests) >= count, timeout), self._requests


@pytest.fixture
def receiver():
    receiver = WebhookReceiver()
    server = make_server("127.0.0.1", 0, receiver, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_port}{RECEIVER_PATH}"
    yield receiver
    receiver.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def make_webhook_app():
    """Builds sandbox apps with fast retries and event ids from 1; stops each app's webhook sender afterwards."""
    apps = []

    def make(**config):
        app = create_app(
            {
                "TESTING": True,
                "ONGOING_WEBHOOK_RETRY_DELAYS": FAST_RETRIES,
                "ONGOING_WEBHOOK_FIRST_EVENT_ID": 1,
                **config,
            }
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        sender(app).stop()


@pytest.fixture
def webhook_app(make_webhook_app, receiver):
    return make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url)


@pytest.fixture
def webhook_client(webhook_app):
    return webhook_app.test_client()


def sender(app):
    return app.extensions["sandbox.ongoing"]["webhooks"]


def wait_until_sent(app) -> None:
    assert sender(app).wait_idle(5)


def webhook_records(client) -> list[dict]:
    response = client.get("/ongoing/webhooks")
    assert response.status_code == 200
    return response.get_json()["webhooks"]


def sender_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == SENDER_THREAD_NAME]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def summary(payload: dict) -> tuple:
    return payload["webhookTemplate"], payload["orderId"], payload["orderStatus"]["number"]


# --- triggers and payloads ------------------------------------------------------------------------------------


def test_created_order_fires_order_created(webhook_app, webhook_client, receiver):
    before = datetime.now(UTC).replace(tzinfo=None)
    response = create_order(
        webhook_client,
        goods_owner_code="DEMO",
        order_number="SO-NEW-1",
        order_id="EXT-NEW-1",
        lines=[{"article": "ART-100", "ordered": 2, "allocated": 0, "picked": 0}],
    )
    assert response.status_code == 201
    wait_until_sent(webhook_app)
    after = datetime.now(UTC).replace(tzinfo=None)

    (request,) = receiver.requests
    assert request["path"] == RECEIVER_PATH
    assert request["headers"]["Content-Type"] == "application/json; charset=utf-8"
    payload = json.loads(request["body"])
    assert list(payload) == SPEC_MEMBERS
    timestamp = payload.pop("timestamp")
    assert ONGOING_TIMESTAMP.match(timestamp)
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(timestamp[:26]) <= after
    assert payload == {
        "webhookOrdersId": 1,
        "webhookEventId": 1,
        "system": "sandbox",
        "orderId": 2002,
        "orderNumber": "SO-NEW-1",
        "goodsOwnerId": 1,
        "path": "/api/v1/orders/2002",
        "byUser": {"userId": 0},
        "byComputer": {"computerId": 0, "computerName": "sandbox"},
        "orderStatus": {"number": 200},
        "currentShipmentId": None,
        "webhookTemplate": "OrderCreated",
        "goodsOwnerName": "Demo Goods Owner AB",
        "goodsOwnerClasses": [],
        "tracking": [],
        "parcels": [],
    }


def test_update_order_status_change_fires_order_status_changed(webhook_app, webhook_client, receiver):
    assert post_update_order(webhook_client, RELEASE_SO_1001) == ("true", None)
    wait_until_sent(webhook_app)

    (payload,) = receiver.payloads()
    assert {name: payload[name] for name in SPEC_MEMBERS if name != "timestamp"} == {
        "webhookOrdersId": 2,
        "webhookEventId": 1,
        "system": "sandbox",
        "orderId": 1001,
        "orderNumber": "SO-1001",
        "goodsOwnerId": 1,
        "path": "/api/v1/orders/1001",
        "byUser": {"userId": 0},
        "byComputer": {"computerId": 0, "computerName": "sandbox"},
        "orderStatus": {"number": 300},
        "currentShipmentId": None,
        "webhookTemplate": "OrderStatusChanged",
        "goodsOwnerName": "Demo Goods Owner AB",
        "goodsOwnerClasses": [],
        "tracking": [],
        "parcels": [],
    }


def test_picked_status_with_picked_goods_fires_status_changed_then_picked(webhook_app, webhook_client, receiver):
    # SO-1004 is Allocated with every allocated item picked.
    assert update_order(webhook_client, "SO-1004", status_block(400)) == ("true", None)
    wait_until_sent(webhook_app)

    first, second = receiver.payloads()
    assert (first["webhookEventId"], second["webhookEventId"]) == (1, 2)
    assert (first["webhookOrdersId"], second["webhookOrdersId"]) == (2, 3)
    assert [summary(first), summary(second)] == [("OrderStatusChanged", 1004, 400), ("OrderPicked", 1004, 400)]


def test_status_above_picked_with_picked_goods_fires_picked_again(webhook_app, webhook_client, receiver):
    # SO-1005 is Sent and picked; the spec fires "picked" on every change to 400 or above with picked items.
    assert update_order(webhook_client, "SO-1005", status_block(500)) == ("true", None)
    wait_until_sent(webhook_app)

    assert [summary(payload) for payload in receiver.payloads()] == [
        ("OrderStatusChanged", 1005, 500),
        ("OrderPicked", 1005, 500),
    ]


def test_picked_status_without_picked_goods_fires_only_status_changed(webhook_app, webhook_client, receiver):
    # SO-1001 has nothing allocated, so UpdateOrder may set Picked, but no item has been picked.
    assert update_order(webhook_client, "SO-1001", status_block(400)) == ("true", None)
    wait_until_sent(webhook_app)

    assert [summary(payload) for payload in receiver.payloads()] == [("OrderStatusChanged", 1001, 400)]


@pytest.mark.parametrize(
    ("order_number", "blocks", "result"),
    [
        ("SO-1003", status_block(400), ("false", "not allowed if the order has allocated but not picked goods")),
        ("SO-1001", status_block(1000), ("false", "must not be used to cancel")),
        ("SO-9999", status_block(300), ("false", "No order found")),
        ("SO-1001", status_block(200), ("true", None)),
        ("SO-1001", waybill_block("WB-ONLY"), ("true", None)),
    ],
    ids=["refused-unpicked-goods", "refused-cancel", "unknown-order", "same-status", "no-status-block"],
)
def test_update_without_a_status_change_fires_nothing(
    webhook_app, webhook_client, receiver, order_number, blocks, result
):
    success, message = update_order(webhook_client, order_number, blocks)
    assert success == result[0]
    assert (message is None) if result[1] is None else (result[1] in message)
    # A later status change is the first and only webhook.
    assert update_order(webhook_client, "SO-1002", status_block(320)) == ("true", None)
    wait_until_sent(webhook_app)

    (payload,) = receiver.payloads()
    assert (payload["webhookEventId"], *summary(payload)) == (1, "OrderStatusChanged", 1002, 320)
    assert [record["orderId"] for record in webhook_records(webhook_client)] == [1002]


def test_tracking_lists_the_waybill_and_the_return_waybill(webhook_app, webhook_client, receiver):
    blocks = status_block(300) + waybill_block("WB 1/2") + return_waybill_block("RWB-1")
    assert update_order(webhook_client, "SO-1006", blocks) == ("true", None)
    wait_until_sent(webhook_app)

    (payload,) = receiver.payloads()
    assert payload["tracking"] == [
        {"trackingUrl": "https://tracking.sandbox.invalid/WB%201%2F2", "waybill": "WB 1/2", "isReturn": False},
        {"trackingUrl": "https://tracking.sandbox.invalid/RWB-1", "waybill": "RWB-1", "isReturn": True},
    ]


def test_other_goods_owner_has_its_own_id_and_name(webhook_app, webhook_client, receiver):
    assert update_order(webhook_client, "OT-2001", status_block(300), goods_owner_code="OTHER") == ("true", None)
    wait_until_sent(webhook_app)

    (payload,) = receiver.payloads()
    assert (payload["goodsOwnerId"], payload["goodsOwnerName"], payload["orderId"]) == (
        2,
        "Other Goods Owner AB",
        2001,
    )


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2023, 1, 1, 12, 0, tzinfo=UTC), "2023-01-01T12:00:00.0000000"),
        (datetime(2023, 1, 1, 12, 0, 5, 123456, tzinfo=UTC), "2023-01-01T12:00:05.1234560"),
        (datetime(2023, 1, 1, 13, 30, 0, 1, tzinfo=timezone(timedelta(hours=2))), "2023-01-01T11:30:00.0000010"),
    ],
    ids=["whole-second", "microseconds", "converted-to-utc"],
)
def test_timestamp_has_ongoings_form(moment, text):
    assert format_ongoing_timestamp(moment) == text


def test_system_name_and_template_names_are_configurable(make_webhook_app, receiver):
    app = make_webhook_app(
        ONGOING_WEBHOOK_URL=receiver.url,
        ONGOING_SYSTEM_NAME="acme-warehouse",
        ONGOING_WEBHOOK_TEMPLATES={"status_changed": "StatusUpdate", "picked": "Picked"},
    )
    assert update_order(app.test_client(), "SO-1004", status_block(400)) == ("true", None)
    wait_until_sent(app)

    payloads = receiver.payloads()
    assert [(payload["system"], payload["webhookTemplate"]) for payload in payloads] == [
        ("acme-warehouse", "StatusUpdate"),
        ("acme-warehouse", "Picked"),
    ]


# --- authentication and configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "expected_headers", "absent_headers"),
    [
        (
            "default",
            {"Authorization": "Basic " + base64.b64encode(b"ongoing-webhooks:webhook-demo-password").decode()},
            ["X-Ongoing-Token"],
        ),
        (
            {"type": "basic", "username": "hooks", "password": "p@ss:word"},
            {"Authorization": "Basic " + base64.b64encode(b"hooks:p@ss:word").decode()},
            ["X-Ongoing-Token"],
        ),
        (
            {"type": "token", "header": "X-Ongoing-Token", "token": "static-token-123"},
            {"X-Ongoing-Token": "static-token-123"},
            ["Authorization"],
        ),
        (None, {}, ["Authorization", "X-Ongoing-Token"]),
    ],
    ids=["default-basic", "basic", "token", "none"],
)
def test_webhook_authentication(make_webhook_app, receiver, auth, expected_headers, absent_headers):
    config = {} if auth == "default" else {"ONGOING_WEBHOOK_AUTH": auth}
    app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, **config)
    assert update_order(app.test_client(), "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(app)

    (request,) = receiver.requests
    assert {name: request["headers"].get(name) for name in expected_headers} == expected_headers
    assert [name for name in absent_headers if name in request["headers"]] == []


def test_configuration_from_the_environment(receiver, monkeypatch):
    monkeypatch.setenv("SANDBOX_ONGOING_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv(
        "SANDBOX_ONGOING_WEBHOOK_AUTH", '{"type": "token", "header": "X-Webhook-Token", "token": "from-env"}'
    )
    monkeypatch.setenv("SANDBOX_ONGOING_WEBHOOK_TEMPLATES", '{"status_changed": "EnvStatusChanged"}')
    monkeypatch.setenv("SANDBOX_ONGOING_SYSTEM_NAME", "env-system")
    monkeypatch.setenv("SANDBOX_ONGOING_WEBHOOK_RETRY_DELAYS", "[0.05]")
    app = create_app({"TESTING": True})
    try:
        receiver.answers = [500, 500]
        assert update_order(app.test_client(), "SO-1001", status_block(300)) == ("true", None)
        wait_until_sent(app)
    finally:
        sender(app).stop()

    requests = receiver.requests
    assert len(requests) == 2  # one retry from the environment's delays, then given up
    assert requests[0]["headers"]["X-Webhook-Token"] == "from-env"
    payload = json.loads(requests[0]["body"])
    assert (payload["system"], payload["webhookTemplate"]) == ("env-system", "EnvStatusChanged")


@pytest.mark.parametrize(
    "config",
    [
        {"ONGOING_WEBHOOK_AUTH": {"type": "digest", "username": "u", "password": "p"}},
        {"ONGOING_WEBHOOK_AUTH": {"type": "basic", "username": "u"}},
        {"ONGOING_WEBHOOK_AUTH": {"type": "token", "header": "X-Token", "token": ""}},
        {"ONGOING_WEBHOOK_AUTH": "basic"},
        {"ONGOING_WEBHOOK_RETRY_DELAYS": [1, -1]},
        {"ONGOING_WEBHOOK_RETRY_DELAYS": "1, 5"},
        {"ONGOING_WEBHOOK_TEMPLATES": {"shipped": "OrderShipped"}},
        {"ONGOING_WEBHOOK_TEMPLATES": {"created": ""}},
        {"ONGOING_WEBHOOK_TIMEOUT": 0},
        {"ONGOING_WEBHOOK_FIRST_EVENT_ID": 0},
    ],
    ids=[
        "unknown-auth-type",
        "basic-without-password",
        "empty-token",
        "auth-not-a-mapping",
        "negative-delay",
        "delays-not-a-list",
        "unknown-trigger",
        "empty-template-name",
        "zero-timeout",
        "first-event-id-zero",
    ],
)
def test_invalid_webhook_configuration_is_refused_at_start(config):
    with pytest.raises(ValueError, match="ONGOING_WEBHOOK_"):
        create_app({"TESTING": True, "ONGOING_WEBHOOK_URL": "http://127.0.0.1:9/", **config})


def test_event_ids_start_at_the_clock_by_default(make_webhook_app, receiver):
    started = int(time.time())
    app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, ONGOING_WEBHOOK_FIRST_EVENT_ID=None)
    assert update_order(app.test_client(), "SO-1004", status_block(400)) == ("true", None)
    wait_until_sent(app)

    first, second = (payload["webhookEventId"] for payload in receiver.payloads())
    assert started <= first <= int(time.time())
    assert second == first + 1
    assert second < 2**31  # Ongoing's webhookEventId is an int


def test_without_a_url_no_webhook_is_sent_or_recorded(client):
    assert update_order(client, "SO-1004", status_block(400)) == ("true", None)
    assert create_order(client, goods_owner_code="DEMO", order_number="SO-QUIET").status_code == 201

    assert webhook_records(client) == []
    assert sender_threads() == []


# --- delivery, retries and the record ---------------------------------------------------------------------------


def test_a_failed_delivery_is_retried_with_the_same_payload(webhook_app, webhook_client, receiver):
    receiver.answers = [500, 503]
    assert update_order(webhook_client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(webhook_app)

    requests = receiver.requests
    assert len(requests) == 3
    assert requests[0]["body"] == requests[1]["body"] == requests[2]["body"]
    assert {json.loads(request["body"])["webhookEventId"] for request in requests} == {1}
    assert all(later["at"] - earlier["at"] >= 0.05 for earlier, later in itertools.pairwise(requests))
    assert webhook_records(webhook_client) == [
        {
            "webhookEventId": 1,
            "webhookTemplate": "OrderStatusChanged",
            "orderId": 1001,
            "attempts": 3,
            "state": "delivered",
            "last_status": 204,
            "last_error": None,
        }
    ]


def test_delivery_is_given_up_after_the_configured_delays(make_webhook_app, receiver):
    receiver.default_status = 500
    app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, ONGOING_WEBHOOK_RETRY_DELAYS=[0.05, 0.05])
    client = app.test_client()
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(app)

    assert len(receiver.requests) == 3
    (record,) = webhook_records(client)
    assert (record["attempts"], record["state"], record["last_status"], record["last_error"]) == (
        3,
        "failed",
        500,
        "HTTP 500",
    )


def test_unreachable_receiver_is_retried_then_failed(make_webhook_app):
    app = make_webhook_app(ONGOING_WEBHOOK_URL=f"http://127.0.0.1:{closed_port()}/webhooks")
    client = app.test_client()
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(app)

    (record,) = webhook_records(client)
    assert (record["attempts"], record["state"], record["last_status"]) == (4, "failed", None)
    assert record["last_error"].startswith("ConnectionError: ")


def test_a_receiver_that_does_not_answer_in_time_is_retried(make_webhook_app, receiver):
    receiver.answer_delay = 5.0
    app = make_webhook_app(
        ONGOING_WEBHOOK_URL=receiver.url, ONGOING_WEBHOOK_TIMEOUT=0.2, ONGOING_WEBHOOK_RETRY_DELAYS=[0.05]
    )
    client = app.test_client()
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(app)

    assert len(receiver.requests) == 2
    (record,) = webhook_records(client)
    assert (record["attempts"], record["state"], record["last_status"], record["last_error"]) == (
        2,
        "failed",
        None,
        "No answer within 0.2 seconds.",
    )


def test_a_retry_does_not_hold_up_later_webhooks(make_webhook_app, receiver):
    receiver.answers = [500]
    app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, ONGOING_WEBHOOK_RETRY_DELAYS=[0.5])
    client = app.test_client()
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    receiver.wait_for_requests(1)
    assert update_order(client, "SO-1002", status_block(320)) == ("true", None)
    wait_until_sent(app)

    assert [json.loads(request["body"])["webhookEventId"] for request in receiver.requests] == [1, 2, 1]
    assert [record["state"] for record in webhook_records(client)] == ["delivered", "delivered"]


def test_webhooks_arrive_in_the_order_they_were_fired(webhook_app, webhook_client, receiver):
    response = create_order(
        webhook_client,
        goods_owner_code="DEMO",
        order_number="SO-NEW-2",
        status=320,
        lines=[{"article": "ART-100", "ordered": 1, "allocated": 1, "picked": 1}],
    )
    assert response.status_code == 201
    assert update_order(webhook_client, "SO-1001", status_block(300)) == ("true", None)
    assert update_order(webhook_client, "SO-NEW-2", status_block(450)) == ("true", None)
    assert update_order(webhook_client, "SO-1001", status_block(320)) == ("true", None)
    assert update_order(webhook_client, "SO-1004", status_block(400)) == ("true", None)
    wait_until_sent(webhook_app)

    payloads = receiver.payloads()
    assert [payload["webhookEventId"] for payload in payloads] == [1, 2, 3, 4, 5, 6, 7]
    assert [summary(payload) for payload in payloads] == [
        ("OrderCreated", 2002, 320),
        ("OrderStatusChanged", 1001, 300),
        ("OrderStatusChanged", 2002, 450),
        ("OrderPicked", 2002, 450),
        ("OrderStatusChanged", 1001, 320),
        ("OrderStatusChanged", 1004, 400),
        ("OrderPicked", 1004, 400),
    ]
    assert [record["webhookEventId"] for record in webhook_records(webhook_client)] == [1, 2, 3, 4, 5, 6, 7]


def test_concurrent_updates_arrive_in_event_id_order(make_webhook_app, receiver):
    # Concurrent calls of one goods owner on purpose: the one-call rule is off, the events' order is what counts.
    webhook_app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, ONGOING_REFUSE_OVERLAPPING_CALLS=False)
    orders = [("DEMO", f"SO-{number}") for number in (1001, 1002, 1006, 1007, 1008, 1009, 1010)]
    orders.append(("OTHER", "OT-2001"))
    start = threading.Barrier(len(orders))
    results = []

    def release(goods_owner_code, order_number):
        client = webhook_app.test_client()
        start.wait()
        results.append(update_order(client, order_number, status_block(320), goods_owner_code))

    threads = [threading.Thread(target=release, args=order) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until_sent(webhook_app)

    assert results == [("true", None)] * len(orders)
    payloads = receiver.payloads()
    assert [payload["webhookEventId"] for payload in payloads] == list(range(1, len(orders) + 1))
    assert sorted(payload["orderNumber"] for payload in payloads) == sorted(number for _, number in orders)


def test_resend_sends_the_same_payload_again(webhook_app, webhook_client, receiver):
    assert update_order(webhook_client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(webhook_app)

    response = webhook_client.post("/ongoing/webhooks/1/resend")

    assert response.status_code == 202
    assert response.get_json()["webhookEventId"] == 1
    wait_until_sent(webhook_app)
    first, second = receiver.requests
    assert first["body"] == second["body"]
    assert json.loads(second["body"])["webhookEventId"] == 1
    (record,) = webhook_records(webhook_client)
    assert (record["attempts"], record["state"]) == (2, "delivered")


def test_resend_of_a_failed_webhook_starts_its_retries_afresh(make_webhook_app, receiver):
    receiver.answers = [500, 500]
    app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, ONGOING_WEBHOOK_RETRY_DELAYS=[0.05])
    client = app.test_client()
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(app)
    assert webhook_records(client)[0]["state"] == "failed"

    assert client.post("/ongoing/webhooks/1/resend").status_code == 202
    wait_until_sent(app)

    assert len(receiver.requests) == 3
    (record,) = webhook_records(client)
    assert (record["attempts"], record["state"], record["last_status"], record["last_error"]) == (
        3,
        "delivered",
        204,
        None,
    )


def test_resend_of_an_unknown_webhook_is_a_404(webhook_client):
    response = webhook_client.post("/ongoing/webhooks/99/resend")

    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.get_json()["detail"] == "No webhook with webhookEventId 99."


def test_reset_forgets_webhooks_and_drops_planned_retries(make_webhook_app, receiver):
    receiver.default_status = 500
    app = make_webhook_app(ONGOING_WEBHOOK_URL=receiver.url, ONGOING_WEBHOOK_RETRY_DELAYS=[0.3])
    client = app.test_client()
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    receiver.wait_for_requests(1)

    assert client.post("/ongoing/_reset").status_code == 204

    assert webhook_records(client) == []
    assert sender(app).wait_idle(5)
    time.sleep(0.5)  # past the retry's delay
    assert len(receiver.requests) == 1
    # Event ids go on after a reset: a receiver that deduplicates by id must not drop the next one.
    receiver.default_status = 204
    assert update_order(client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(app)
    assert json.loads(receiver.requests[-1]["body"])["webhookEventId"] == 2
    assert client.get("/ongoing/orders/1001").get_json()["status"] == 300


def test_stop_ends_the_sender_thread(webhook_app, webhook_client, receiver):
    assert update_order(webhook_client, "SO-1001", status_block(300)) == ("true", None)
    wait_until_sent(webhook_app)
    assert len(sender_threads()) == 1

    sender(webhook_app).stop()

    assert sender_threads() == []
    assert update_order(webhook_client, "SO-1002", status_block(320)) == ("true", None)
    assert sender_threads() == []
    records = webhook_records(webhook_client)
    assert [(record["orderId"], record["state"]) for record in records] == [(1001, "delivered"), (1002, "failed")]
    assert records[1]["last_error"] == "The webhook sender is stopped."
    assert webhook_client.post("/ongoing/webhooks/2/resend").status_code == 409
    assert len(receiver.requests) == 1


# --- creating orders ----------------------------------------------------------------------------------------------


def test_create_order_answers_the_new_order(client):
    response = create_order(
        client,
        goods_owner_code="DEMO",
        order_number="SO-NEW-3",
        order_id="EXT-NEW-3",
        status=320,
        lines=[{"article": "ART-200", "ordered": 3, "allocated": 2, "picked": 1}],
    )

    assert response.status_code == 201
    assert response.headers["Location"] == "/ongoing/orders/2002"
    created = response.get_json()
    assert client.get("/ongoing/orders/2002").get_json() == created
    assert {
        name: created[name] for name in ("system_id", "goods_owner_code", "order_number", "order_id", "status")
    } == {
        "system_id": 2002,
        "goods_owner_code": "DEMO",
        "order_number": "SO-NEW-3",
        "order_id": "EXT-NEW-3",
        "status": 320,
    }
    assert created["status_name"] == "Allocated"
    assert created["lines"] == [{"article": "ART-200", "ordered": 3, "allocated": 2, "picked": 1}]
    # Allocated but unpicked goods: the documented rule applies to created orders too.
    success, message = update_order(client, "SO-NEW-3", status_block(400))
    assert success == "false"
    assert "allocated but not picked" in message


def test_create_order_defaults(client):
    response = create_order(client, goods_owner_code="OTHER", order_number="OT-NEW")

    assert response.status_code == 201
    created = response.get_json()
    assert (created["system_id"], created["order_id"], created["status"], created["lines"]) == (2002, None, 200, [])
    assert create_order(client, goods_owner_code="OTHER", order_number="OT-NEW-2").get_json()["system_id"] == 2003


def test_create_order_with_a_number_in_use_is_a_conflict(client):
    response = create_order(client, goods_owner_code="DEMO", order_number="SO-1001")

    assert response.status_code == 409
    assert response.content_type == "application/problem+json"
    assert response.get_json()["detail"] == "Order number 'SO-1001' is already in use."
    # The number is only taken for its own goods owner.
    assert create_order(client, goods_owner_code="OTHER", order_number="SO-1001").status_code == 201


@pytest.mark.parametrize(
    ("document", "fields"),
    [
        ({"order_number": "SO-X"}, ["goods_owner_code"]),
        ({"goods_owner_code": "DEMO"}, ["order_number"]),
        ({"goods_owner_code": "NOBODY", "order_number": "SO-X"}, ["goods_owner_code"]),
        ({"goods_owner_code": "DEMO", "order_number": "SO-X", "status": 999}, ["status"]),
        ({"goods_owner_code": "DEMO", "order_number": "SO-X", "status": "200"}, ["status"]),
        ({"goods_owner_code": "DEMO", "order_number": ""}, ["order_number"]),
        ({"goods_owner_code": "DEMO", "order_number": "S" * 51}, ["order_number"]),
        ({"goods_owner_code": "DEMO", "order_number": "SO-X", "system_id": 5}, ["system_id"]),
        (
            {
                "goods_owner_code": "DEMO",
                "order_number": "SO-X",
                "lines": [{"article": "A", "ordered": 1, "picked": 1}],
            },
            ["lines.0.picked"],
        ),
        (
            {
                "goods_owner_code": "DEMO",
                "order_number": "SO-X",
                "lines": [{"article": "A", "ordered": 1, "allocated": 2}],
            },
            ["lines.0.allocated"],
        ),
        (
            {"goods_owner_code": "DEMO", "order_number": "SO-X", "lines": [{"ordered": 0}]},
            ["lines.0.article", "lines.0.ordered"],
        ),
        (["not", "an", "object"], ["$"]),
    ],
    ids=[
        "goods-owner-missing",
        "order-number-missing",
        "goods-owner-unknown",
        "status-unknown",
        "status-not-integer",
        "order-number-empty",
        "order-number-too-long",
        "unknown-member",
        "picked-more-than-allocated",
        "allocated-more-than-ordered",
        "line-article-missing-ordered-zero",
        "not-an-object",
    ],
)
def test_invalid_new_order_is_a_422(client, document, fields):
    before = client.get("/ongoing/orders").get_json()

    response = client.post("/ongoing/orders", json=document)

    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert sorted(error["field"] for error in response.get_json()["errors"]) == fields
    assert client.get("/ongoing/orders").get_json() == before


def test_new_order_that_is_not_json_is_a_422(client):
    response = client.post("/ongoing/orders", data=b"order_number=SO-X", content_type="text/plain")

    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert response.get_json()["detail"] == "The body must be a JSON object."


def test_reset_removes_created_orders(client):
    assert create_order(client, goods_owner_code="DEMO", order_number="SO-GONE").status_code == 201

    assert client.post("/ongoing/_reset").status_code == 204

    assert client.get("/ongoing/orders/2002").status_code == 404
