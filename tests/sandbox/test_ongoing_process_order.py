"""The Ongoing sandbox answers ProcessOrder over real HTTP as Ongoing's ASMX service does, and fires its webhooks."""

import contextlib
import json
import threading
from pathlib import Path

import pytest
import requests
from lxml import etree
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from sandbox import create_app

SERVICE_PATH = "/ongoing/Service.asmx"
PROCESS_ORDER_ACTION = '"http://ongoingsystems.se/WSI/ProcessOrder"'
UPDATE_ORDER_ACTION = '"http://ongoingsystems.se/WSI/UpdateOrder"'
REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/ongoing"
EXAMPLE_REQUEST = REFERENCE / "example-soap-request.ProcessOrder.xml"
WSDL = REFERENCE / "ongoing-wsi-service.2017-apidemo.wsdl"
PROCESS_ORDER_XSD = Path(__file__).resolve().parents[2] / "sandbox/ongoing/process_order.xsd"

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSI_NS = "http://ongoingsystems.se/WSI"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
NS = {"soap": SOAP_NS, "wsi": WSI_NS}
NIL = "xsi:nil"

PICKING_BEGUN = "The order cannot be changed by ProcessOrder: the warehouse has begun picking it."
UNREADABLE = "Server was unable to read request. There is an error in XML document (line "

PROCESS_ORDER = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soap:Body>
    <ProcessOrder xmlns="http://ongoingsystems.se/WSI">
      <GoodsOwnerCode>{goods_owner_code}</GoodsOwnerCode>
      <UserName>{user_name}</UserName>
      <Password>{password}</Password>
      <co>
        <OrderInfo>
          <OrderIdentification>{identification_type}</OrderIdentification>
          <OrderOperation>{operation}</OrderOperation>
          {order_info}
        </OrderInfo>
        {rest}
      </co>
    </ProcessOrder>
  </soap:Body>
</soap:Envelope>
"""

UPDATE_ORDER_WAYBILL = """<?xml version="1.0" encoding="utf-16"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
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
        <UpdateOrderWaybill><Waybill>{waybill}</Waybill></UpdateOrderWaybill>
      </updateOrder>
    </UpdateOrder>
  </soap:Body>
</soap:Envelope>
"""


def process_order_document(
    operation: str = "Remove",
    identification_type: str = "GoodsOwnerOrderNumber",
    order_info: str = "<GoodsOwnerOrderNumber>SO-1001</GoodsOwnerOrderNumber>",
    rest: str = "",
    goods_owner_code: str = "DEMO",
    user_name: str = "demo",
    password: str = "demo-password",
) -> bytes:
    return PROCESS_ORDER.format(
        goods_owner_code=goods_owner_code,
        user_name=user_name,
        password=password,
        identification_type=identification_type,
        operation=operation,
        order_info=order_info,
        rest=rest,
    ).encode("utf-8")


def by_number(number: str) -> str:
    return f"<GoodsOwnerOrderNumber>{number}</GoodsOwnerOrderNumber>"


def customer(name: str = "Åsa Öberg", city: str = "Malmö") -> str:
    return (
        "<Customer><CustomerOperation>CreateOrUpdate</CustomerOperation>"
        "<CustomerIdentification>CustomerNumber</CustomerIdentification>"
        f"<CustomerNumber>C-1</CustomerNumber><Name>{name}</Name><Address>Storgatan 1</Address>"
        f"<PostCode>211 34</PostCode><City>{city}</City><CountryCode>SE</CountryCode></Customer>"
    )


def line(code: str | None, article: str | None, number_of_items: str) -> str:
    return (
        "<CustomerOrderLine><OrderLineIdentification>ExternalOrderLineCode</OrderLineIdentification>"
        "<ArticleIdentification>ArticleNumber</ArticleIdentification>"
        + ("" if code is None else f"<ExternalOrderLineCode>{code}</ExternalOrderLineCode>")
        + ("" if article is None else f"<ArticleNumber>{article}</ArticleNumber>")
        + f"<NumberOfItems>{number_of_items}</NumberOfItems></CustomerOrderLine>"
    )


def lines(*order_lines: str) -> str:
    return "<CustomerOrderLines>" + "".join(order_lines) + "</CustomerOrderLines>"


def succeeded(order_number: str, order_id: int) -> list[tuple[str, str | None]]:
    return [
        ("GoodsOwnerOrderNumber", order_number),
        ("OrderId", str(order_id)),
        ("InOrderId", "0"),
        ("ArticleDefId", NIL),
        ("Success", "true"),
    ]


def failed(message: str, order_number: str | None = None, order_id: int = 0) -> list[tuple[str, str | None]]:
    return [
        ("ErrorMessage", message),
        *([] if order_number is None else [("GoodsOwnerOrderNumber", order_number)]),
        ("OrderId", str(order_id)),
        ("InOrderId", "0"),
        ("ArticleDefId", NIL),
        ("Success", "false"),
    ]


class WebhookReceiver:
    """Stands in for the gateway's webhook endpoint: answers 204 and records every payload."""

    def __init__(self):
        self.url = ""
        self._lock = threading.Lock()
        self._payloads: list[dict] = []

    def __call__(self, environ, start_response):
        payload = json.loads(Request(environ).get_data())
        with self._lock:
            self._payloads.append(payload)
        return Response(status=204)(environ, start_response)

    def payloads(self) -> list[dict]:
        with self._lock:
            return list(self._payloads)


@contextlib.contextmanager
def serving(wsgi_app):
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def receiver():
    receiver = WebhookReceiver()
    with serving(receiver) as url:
        receiver.url = url + "/webhooks/ongoing"
        yield receiver


@pytest.fixture
def app(receiver):
    app = create_app(
        {
            "TESTING": True,
            "ONGOING_WEBHOOK_URL": receiver.url,
            "ONGOING_WEBHOOK_RETRY_DELAYS": [0.05],
            "ONGOING_WEBHOOK_FIRST_EVENT_ID": 1,
        }
    )
    yield app
    app.extensions["sandbox.ongoing"]["webhooks"].stop()


@pytest.fixture
def sandbox_url(app):
    with serving(app) as url:
        yield url


def post_soap(
    sandbox_url: str,
    document: bytes,
    soap_action: str | None = PROCESS_ORDER_ACTION,
    content_type: str = "text/xml; charset=utf-8",
) -> requests.Response:
    headers = {"Content-Type": content_type}
    if soap_action is not None:
        headers["SOAPAction"] = soap_action
    return requests.post(sandbox_url + SERVICE_PATH, data=document, headers=headers, timeout=5)


def result_element(response: requests.Response) -> etree._Element:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    envelope = etree.fromstring(response.content)
    (result,) = envelope.xpath(
        "/soap:Envelope/soap:Body/wsi:ProcessOrderResponse/wsi:ProcessOrderResult", namespaces=NS
    )
    return result


def read_result(response: requests.Response) -> list[tuple[str, str | None]]:
    """The children of ProcessOrderResult in their order, each as (local name, text or NIL)."""
    return [
        (etree.QName(child).localname, NIL if child.get(XSI_NIL) == "true" else child.text)
        for child in result_element(response)
    ]


def read_fault(response: requests.Response) -> tuple[str, str]:
    assert response.status_code == 500, response.text
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    (fault,) = etree.fromstring(response.content).xpath("/soap:Envelope/soap:Body/soap:Fault", namespaces=NS)
    return fault.findtext("faultcode"), fault.findtext("faultstring")


def process_order(sandbox_url: str, **document) -> list[tuple[str, str | None]]:
    return read_result(post_soap(sandbox_url, process_order_document(**document)))


def all_orders(sandbox_url: str) -> list[dict]:
    return requests.get(sandbox_url + "/ongoing/orders", timeout=5).json()["orders"]


def order_json(sandbox_url: str, system_id: int) -> dict:
    response = requests.get(f"{sandbox_url}/ongoing/orders/{system_id}", timeout=5)
    assert response.status_code == 200
    return response.json()


def fired(app, receiver, sandbox_url: str) -> list[tuple]:
    """Every webhook delivered so far, as (event id, template, SystemId, order number, status)."""
    assert app.extensions["sandbox.ongoing"]["webhooks"].wait_idle(5)
    records = requests.get(sandbox_url + "/ongoing/webhooks", timeout=5).json()["webhooks"]
    payloads = receiver.payloads()
    assert [(record["webhookEventId"], record["state"]) for record in records] == [
        (payload["webhookEventId"], "delivered") for payload in payloads
    ]
    return [
        (
            payload["webhookEventId"],
            payload["webhookTemplate"],
            payload["orderId"],
            payload["orderNumber"],
            payload["orderStatus"]["number"],
        )
        for payload in payloads
    ]


def without(orders: list[dict], system_id: int) -> list[dict]:
    return [order for order in orders if order["system_id"] != system_id]


def assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url: str) -> None:
    """A later cancellation is the first webhook: the call before it fired none and used no event id."""
    assert process_order(sandbox_url, order_info=by_number("SO-1010")) == succeeded("SO-1010", 1010)
    assert fired(app, receiver, sandbox_url) == [(1, "OrderStatusChanged", 1010, "SO-1010", 1000)]


# --- Remove ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identification_type", "order_info", "order_number", "system_id"),
    [
        ("GoodsOwnerOrderNumber", by_number("SO-1001"), "SO-1001", 1001),
        ("GoodsOwnerOrderId", "<GoodsOwnerOrderId>EXT-1002</GoodsOwnerOrderId>", "SO-1002", 1002),
        ("SystemId", "<OrderId>1006</OrderId>", "SO-1006", 1006),
        # The type decides which value counts; the others are ignored.
        ("SystemId", by_number("SO-1001") + "<OrderId>1007</OrderId>", "SO-1007", 1007),
    ],
    ids=["order-number", "order-id", "system-id", "system-id-beside-number"],
)
def test_remove_cancels_the_order(app, receiver, sandbox_url, identification_type, order_info, order_number, system_id):
    before = all_orders(sandbox_url)

    result = process_order(sandbox_url, identification_type=identification_type, order_info=order_info)

    assert result == succeeded(order_number, system_id)
    order = order_json(sandbox_url, system_id)
    assert (order["status"], order["status_name"]) == (1000, "Cancelled")
    assert without(all_orders(sandbox_url), system_id) == without(before, system_id)
    assert fired(app, receiver, sandbox_url) == [(1, "OrderStatusChanged", system_id, order_number, 1000)]


@pytest.mark.parametrize(
    ("order_number", "system_id"),
    [("SO-1003", 1003), ("SO-1004", 1004), ("SO-1005", 1005)],
    ids=["allocated-one-picked", "allocated-all-picked", "sent"],
)
def test_remove_is_refused_once_picking_has_begun(app, receiver, sandbox_url, order_number, system_id):
    before = all_orders(sandbox_url)

    result = process_order(sandbox_url, order_info=by_number(order_number))

    assert result == failed(PICKING_BEGUN, order_number, system_id)
    assert all_orders(sandbox_url) == before
    assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url)


@pytest.mark.parametrize(
    ("identification_type", "order_info", "message"),
    [
        ("GoodsOwnerOrderNumber", by_number("SO-9999"), "No order found with GoodsOwnerOrderNumber 'SO-9999'."),
        (
            "GoodsOwnerOrderId",
            "<GoodsOwnerOrderId>EXT-9999</GoodsOwnerOrderId>",
            "No order found with GoodsOwnerOrderId 'EXT-9999'.",
        ),
        ("SystemId", "<OrderId>9999</OrderId>", "No order found with SystemId '9999'."),
        # OrderId is an int that may be left out: .NET reads it as 0, which no order has.
        ("SystemId", by_number("SO-1001"), "No order found with SystemId '0'."),
        # Valid identification types the sandbox keeps no values for.
        (
            "ReferenceNumber",
            "<ReferenceNumber>SO-1001</ReferenceNumber>",
            "No order found with ReferenceNumber 'SO-1001'.",
        ),
        ("ExternalOrderCode", by_number("SO-1001"), "No order found with ExternalOrderCode ''."),
        (
            "GoodsOwnerOrderId",
            by_number("SO-1001"),
            "GoodsOwnerOrderId is required when OrderIdentification is GoodsOwnerOrderId.",
        ),
    ],
    ids=[
        "unknown-number",
        "unknown-order-id",
        "unknown-system-id",
        "system-id-missing",
        "reference-number",
        "external-order-code",
        "order-id-missing",
    ],
)
def test_remove_of_an_order_that_is_not_found(app, receiver, sandbox_url, identification_type, order_info, message):
    before = all_orders(sandbox_url)

    result = process_order(sandbox_url, identification_type=identification_type, order_info=order_info)

    assert result == failed(message)
    assert all_orders(sandbox_url) == before
    assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url)


@pytest.mark.parametrize(
    ("identification_type", "order_info", "message"),
    [
        ("GoodsOwnerOrderNumber", by_number("OT-2001"), "No order found with GoodsOwnerOrderNumber 'OT-2001'."),
        ("SystemId", "<OrderId>2001</OrderId>", "No order found with SystemId '2001'."),
    ],
    ids=["by-number", "by-system-id"],
)
def test_another_goods_owners_order_is_not_found(app, receiver, sandbox_url, identification_type, order_info, message):
    result = process_order(sandbox_url, identification_type=identification_type, order_info=order_info)

    assert result == failed(message)
    assert order_json(sandbox_url, 2001)["status"] == 200
    # Its own goods owner's credentials find it.
    result = process_order(
        sandbox_url,
        identification_type=identification_type,
        order_info=order_info,
        goods_owner_code="OTHER",
        user_name="other",
        password="other-password",
    )
    assert result == succeeded("OT-2001", 2001)
    assert order_json(sandbox_url, 2001)["status"] == 1000
    assert fired(app, receiver, sandbox_url) == [(1, "OrderStatusChanged", 2001, "OT-2001", 1000)]


def test_a_repeated_remove_succeeds_without_a_second_webhook(app, receiver, sandbox_url):
    assert process_order(sandbox_url, order_info=by_number("SO-1007")) == succeeded("SO-1007", 1007)
    cancelled = order_json(sandbox_url, 1007)

    result = process_order(sandbox_url, identification_type="SystemId", order_info="<OrderId>1007</OrderId>")

    assert result == succeeded("SO-1007", 1007)
    assert order_json(sandbox_url, 1007) == cancelled
    assert cancelled["status"] == 1000
    assert process_order(sandbox_url, order_info=by_number("SO-1008")) == succeeded("SO-1008", 1008)
    assert fired(app, receiver, sandbox_url) == [
        (1, "OrderStatusChanged", 1007, "SO-1007", 1000),
        (2, "OrderStatusChanged", 1008, "SO-1008", 1000),
    ]


def test_update_order_still_refuses_to_cancel_and_cannot_revive_a_removed_order(sandbox_url):
    update = UPDATE_ORDER_WAYBILL.replace(
        "<UpdateOrderWaybill><Waybill>{waybill}</Waybill></UpdateOrderWaybill>",
        "<UpdateOrderStatus><OrderStatus>1000</OrderStatus></UpdateOrderStatus>",
    ).encode("utf-8")

    response = post_soap(sandbox_url, update, soap_action=UPDATE_ORDER_ACTION)

    assert etree.fromstring(response.content).findtext(f".//{{{WSI_NS}}}Message") == (
        "UpdateOrder must not be used to cancel an order; use ProcessOrder with OrderOperation Remove."
    )
    assert order_json(sandbox_url, 1001)["status"] == 200


# --- Create, CreateOrUpdate, Update ----------------------------------------------------------------------------


def test_ongoings_example_request_creates_its_order(app, receiver, sandbox_url):
    document = EXAMPLE_REQUEST.read_bytes()
    # Sent as Ongoing's example has it: a UTF-16 declaration over UTF-8 text, and CRLF line ends.
    assert document.startswith(b'<?xml version="1.0" encoding="utf-16"?>\r\n')
    for placeholder, value in {
        b"{{GoodsOwnerCode}}": b"DEMO",
        b"{{Username}}": b"demo",
        b"{{Password}}": b"demo-password",
    }.items():
        assert placeholder in document
        document = document.replace(placeholder, value)

    response = post_soap(sandbox_url, document, content_type="text/xml;charset=utf-8")

    assert read_result(response) == succeeded("O5987", 2002)
    order = order_json(sandbox_url, 2002)
    assert {name: order[name] for name in ("goods_owner_code", "order_number", "order_id", "status_name")} == {
        "goods_owner_code": "DEMO",
        "order_number": "O5987",
        "order_id": None,
        "status_name": "Open",
    }
    assert order["customer"] == {
        "customer_number": "CN123",
        "name": "Test Testsson",
        "address": "Street 1",
        "address2": "Street 2",
        "address3": None,
        "post_code": "12345",
        "city": "Test City",
        "country_code": "SE",
    }
    assert order["lines"] == [
        {"article": "YPGKX", "ordered": 1, "allocated": 0, "picked": 0},
        {"article": "YPGKX", "ordered": 2, "allocated": 0, "picked": 0},
    ]
    assert fired(app, receiver, sandbox_url) == [(1, "OrderCreated", 2002, "O5987", 200)]
    # CreateOrUpdate again finds the order it created: nothing new, nothing fired.
    assert read_result(post_soap(sandbox_url, document)) == succeeded("O5987", 2002)
    assert [order["system_id"] for order in all_orders(sandbox_url)] == [*range(1001, 1011), 2001, 2002]
    assert order_json(sandbox_url, 2002) == order
    assert len(fired(app, receiver, sandbox_url)) == 1


def test_create_adds_an_order_with_the_next_system_id(app, receiver, sandbox_url):
    result = process_order(
        sandbox_url,
        operation="Create",
        identification_type="GoodsOwnerOrderId",
        order_info="<GoodsOwnerOrderId>EXT-NEW</GoodsOwnerOrderId>"
        + by_number("SO-NEW")
        + "<OrderStatusCreated>300</OrderStatusCreated>",
        rest=customer() + lines(line("1", "ART-100", "1.5"), line("2", "ART-200", " 3 ")),
    )

    assert result == succeeded("SO-NEW", 2002)
    order = order_json(sandbox_url, 2002)
    assert (order["order_number"], order["order_id"], order["status"]) == ("SO-NEW", "EXT-NEW", 300)
    assert (order["customer"]["name"], order["customer"]["city"]) == ("Åsa Öberg", "Malmö")
    assert order["lines"] == [
        {"article": "ART-100", "ordered": 1.5, "allocated": 0, "picked": 0},
        {"article": "ART-200", "ordered": 3, "allocated": 0, "picked": 0},
    ]
    assert process_order(sandbox_url, operation="Create", order_info=by_number("SO-NEW-2")) == succeeded(
        "SO-NEW-2", 2003
    )
    assert order_json(sandbox_url, 2003)["status"] == 200
    assert order_json(sandbox_url, 2003)["customer"] is None
    assert fired(app, receiver, sandbox_url) == [
        (1, "OrderCreated", 2002, "SO-NEW", 300),
        (2, "OrderCreated", 2003, "SO-NEW-2", 200),
    ]


def test_create_with_a_number_in_use_is_refused(app, receiver, sandbox_url):
    before = all_orders(sandbox_url)

    result = process_order(sandbox_url, operation="Create", order_info=by_number("SO-1001"), rest=customer())

    assert result == failed("Order number 'SO-1001' is already in use.", "SO-1001", 1001)
    assert all_orders(sandbox_url) == before
    assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url)


def test_an_order_number_is_in_use_only_for_its_goods_owner(sandbox_url):
    result = process_order(
        sandbox_url,
        operation="Create",
        order_info=by_number("SO-1001"),
        goods_owner_code="OTHER",
        user_name="other",
        password="other-password",
    )

    assert result == succeeded("SO-1001", 2002)
    assert order_json(sandbox_url, 2002)["goods_owner_code"] == "OTHER"


def test_create_or_update_replaces_the_customer_and_lines_of_an_unpicked_order(app, receiver, sandbox_url):
    before = order_json(sandbox_url, 1002)

    result = process_order(
        sandbox_url,
        operation="CreateOrUpdate",
        order_info=by_number("SO-1002"),
        rest=customer() + lines(line("A", "ART-500", "4"), line("B", "ART-501", "1")),
    )

    assert result == succeeded("SO-1002", 1002)
    after = order_json(sandbox_url, 1002)
    assert after["lines"] == [
        {"article": "ART-500", "ordered": 4, "allocated": 0, "picked": 0},
        {"article": "ART-501", "ordered": 1, "allocated": 0, "picked": 0},
    ]
    assert after["customer"]["name"] == "Åsa Öberg"
    assert {name: value for name, value in after.items() if name not in ("lines", "customer")} == {
        name: value for name, value in before.items() if name not in ("lines", "customer")
    }
    assert after["status"] == 300
    assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url)


def test_update_leaves_what_it_does_not_send(sandbox_url):
    before = order_json(sandbox_url, 1006)

    result = process_order(
        sandbox_url,
        operation="Update",
        identification_type="SystemId",
        order_info="<OrderId>1006</OrderId>",
        rest=customer(name="Only The Customer"),
    )

    assert result == succeeded("SO-1006", 1006)
    after = order_json(sandbox_url, 1006)
    assert after["customer"]["name"] == "Only The Customer"
    assert (after["order_number"], after["order_id"], after["lines"]) == (
        before["order_number"],
        before["order_id"],
        before["lines"],
    )


@pytest.mark.parametrize(
    ("operation", "order_info", "rest", "expected"),
    [
        (
            "CreateOrUpdate",
            by_number("SO-1003"),
            lines(line("1", "ART-1", "1")),
            failed(PICKING_BEGUN, "SO-1003", 1003),
        ),
        ("Update", by_number("SO-1004"), customer(), failed(PICKING_BEGUN, "SO-1004", 1004)),
        ("Update", by_number("SO-1005"), lines(), failed(PICKING_BEGUN, "SO-1005", 1005)),
        ("Update", by_number("SO-9999"), customer(), failed("No order found with GoodsOwnerOrderNumber 'SO-9999'.")),
        (
            "CreateOrUpdate",
            by_number("SO-NEW"),
            lines(line("1", "ART-1", "1"), line("1", "ART-2", "1")),
            failed("ExternalOrderLineCode '1' is on more than one order line."),
        ),
        (
            "CreateOrUpdate",
            by_number("SO-1002"),
            lines(line("1", "ART-1", "1"), line("2", None, "1")),
            failed("Order line 2 has no ArticleNumber.", "SO-1002", 1002),
        ),
        (
            "Create",
            by_number("SO-NEW"),
            lines(line("1", "ART-1", "0")),
            failed("Order line 1: NumberOfItems must be greater than 0."),
        ),
        (
            "Create",
            by_number("SO-NEW") + "<OrderStatusCreated>999</OrderStatusCreated>",
            "",
            failed("Order status 999 does not exist."),
        ),
        (
            "Create",
            "<GoodsOwnerOrderNumber></GoodsOwnerOrderNumber>",
            "",
            failed("GoodsOwnerOrderNumber must not be empty."),
        ),
    ],
    ids=[
        "picked-line",
        "all-picked",
        "sent",
        "update-unknown",
        "line-code-twice",
        "line-without-article",
        "line-without-items",
        "unknown-created-status",
        "empty-order-number",
    ],
)
def test_create_and_update_refusals_change_nothing(app, receiver, sandbox_url, operation, order_info, rest, expected):
    before = all_orders(sandbox_url)

    assert process_order(sandbox_url, operation=operation, order_info=order_info, rest=rest) == expected

    assert all_orders(sandbox_url) == before
    assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url)


def test_a_removed_order_is_not_updated(sandbox_url):
    assert process_order(sandbox_url, order_info=by_number("SO-1009")) == succeeded("SO-1009", 1009)
    before = order_json(sandbox_url, 1009)

    result = process_order(sandbox_url, operation="CreateOrUpdate", order_info=by_number("SO-1009"), rest=customer())

    assert result == failed("The order cannot be changed by ProcessOrder: it is cancelled.", "SO-1009", 1009)
    assert order_json(sandbox_url, 1009) == before


# --- reading leniently, as XmlSerializer does --------------------------------------------------------------------


def test_children_in_any_order_unknown_elements_and_the_first_of_two_are_taken(sandbox_url):
    document = process_order_document(
        operation="Remove",
        order_info=(
            # A second OrderOperation is skipped, and so are elements no type declares or in another namespace.
            "<OrderOperation>Create</OrderOperation>"
            "<NoSuchElement><OrderOperation>Create</OrderOperation></NoSuchElement>"
            '<x:GoodsOwnerOrderNumber xmlns:x="urn:not-ongoing">SO-1001</x:GoodsOwnerOrderNumber>'
            + by_number("SO-1006")
        ),
    )
    # The identification after the operation, as Ongoing's example has it the other way round.
    document = document.replace(b"<OrderIdentification>GoodsOwnerOrderNumber</OrderIdentification>", b"").replace(
        b"</OrderInfo>", b"<OrderIdentification>GoodsOwnerOrderNumber</OrderIdentification></OrderInfo>"
    )

    assert read_result(post_soap(sandbox_url, document)) == succeeded("SO-1006", 1006)
    assert order_json(sandbox_url, 1006)["status"] == 1000
    assert order_json(sandbox_url, 1001)["status"] == 200


def test_a_missing_order_operation_is_the_enumerations_first_value(sandbox_url):
    # .NET leaves an enum member at 0 when its element is missing: OrderOperation's first value, Create.
    document = process_order_document(order_info=by_number("SO-1001")).replace(
        b"<OrderOperation>Remove</OrderOperation>", b""
    )

    result = read_result(post_soap(sandbox_url, document))

    assert result == failed("Order number 'SO-1001' is already in use.", "SO-1001", 1001)
    assert order_json(sandbox_url, 1001)["status"] == 200


def test_a_request_without_order_info_is_refused(sandbox_url):
    document = (
        process_order_document().replace(b"<co>", b"<co><Ignored>").replace(b"</OrderInfo>", b"</OrderInfo></Ignored>")
    )
    assert b"<Ignored>" in document

    assert read_result(post_soap(sandbox_url, document)) == failed("The request holds no co/OrderInfo.")


@pytest.mark.parametrize(
    ("document", "named"),
    [
        (
            process_order_document(operation="Cancel"),
            "OrderInfo/OrderOperation: 'Cancel' is not a valid value for OrderOperation.",
        ),
        # XmlSerializer compares enumeration values exactly.
        (process_order_document(operation=" Remove"), "' Remove' is not a valid value for OrderOperation."),
        (process_order_document(operation=""), "'' is not a valid value for OrderOperation."),
        (
            process_order_document(identification_type="OrderNumber"),
            "OrderInfo/OrderIdentification: 'OrderNumber' is not a valid value for OrderIdentificationType.",
        ),
        (
            process_order_document(rest=customer().replace(">CreateOrUpdate<", ">Upsert<")),
            "co/Customer/CustomerOperation: 'Upsert' is not a valid value for CustomerOperation.",
        ),
        (
            process_order_document(
                operation="Create", rest=lines(line("1", "A", "1").replace(">ArticleNumber<", ">Ean<"))
            ),
            "CustomerOrderLine/ArticleIdentification: 'Ean' is not a valid value for ArticleIdentificationType.",
        ),
        (
            process_order_document(identification_type="SystemId", order_info="<OrderId>10O1</OrderId>"),
            "OrderInfo/OrderId: '10O1' is not a valid int.",
        ),
        (
            process_order_document(identification_type="SystemId", order_info="<OrderId>2147483648</OrderId>"),
            "OrderInfo/OrderId: '2147483648' is not a valid int.",
        ),
        (
            process_order_document(operation="Create", rest=lines(line("1", "A", "2,5"))),
            "CustomerOrderLine/NumberOfItems: '2,5' is not a valid decimal.",
        ),
        (
            process_order_document(operation="Create", rest=lines(line("1", "A", "1e3"))),
            "CustomerOrderLine/NumberOfItems: '1e3' is not a valid decimal.",
        ),
        (
            process_order_document(
                order_info=by_number("SO-1001") + "<DeliveryDate>2026-13-01T00:00:00</DeliveryDate>"
            ),
            "OrderInfo/DeliveryDate: '2026-13-01T00:00:00' is not a valid dateTime.",
        ),
        (
            process_order_document(
                order_info=by_number("SO-1001")
                + "<OrderNotification><NotifyByEmail>yes</NotifyByEmail></OrderNotification>"
            ),
            "OrderInfo/OrderNotification/NotifyByEmail: 'yes' is not a valid boolean.",
        ),
        (
            process_order_document(rest=customer().replace("</Customer>", "<IsVisible>True</IsVisible></Customer>")),
            "co/Customer/IsVisible: 'True' is not a valid boolean.",
        ),
    ],
    ids=[
        "unknown-operation",
        "operation-with-space",
        "empty-operation",
        "unknown-identification",
        "unknown-customer-operation",
        "unknown-article-identification",
        "int-with-letter",
        "int-too-large",
        "decimal-comma",
        "decimal-exponent",
        "impossible-date",
        "boolean-yes",
        "boolean-capitalised",
    ],
)
def test_a_value_that_does_not_read_is_a_client_fault(sandbox_url, document, named):
    before = all_orders(sandbox_url)

    faultcode, faultstring = read_fault(post_soap(sandbox_url, document))

    assert faultcode == "soap:Client"
    assert faultstring.startswith(UNREADABLE)
    assert faultstring.endswith(named)
    assert all_orders(sandbox_url) == before


def test_values_in_the_forms_xmlconvert_reads_are_accepted(sandbox_url):
    order_info = (
        "<GoodsOwnerOrderId>EXT-1001</GoodsOwnerOrderId>"
        "<DeliveryDate>2026-12-01</DeliveryDate><ArrivalDate>2026-12-01T10:00:00.1234567+01:00</ArrivalDate>"
        "<OrderNotification><NotifyByEmail> 1 </NotifyByEmail><NotifyBySms>false</NotifyBySms>"
        '<NotifyByTelephone xsi:nil="true"/></OrderNotification>'
        "<PickingPriority> +7 </PickingPriority>"
    )

    result = process_order(sandbox_url, identification_type="GoodsOwnerOrderId", order_info=order_info)

    assert result == succeeded("SO-1001", 1001)


@pytest.mark.parametrize(
    ("rest", "named"),
    [
        (lines(*[line(str(n), "A", "1") for n in range(1001)]), "more than 1000 CustomerOrderLine elements."),
        (customer(name="N" * 4001), "co/Customer/Name: the text is longer than 4000 characters."),
        (
            lines(
                line("1", "A", "1").replace(
                    "</CustomerOrderLine>", "<ArticleName><b>bold</b></ArticleName></CustomerOrderLine>"
                )
            ),
            "CustomerOrderLine/ArticleName: text was expected, not elements.",
        ),
        (
            lines(
                "<CustomerOrderLine><SubOrderLines><SubOrderLine>" * 9
                + "</SubOrderLine></SubOrderLines></CustomerOrderLine>" * 9
            ),
            "the elements are nested too deeply.",
        ),
    ],
    ids=["too-many-lines", "string-too-long", "elements-in-a-string", "nested-too-deeply"],
)
def test_what_is_read_is_bounded(sandbox_url, rest, named):
    faultcode, faultstring = read_fault(post_soap(sandbox_url, process_order_document(operation="Create", rest=rest)))

    assert faultcode == "soap:Client"
    assert faultstring.startswith(UNREADABLE)
    assert faultstring.endswith(named)


def test_too_many_elements_are_a_client_fault(sandbox_url):
    padding = "<OrderRemark/>" * 50_001
    document = process_order_document(order_info=by_number("SO-1001") + padding)

    faultcode, faultstring = read_fault(post_soap(sandbox_url, document))

    assert (faultcode, faultstring) == (
        "soap:Client",
        "Server was unable to read request. ProcessOrder holds more than 50000 elements.",
    )
    assert order_json(sandbox_url, 1001)["status"] == 200


# --- the SOAP envelope, credentials, dispatch --------------------------------------------------------------------


def test_response_has_the_wsdls_shape(sandbox_url):
    failure = post_soap(sandbox_url, process_order_document(order_info=by_number("SO-1003")))
    success = post_soap(sandbox_url, process_order_document(order_info=by_number("SO-1001")))

    schema = etree.XMLSchema(etree.parse(str(PROCESS_ORDER_XSD)))
    for response in (failure, success):
        envelope = etree.fromstring(response.content)
        assert envelope.nsmap == {
            "soap": SOAP_NS,
            "xsi": "http://www.w3.org/2001/XMLSchema-instance",
            "xsd": "http://www.w3.org/2001/XMLSchema",
        }
        (body,) = envelope
        (operation_response,) = body
        assert operation_response.prefix is None
        schema.assertValid(operation_response)
    assert "Message" not in [etree.QName(child).localname for child in result_element(failure)]


def test_process_order_xsd_holds_the_wsdls_definitions_unchanged():
    xs = "{http://www.w3.org/2001/XMLSchema}"
    parser = etree.XMLParser(remove_blank_text=True, remove_comments=True)

    def definitions(schema: etree._Element) -> dict[tuple[str, str], bytes]:
        return {
            (etree.QName(definition).localname, definition.get("name")): etree.tostring(
                definition, method="c14n", exclusive=True
            )
            for definition in schema
        }

    ours = definitions(etree.parse(str(PROCESS_ORDER_XSD), parser).getroot())
    wsdl = definitions(etree.parse(str(WSDL), parser).find(f".//{xs}schema"))
    assert ("element", "ProcessOrder") in ours
    assert ("complexType", "FileResultClass") in ours
    assert {key: wsdl[key] for key in ours} == ours


@pytest.mark.parametrize(
    ("goods_owner_code", "user_name", "password"),
    [
        ("DEMO", "demo", "wrong-password"),
        ("DEMO", "other", "other-password"),
        ("OTHER", "demo", "demo-password"),
        ("NOBODY", "demo", "demo-password"),
        ("DEMO", "demo", ""),
        (None, "demo", "demo-password"),
        ("DEMO", "demo", None),
    ],
    ids=[
        "wrong-password",
        "other-owners-user",
        "demo-user-for-other",
        "unknown-owner",
        "empty",
        "no-code",
        "no-password",
    ],
)
def test_bad_credentials_fault(app, receiver, sandbox_url, goods_owner_code, user_name, password):
    document = process_order_document(
        goods_owner_code=goods_owner_code or "", user_name=user_name, password=password or ""
    )
    if goods_owner_code is None:
        document = document.replace(b"<GoodsOwnerCode></GoodsOwnerCode>", b"")
    if password is None:
        document = document.replace(b"<Password></Password>", b"")
    before = all_orders(sandbox_url)

    response = post_soap(sandbox_url, document)

    assert read_fault(response) == ("soap:Client", "Invalid credentials.")
    if password:
        assert password.encode() not in response.content
    assert all_orders(sandbox_url) == before
    assert_nothing_fired_by_the_last_call(app, receiver, sandbox_url)


def test_a_string_fault_does_not_quote_the_password(sandbox_url):
    password = "s3cret-" + "x" * 4000

    response = post_soap(sandbox_url, process_order_document(password=password))

    faultcode, faultstring = read_fault(response)
    assert faultcode == "soap:Client"
    assert faultstring.endswith("ProcessOrder/Password: the text is longer than 4000 characters.")
    assert b"s3cret" not in response.content


@pytest.mark.parametrize(
    "soap_action",
    [
        '"http://ongoingsystems.se/WSI/ProcessInOrder"',
        '"http://ongoingsystems.se/WSI/processorder"',
        "ProcessOrder",
        None,
    ],
    ids=["other-operation", "wrong-case", "bare-name", "missing"],
)
def test_an_unsupported_soap_action_is_a_fault(sandbox_url, soap_action):
    faultcode, faultstring = read_fault(post_soap(sandbox_url, process_order_document(), soap_action=soap_action))

    shown = (soap_action or "").strip('"')
    assert (faultcode, faultstring) == (
        "soap:Client",
        f"Server did not recognize the value of HTTP Header SOAPAction: {shown}.",
    )
    assert order_json(sandbox_url, 1001)["status"] == 200


def test_the_unquoted_soap_action_is_accepted(sandbox_url):
    response = post_soap(sandbox_url, process_order_document(), soap_action="http://ongoingsystems.se/WSI/ProcessOrder")

    assert read_result(response) == succeeded("SO-1001", 1001)


@pytest.mark.parametrize(
    ("soap_action", "document", "message"),
    [
        (
            PROCESS_ORDER_ACTION,
            UPDATE_ORDER_WAYBILL.format(waybill="WB-1").encode("utf-8"),
            "Server was unable to read request. The body element UpdateOrder in namespace "
            "'http://ongoingsystems.se/WSI' does not match the SOAPAction http://ongoingsystems.se/WSI/ProcessOrder.",
        ),
        (
            UPDATE_ORDER_ACTION,
            process_order_document(),
            "Server was unable to read request. The body element ProcessOrder in namespace "
            "'http://ongoingsystems.se/WSI' does not match the SOAPAction http://ongoingsystems.se/WSI/UpdateOrder.",
        ),
        (
            PROCESS_ORDER_ACTION,
            process_order_document().replace(b' xmlns="http://ongoingsystems.se/WSI"', b""),
            "Server was unable to read request. The body element ProcessOrder in namespace "
            "'' does not match the SOAPAction http://ongoingsystems.se/WSI/ProcessOrder.",
        ),
    ],
    ids=["update-order-body", "process-order-body", "no-namespace"],
)
def test_a_body_element_other_than_the_soap_actions_is_a_fault(sandbox_url, soap_action, document, message):
    before = all_orders(sandbox_url)

    assert read_fault(post_soap(sandbox_url, document, soap_action=soap_action)) == ("soap:Client", message)
    assert all_orders(sandbox_url) == before


# --- encoding and hardening --------------------------------------------------------------------------------------


def test_a_utf16_declaration_over_utf8_text_is_read_as_utf8_by_update_order(sandbox_url):
    document = UPDATE_ORDER_WAYBILL.format(waybill="Straße-Å-€").encode("utf-8")
    assert document.startswith(b'<?xml version="1.0" encoding="utf-16"?>')

    response = post_soap(sandbox_url, document, soap_action=UPDATE_ORDER_ACTION)

    assert response.status_code == 200, response.text
    assert etree.fromstring(response.content).findtext(f".//{{{WSI_NS}}}Success") == "true"
    assert order_json(sandbox_url, 1001)["waybill"] == "Straße-Å-€"


@pytest.mark.parametrize(
    "declaration",
    ['<?xml version="1.0" encoding="utf-16"?>', '<?xml version="1.0" encoding="iso-8859-1"?>', '<?xml version="1.0"?>'],
    ids=["utf-16", "latin-1", "none"],
)
def test_the_http_charset_governs_for_process_order(sandbox_url, declaration):
    document = process_order_document(operation="Create", order_info=by_number("SO-ÅÄÖ"), rest=customer())
    document = document.replace(b'<?xml version="1.0" encoding="utf-8"?>', declaration.encode())
    assert document.startswith(declaration.encode())

    assert read_result(post_soap(sandbox_url, document)) == succeeded("SO-ÅÄÖ", 2002)
    assert order_json(sandbox_url, 2002)["customer"]["name"] == "Åsa Öberg"


@pytest.mark.parametrize(
    ("document", "soap_action"),
    [
        # Well-formed Latin-1 by its own declaration, but the HTTP charset says UTF-8.
        (
            process_order_document(operation="Create", order_info=by_number("SO-X"), rest=customer())
            .decode()
            .replace('encoding="utf-8"', 'encoding="iso-8859-1"')
            .encode("latin-1"),
            PROCESS_ORDER_ACTION,
        ),
        (
            process_order_document().decode().replace('encoding="utf-8"', 'encoding="utf-16"').encode("utf-16"),
            PROCESS_ORDER_ACTION,
        ),
        (UPDATE_ORDER_WAYBILL.format(waybill="Straße").encode("latin-1"), UPDATE_ORDER_ACTION),
    ],
    ids=["latin-1-process-order", "real-utf-16", "latin-1-update-order"],
)
def test_a_body_that_is_not_utf8_is_a_client_fault(sandbox_url, document, soap_action):
    before = all_orders(sandbox_url)

    faultcode, faultstring = read_fault(post_soap(sandbox_url, document, soap_action=soap_action))

    assert faultcode == "soap:Client"
    assert faultstring.startswith(
        "Server was unable to read request. The request is not well-formed XML in UTF-8, the charset of its "
        "Content-Type: byte 0x"
    )
    assert faultstring.endswith(" is not valid UTF-8.")
    assert all_orders(sandbox_url) == before


@pytest.mark.parametrize(
    ("doctype", "order_number"),
    [
        (
            '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>',
            "&lol2;",
        ),
        ('<!DOCTYPE soap:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"),
        ("<!DOCTYPE soap:Envelope>", "SO-NEW"),
    ],
    ids=["entity-bomb", "external-entity", "bare-doctype"],
)
def test_a_doctype_is_still_refused(sandbox_url, doctype, order_number):
    document = process_order_document(operation="Create", order_info=by_number(order_number))
    document = document.replace(b"?>\n", b"?>\n" + doctype.encode() + b"\n", 1)
    assert doctype.encode() in document

    faultcode, faultstring = read_fault(post_soap(sandbox_url, document))

    assert (faultcode, faultstring) == (
        "soap:Client",
        "Server was unable to read request. A document type declaration (DOCTYPE) is not allowed in a SOAP message.",
    )
    assert [order["system_id"] for order in all_orders(sandbox_url)] == [*range(1001, 1011), 2001]


# --- JSON view and reset -----------------------------------------------------------------------------------------


def test_reset_forgets_created_and_removed_orders(sandbox_url):
    pristine = all_orders(sandbox_url)
    assert all(order["customer"] is None for order in pristine)
    assert process_order(sandbox_url, operation="Create", order_info=by_number("SO-GONE")) == succeeded("SO-GONE", 2002)
    assert process_order(sandbox_url, order_info=by_number("SO-1001")) == succeeded("SO-1001", 1001)

    assert requests.post(sandbox_url + "/ongoing/_reset", timeout=5).status_code == 204

    assert all_orders(sandbox_url) == pristine
    assert requests.get(sandbox_url + "/ongoing/orders/2002", timeout=5).status_code == 404
