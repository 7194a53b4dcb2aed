"""The Speed4Trade CONNECT sandbox answers updateOrderStatus as the vendor's spec says, for raw SOAP documents."""

import threading
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape

import pytest
from lxml import etree

from sandbox import create_app
from sandbox.speed4trade.update_order_status import UPDATE_ORDER_STATUS_XSD
from tests.xmltrees import xsd_refusals

SERVICE = "/speed4trade/"
NAMESPACE = "urn:order-gateway-sandbox:speed4trade"
AUTH = ("connect-demo", "connect-password")

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:updateOrderStatus"'}
SOAP12_HEADERS = {"Content-Type": "application/soap+xml; charset=utf-8"}

# The sandbox's XSD for request documents, and the rules of it that refuse (libxml2's error types): a schema fault is
# the sandbox's own prefix and then libxml2's findings as libxml2 words them, which no test here writes out.
REQUEST_SCHEMA = etree.XMLSchema(etree.parse(str(UPDATE_ORDER_STATUS_XSD)))
SCHEMA_FAULT = "The request document in argRequestData is not valid: "
ELT_1 = "SCHEMAV_CVC_ELT_1"  # no global declaration for the root element
AU = "SCHEMAV_CVC_AU"  # an attribute's value differs from the fixed one
COMPLEX_TYPE_4 = "SCHEMAV_CVC_COMPLEX_TYPE_4"  # a required attribute is missing
ENUMERATION = "SCHEMAV_CVC_ENUMERATION_VALID"  # a value outside the enumeration
CONTENT = "SCHEMAV_ELEMENT_CONTENT"  # an element missing, out of order, or not expected at all
DATATYPE = "SCHEMAV_CVC_DATATYPE_VALID_1_2_1"  # not a value of the atomic type (xs:integer)
UNION = "SCHEMAV_CVC_DATATYPE_VALID_1_2_3"  # not a value of the union type (DateOrDateTime)

SOAP11_ENVELOPE = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <ns:updateOrderStatus xmlns:ns="urn:order-gateway-sandbox:speed4trade">
      <argRequestData>{request_data}</argRequestData>
    </ns:updateOrderStatus>
  </soap:Body>
</soap:Envelope>
"""

SOAP12_ENVELOPE = """<?xml version="1.0" encoding="utf-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope">
  <env:Body>
    <ns1:updateOrderStatus xmlns:ns1="urn:order-gateway-sandbox:speed4trade">
      <argRequestData>{request_data}</argRequestData>
    </ns1:updateOrderStatus>
  </env:Body>
</env:Envelope>
"""

# The example request of the specification, as printed there.
SPEC_EXAMPLE = """<request method="updateOrderStatus" version="1.0.0">
  <order significant_key="order_number_and_prefix">
    <mandator_id>1</mandator_id>
    <order_number>100</order_number>
    <order_number_prefix>T2-</order_number_prefix>
    <status>ACKNOWLEDGED</status>
    <shipping_informations>
      <shipping_information>
        <tracking_number>32123461123</tracking_number>
        <shipping_provider_identifier>DHL</shipping_provider_identifier>
        <shipping_provider_external_id>dhl_ext</shipping_provider_external_id>
      </shipping_information>
    </shipping_informations>
    <payment_informations>
      <payment_information>
        <payment_status_id>1</payment_status_id><!-- Variant 1 -->
        <payment_status_identifier>unpaid</payment_status_identifier><!-- Variant 2 -->
      </payment_information>
    </payment_informations>
  </order>
</request>
"""


# --- building requests ---------------------------------------------------------------------------------------


def order_element(
    order_number: int = 10001,
    status: str = "FETCHED",
    information: str = "",
    mandator_id: int = 1,
    key: str = "order_number",
    keys: str | None = None,
) -> str:
    keys = f"<order_number>{order_number}</order_number>" if keys is None else keys
    return (
        f'<order significant_key="{key}"><mandator_id>{mandator_id}</mandator_id>{keys}'
        f"<status>{status}</status>{information}</order>"
    )


def request_document(*orders: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<request method="updateOrderStatus" version="1.0.0">'
        + "".join(orders)
        + "</request>"
    )


def shipping_information(tracking: str, identifier: str | None = "DHL", external_id: str | None = None) -> str:
    return (
        f"<shipping_information><tracking_number>{tracking}</tracking_number>"
        + ("" if identifier is None else f"<shipping_provider_identifier>{identifier}</shipping_provider_identifier>")
        + (
            ""
            if external_id is None
            else f"<shipping_provider_external_id>{external_id}</shipping_provider_external_id>"
        )
        + "</shipping_information>"
    )


def shipping_block(*informations: str) -> str:
    return "<shipping_informations>" + "".join(informations) + "</shipping_informations>"


def payment_information(status_id: int | None = None, identifier: str | None = None) -> str:
    return (
        "<payment_information>"
        + ("" if status_id is None else f"<payment_status_id>{status_id}</payment_status_id>")
        + ("" if identifier is None else f"<payment_status_identifier>{identifier}</payment_status_identifier>")
        + "</payment_information>"
    )


def payment_block(*informations: str) -> str:
    return "<payment_informations>" + "".join(informations) + "</payment_informations>"


def acknowledgement_block(*export_times: str) -> str:
    return (
        "<acknowledgement_informations>"
        + "".join(
            f"<acknowledgement_information><export_time>{time}</export_time></acknowledgement_information>"
            for time in export_times
        )
        + "</acknowledgement_informations>"
    )


def soap11_document(request_data: str) -> bytes:
    return SOAP11_ENVELOPE.format(request_data=escape(request_data)).encode("utf-8")


def soap12_document(request_data: str) -> bytes:
    return SOAP12_ENVELOPE.format(request_data=escape(request_data)).encode("utf-8")


def post(client, document: bytes, headers: dict | None = None, auth=AUTH):
    return client.post(SERVICE, data=document, headers=SOAP11_HEADERS if headers is None else headers, auth=auth)


# --- reading replies -----------------------------------------------------------------------------------------


def read_response_document(response, envelope_ns: str = SOAP11_NS) -> etree._Element:
    """The `<response>` document carried as text in `return` of a 200 reply."""
    assert response.status_code == 200, response.data
    expected_type = "text/xml" if envelope_ns == SOAP11_NS else "application/soap+xml"
    assert response.headers["Content-Type"] == f"{expected_type}; charset=utf-8"
    envelope = etree.fromstring(response.data)
    (return_field,) = envelope.xpath(
        "/e:Envelope/e:Body/ns:updateOrderStatusResponse/return", namespaces={"e": envelope_ns, "ns": NAMESPACE}
    )
    assert len(return_field) == 0
    document = etree.fromstring(return_field.text.encode("utf-8"))
    assert document.tag == "response"
    assert dict(document.attrib) == {"method": "updateOrderStatus", "version": "1.0.0"}
    return document


def read_reports(response, envelope_ns: str = SOAP11_NS) -> list[tuple[int, str | None]]:
    """return_code and error_description of each report, in document order."""
    document = read_response_document(response, envelope_ns)
    assert all(report.tag == "report" for report in document)
    return [(int(report.get("return_code")), report.findtext("error_description")) for report in document]


def read_soap11_fault(response, http_status: int = 500) -> tuple[str, str]:
    """faultcode and faultstring of a SOAP 1.1 fault reply."""
    assert response.status_code == http_status, response.data
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    (fault,) = etree.fromstring(response.data).xpath("/s:Envelope/s:Body/s:Fault", namespaces={"s": SOAP11_NS})
    return fault.findtext("faultcode"), fault.findtext("faultstring")


def read_soap12_fault(response, http_status: int = 500) -> tuple[str, str]:
    """Code/Value and Reason/Text of a SOAP 1.2 fault reply."""
    assert response.status_code == http_status, response.data
    assert response.headers["Content-Type"] == "application/soap+xml; charset=utf-8"
    namespaces = {"e": SOAP12_NS}
    (fault,) = etree.fromstring(response.data).xpath("/e:Envelope/e:Body/e:Fault", namespaces=namespaces)
    (text,) = fault.xpath("e:Reason/e:Text", namespaces=namespaces)
    assert text.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    return fault.findtext(f"{{{SOAP12_NS}}}Code/{{{SOAP12_NS}}}Value"), text.text


def update(client, *orders: str) -> list[tuple[int, str | None]]:
    return read_reports(post(client, soap11_document(request_document(*orders))))


def order_json(client, order_number: int) -> dict:
    response = client.get(f"/speed4trade/orders/{order_number}")
    assert response.status_code == 200
    return response.get_json()


def all_orders(client) -> list[dict]:
    return client.get("/speed4trade/orders").get_json()["orders"]


def assert_refused(client, order: str, return_code: int, description: str) -> None:
    """The order is answered with `return_code` and `description`, and no order changes."""
    before = all_orders(client)
    assert update(client, order) == [(return_code, description)]
    assert all_orders(client) == before


OK = [(0, None)]


# --- SOAP versions and the wire shape -------------------------------------------------------------------------


def test_soap11_request_is_answered_in_soap11(client):
    response = post(client, soap11_document(request_document(order_element(10001, "FETCHED"))))

    assert read_reports(response, SOAP11_NS) == OK
    envelope = etree.fromstring(response.data)
    assert envelope.tag == f"{{{SOAP11_NS}}}Envelope"
    assert envelope.nsmap == {"soap": SOAP11_NS}
    (body,) = envelope
    assert body.tag == f"{{{SOAP11_NS}}}Body"
    (operation_response,) = body
    assert operation_response.tag == f"{{{NAMESPACE}}}updateOrderStatusResponse"
    assert [child.tag for child in operation_response] == ["return"]
    assert order_json(client, 10001)["status"] == "FETCHED"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/soap+xml; charset=utf-8",
        'application/soap+xml; charset=utf-8; action="urn:order-gateway-sandbox:speed4trade#updateOrderStatus"',
        "application/soap+xml",
    ],
    ids=["plain", "with-action", "without-charset"],
)
def test_soap12_request_is_answered_in_soap12(client, content_type):
    response = post(
        client, soap12_document(request_document(order_element(10001, "FETCHED"))), {"Content-Type": content_type}
    )

    assert read_reports(response, SOAP12_NS) == OK
    envelope = etree.fromstring(response.data)
    assert envelope.tag == f"{{{SOAP12_NS}}}Envelope"
    assert envelope.nsmap == {"env": SOAP12_NS}
    assert order_json(client, 10001)["status"] == "FETCHED"


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/xml; charset=utf-8"},
        {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": ""},
        {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:somethingElse"'},
        {"Content-Type": "text/xml", "SOAPAction": "updateOrderStatus"},
    ],
    ids=["no-soap-action", "empty-soap-action", "other-soap-action", "no-charset"],
)
def test_soap11_soap_action_value_is_not_consulted(client, headers):
    response = post(client, soap11_document(request_document(order_element(10002, "PAID"))), headers)

    assert read_reports(response) == OK
    assert order_json(client, 10002)["status"] == "PAID"


@pytest.mark.parametrize(
    ("open_tag", "close_tag"),
    [
        ('<ns:argRequestData xmlns:ns="urn:order-gateway-sandbox:speed4trade">', "</ns:argRequestData>"),
        ("<ns:argRequestData>", "</ns:argRequestData>"),
        (
            '<argRequestData xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xsd:string">',
            "</argRequestData>",
        ),
    ],
    ids=["qualified-own-declaration", "qualified-operation-prefix", "with-xsi-type"],
)
def test_request_data_parameter_forms_are_accepted(client, open_tag, close_tag):
    document = soap11_document(request_document(order_element(10003, "PAID"))).decode()
    document = document.replace("<argRequestData>", open_tag).replace("</argRequestData>", close_tag)

    assert read_reports(post(client, document.encode())) == OK
    assert order_json(client, 10003)["status"] == "PAID"


def test_request_document_in_cdata_is_accepted(client):
    document = SOAP11_ENVELOPE.format(
        request_data="<![CDATA[" + request_document(order_element(10004, "PAID")) + "]]>"
    ).encode()

    assert read_reports(post(client, document)) == OK
    assert order_json(client, 10004)["status"] == "PAID"


def test_soap_header_without_must_understand_is_accepted(client):
    document = soap11_document(request_document(order_element(10001, "PAID"))).replace(
        b"<soap:Body>", b"<soap:Header><Trace xmlns='urn:example'>1</Trace></soap:Header><soap:Body>"
    )

    assert read_reports(post(client, document)) == OK


def test_non_ascii_text_of_the_request_document_is_kept(client):
    tracking = "Paket-\u00e4\u00df-\u20ac"
    order = order_element(10005, "SHIPPED", shipping_block(shipping_information(tracking, "DHL")))

    assert update(client, order) == OK
    assert order_json(client, 10005)["shipping_informations"][0]["tracking_number"] == tracking


def test_error_description_is_escaped_text_in_return(client):
    response = post(client, soap11_document(request_document(order_element(19999, "PAID"))))

    assert b"&lt;error_description&gt;" in response.data
    assert read_reports(response) == [(-1, "Order not found: no order with order_number '19999' for mandator 1.")]


# --- the specification's example ------------------------------------------------------------------------------


def test_spec_example_is_valid_and_reports_order_not_found(client):
    before = all_orders(client)

    reports = read_reports(post(client, soap11_document(SPEC_EXAMPLE)))

    assert reports == [(-1, "Order not found: no order with order_number_and_prefix 'T2-100' for mandator 1.")]
    assert all_orders(client) == before


def test_spec_example_for_a_demo_order_refuses_information_of_other_statuses(client):
    # The example sends shipping and payment information with status ACKNOWLEDGED, which the rules refuse.
    document = SPEC_EXAMPLE.replace("<order_number>100</order_number>", "<order_number>10001</order_number>")
    before = all_orders(client)

    reports = read_reports(post(client, soap12_document(document), SOAP12_HEADERS), SOAP12_NS)

    assert reports == [(-3, "Shipping information can only be transmitted together with status SHIPPED.")]
    assert all_orders(client) == before


def test_spec_example_without_foreign_information_acknowledges_the_order(client):
    document = SPEC_EXAMPLE.replace("<order_number>100</order_number>", "<order_number>10001</order_number>")
    document = document[: document.index("<shipping_informations>")] + document[document.index("</order>") :]
    document = document.replace(
        "</status>",
        "</status><acknowledgement_informations><acknowledgement_information>"
        "<export_time>2026-03-01T12:30:00+01:00</export_time>"
        "</acknowledgement_information></acknowledgement_informations>",
    )

    assert read_reports(post(client, soap11_document(document))) == OK
    order = order_json(client, 10001)
    assert (order["status"], order["erp_exported"], order["export_time"]) == (
        "ACKNOWLEDGED",
        True,
        "2026-03-01T12:30:00+01:00",
    )


# --- significant keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "keys"),
    [
        ("order_number", "<order_number>10006</order_number>"),
        ("order_number_and_prefix", "<order_number>10006</order_number><order_number_prefix>T2-</order_number_prefix>"),
        ("external_order_number_1", "<external_order_number_1>EXT1-10006</external_order_number_1>"),
        ("external_order_number_2", "<external_order_number_2>EXT2-10006</external_order_number_2>"),
        ("marketplace_order_id_1", "<marketplace_order_id_1>MP1-10006</marketplace_order_id_1>"),
        ("marketplace_order_id_2", "<marketplace_order_id_2>MP2-10006</marketplace_order_id_2>"),
        ("transaction_id_1", "<transaction_id_1>TX1-10006</transaction_id_1>"),
        ("transaction_id_2", "<transaction_id_2>TX2-10006</transaction_id_2>"),
        # Only the significant key counts; the other identifying elements are not compared.
        ("transaction_id_2", "<order_number>10001</order_number><transaction_id_2>TX2-10006</transaction_id_2>"),
        (
            "order_number",
            "<order_number>10006</order_number><order_number_prefix>X-</order_number_prefix>"
            "<external_order_number_1>EXT1-10001</external_order_number_1>",
        ),
    ],
    ids=[
        "order-number",
        "order-number-and-prefix",
        "external-1",
        "external-2",
        "marketplace-1",
        "marketplace-2",
        "transaction-1",
        "transaction-2",
        "other-keys-ignored",
        "prefix-ignored-for-order-number",
    ],
)
def test_each_significant_key_finds_its_order(client, key, keys):
    assert update(client, order_element(status="PAID", key=key, keys=keys)) == OK

    statuses = {order["order_number"]: order["status"] for order in all_orders(client)}
    assert statuses[10006] == "PAID"
    assert statuses[10001] == "NEW"


@pytest.mark.parametrize(
    ("key", "keys", "mandator_id", "value"),
    [
        ("order_number", "<order_number>19999</order_number>", 1, "19999"),
        ("order_number", "", 1, ""),
        ("order_number", "<external_order_number_1>EXT1-10001</external_order_number_1>", 1, ""),
        (
            "order_number_and_prefix",
            "<order_number>10001</order_number><order_number_prefix>X-</order_number_prefix>",
            1,
            "X-10001",
        ),
        ("order_number_and_prefix", "<order_number>10001</order_number>", 1, "10001"),
        ("order_number_and_prefix", "<order_number_prefix>T2-</order_number_prefix>", 1, "T2-"),
        ("order_number_and_prefix", "<order_number>10001</order_number><order_number_prefix/>", 1, "10001"),
        ("external_order_number_1", "<external_order_number_1>EXT1-19999</external_order_number_1>", 1, "EXT1-19999"),
        ("external_order_number_1", "<external_order_number_2>EXT1-10001</external_order_number_2>", 1, ""),
        ("external_order_number_2", "<external_order_number_2></external_order_number_2>", 1, ""),
        ("marketplace_order_id_1", "<marketplace_order_id_1>mp1-10001</marketplace_order_id_1>", 1, "mp1-10001"),
        ("transaction_id_1", "<transaction_id_1>TX2-10001</transaction_id_1>", 1, "TX2-10001"),
        # Mandator 2's order is invisible to mandator 1, and the other way round.
        ("order_number", "<order_number>20001</order_number>", 1, "20001"),
        ("transaction_id_2", "<transaction_id_2>TX2-20001</transaction_id_2>", 1, "TX2-20001"),
        ("order_number", "<order_number>10001</order_number>", 2, "10001"),
    ],
    ids=[
        "unknown-number",
        "number-missing",
        "key-element-missing",
        "prefix-of-no-such-order",
        "prefix-missing",
        "number-missing-beside-prefix",
        "prefix-empty",
        "unknown-external",
        "value-in-another-element",
        "empty-key-element",
        "case-differs",
        "value-of-another-key",
        "other-mandators-number",
        "other-mandators-transaction",
        "mandator-2-asks-for-mandator-1-order",
    ],
)
def test_order_not_found(client, key, keys, mandator_id, value):
    order = order_element(status="PAID", key=key, keys=keys, mandator_id=mandator_id)

    assert_refused(client, order, -1, f"Order not found: no order with {key} '{value}' for mandator {mandator_id}.")


def test_second_mandator_finds_its_own_order(client):
    order = order_element(
        status="PAID",
        mandator_id=2,
        key="external_order_number_1",
        keys="<external_order_number_1>EXT1-20001</external_order_number_1>",
    )

    assert update(client, order) == OK
    assert order_json(client, 20001)["status"] == "PAID"


# --- return codes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "return_code", "description"),
    [
        (order_element(19999, "PAID"), -1, "Order not found: no order with order_number '19999' for mandator 1."),
        (order_element(10009, "SHIPPED"), -2, "Order 10009 has status CANCELED and cannot be updated."),
        (order_element(10010, "SHIPPED"), -2, "Order 10010 has status REGROUPED and cannot be updated."),
        (order_element(10009, "CANCELED"), -2, "Order 10009 has status CANCELED and cannot be updated."),
        (
            order_element(10010, "ACKNOWLEDGED", acknowledgement_block("2026-02-01")),
            -2,
            "Order 10010 has status REGROUPED and cannot be updated.",
        ),
        (
            order_element(10001, "PAID", shipping_block(shipping_information("T-1"))),
            -3,
            "Shipping information can only be transmitted together with status SHIPPED.",
        ),
        (
            order_element(10001, "SHIPPED", payment_block(payment_information(1))),
            -3,
            "Payment information can only be transmitted together with status PAID.",
        ),
        (
            order_element(10001, "FETCHED", acknowledgement_block("2026-02-01T10:00:00Z")),
            -3,
            "Acknowledgement information can only be transmitted together with status ACKNOWLEDGED.",
        ),
        (
            order_element(10001, "PAID", payment_block(payment_information(1)) + acknowledgement_block("2026-02-01")),
            -3,
            "Acknowledgement information can only be transmitted together with status ACKNOWLEDGED.",
        ),
        (order_element(10001, "PAID", mandator_id=3), -4, "Unknown mandator 3."),
        (order_element(19999, "PAID", mandator_id=0), -4, "Unknown mandator 0."),
        (
            order_element(10001, "SHIPPED", shipping_block(shipping_information("T-1", identifier=None))),
            -5,
            "Shipping information needs shipping_provider_identifier or shipping_provider_external_id.",
        ),
        (
            order_element(
                10001,
                "SHIPPED",
                shipping_block(shipping_information("T-1"), shipping_information("T-2", identifier="")),
            ),
            -5,
            "Shipping information needs shipping_provider_identifier or shipping_provider_external_id.",
        ),
        (
            order_element(10001, "PAID", payment_block(payment_information(1, "unpaid"))),
            -5,
            "Payment information needs exactly one of payment_status_id and payment_status_identifier.",
        ),
        (
            order_element(10001, "PAID", payment_block(payment_information(1), payment_information())),
            -5,
            "Payment information needs exactly one of payment_status_id and payment_status_identifier.",
        ),
        # Incomplete information is refused even when the order already has the status it belongs to.
        (
            order_element(10011, "SHIPPED", shipping_block(shipping_information("T-1", identifier=None))),
            -5,
            "Shipping information needs shipping_provider_identifier or shipping_provider_external_id.",
        ),
    ],
    ids=[
        "not-found",
        "canceled",
        "regrouped",
        "canceled-to-canceled",
        "regrouped-acknowledged",
        "shipping-with-paid",
        "payment-with-shipped",
        "acknowledgement-with-fetched",
        "acknowledgement-with-paid",
        "unknown-mandator",
        "unknown-mandator-before-not-found",
        "shipping-without-provider",
        "second-shipping-with-empty-provider",
        "payment-with-both-variants",
        "payment-with-neither-variant",
        "incomplete-shipping-for-shipped-order",
    ],
)
def test_refusal_return_codes(client, order, return_code, description):
    assert_refused(client, order, return_code, description)


@pytest.mark.parametrize("status", ["FETCHED", "PAID", "SHIPPED", "CANCELED", "ACKNOWLEDGED"])
def test_each_status_can_be_set(client, status):
    assert update(client, order_element(10007, status)) == OK

    assert order_json(client, 10007)["status"] == status


def test_canceled_through_the_call_then_refuses_updates(client):
    assert update(client, order_element(10007, "CANCELED")) == OK

    assert_refused(client, order_element(10007, "PAID"), -2, "Order 10007 has status CANCELED and cannot be updated.")


# --- information blocks -----------------------------------------------------------------------------------------


def test_shipping_information_is_stored_only_with_the_change_to_shipped(client):
    first = shipping_block(
        shipping_information("TRACK-1", "DHL"),
        shipping_information("TRACK-2", identifier=None, external_id="dhl_ext"),
    )
    assert update(client, order_element(10001, "SHIPPED", first)) == OK
    expected = [
        {"tracking_number": "TRACK-1", "shipping_provider_identifier": "DHL", "shipping_provider_external_id": None},
        {
            "tracking_number": "TRACK-2",
            "shipping_provider_identifier": None,
            "shipping_provider_external_id": "dhl_ext",
        },
    ]
    assert order_json(client, 10001)["shipping_informations"] == expected

    # A second SHIPPED is no status change: its shipping information is ignored.
    assert update(client, order_element(10001, "SHIPPED", shipping_block(shipping_information("TRACK-3")))) == OK

    order = order_json(client, 10001)
    assert order["status"] == "SHIPPED"
    assert order["shipping_informations"] == expected


def test_shipping_information_is_appended_to_earlier_packages(client):
    assert update(client, order_element(10011, "FETCHED")) == OK
    assert order_json(client, 10011)["shipping_informations"][0]["tracking_number"] == "TRACK-OLD"

    new_package = shipping_block(shipping_information("TRACK-NEW", "UPS", "ups_ext"))
    assert update(client, order_element(10011, "SHIPPED", new_package)) == OK

    assert order_json(client, 10011)["shipping_informations"] == [
        {"tracking_number": "TRACK-OLD", "shipping_provider_identifier": "DHL", "shipping_provider_external_id": None},
        {
            "tracking_number": "TRACK-NEW",
            "shipping_provider_identifier": "UPS",
            "shipping_provider_external_id": "ups_ext",
        },
    ]


def test_payment_information_is_stored_with_the_change_to_paid(client):
    payments = payment_block(payment_information(status_id=1), payment_information(identifier="paid"))

    assert update(client, order_element(10002, "PAID", payments)) == OK

    order = order_json(client, 10002)
    assert order["status"] == "PAID"
    assert order["payment_informations"] == [
        {"payment_status_id": 1, "payment_status_identifier": None},
        {"payment_status_id": None, "payment_status_identifier": "paid"},
    ]
    assert order["shipping_informations"] == []


@pytest.mark.parametrize(
    ("order_number", "status", "information", "field", "kept"),
    [
        (
            10011,
            "SHIPPED",
            shipping_block(shipping_information("TRACK-IGNORED")),
            "shipping_informations",
            [
                {
                    "tracking_number": "TRACK-OLD",
                    "shipping_provider_identifier": "DHL",
                    "shipping_provider_external_id": None,
                }
            ],
        ),
        (
            10012,
            "PAID",
            payment_block(payment_information(identifier="paid")),
            "payment_informations",
            [{"payment_status_id": 2, "payment_status_identifier": None}],
        ),
        (
            10013,
            "ACKNOWLEDGED",
            acknowledgement_block("2026-06-01T08:00:00Z"),
            "export_time",
            "2026-01-01T00:00:00+00:00",
        ),
        (10013, "ACKNOWLEDGED", "", "export_time", "2026-01-01T00:00:00+00:00"),
    ],
    ids=["shipped", "paid", "acknowledged", "acknowledged-without-export-time"],
)
def test_information_for_a_status_the_order_already_has_is_ignored(
    client, order_number, status, information, field, kept
):
    before = order_json(client, order_number)
    assert (before["status"], before[field]) == (status, kept)

    assert update(client, order_element(order_number, status, information)) == OK

    assert order_json(client, order_number) == before


@pytest.mark.parametrize(
    "export_time",
    ["2026-03-01T12:30:00+01:00", "2026-03-01T12:30:00Z", "2026-03-01T12:30:00", "2026-03-01"],
    ids=["datetime-offset", "datetime-utc", "datetime-local", "date"],
)
def test_acknowledgement_with_export_time_sets_the_erp_flag(client, export_time):
    assert update(client, order_element(10003, "ACKNOWLEDGED", acknowledgement_block(export_time))) == OK

    order = order_json(client, 10003)
    assert (order["status"], order["erp_exported"], order["export_time"]) == ("ACKNOWLEDGED", True, export_time)


def test_acknowledgement_without_export_time_stamps_now(client):
    assert order_json(client, 10003)["erp_exported"] is False
    before = datetime.now(UTC).replace(microsecond=0)

    assert update(client, order_element(10003, "ACKNOWLEDGED")) == OK

    after = datetime.now(UTC)
    order = order_json(client, 10003)
    assert (order["status"], order["erp_exported"]) == ("ACKNOWLEDGED", True)
    assert order["export_time"].endswith("+00:00")
    assert before <= datetime.fromisoformat(order["export_time"]) <= after + timedelta(seconds=1)


def test_last_of_several_export_times_counts(client):
    block = acknowledgement_block("2026-03-01T10:00:00Z", "2026-03-02T11:00:00Z")

    assert update(client, order_element(10003, "ACKNOWLEDGED", block)) == OK

    assert order_json(client, 10003)["export_time"] == "2026-03-02T11:00:00Z"


def test_status_change_keeps_the_erp_flag(client):
    assert update(client, order_element(10013, "SHIPPED", shipping_block(shipping_information("T-9")))) == OK

    order = order_json(client, 10013)
    assert (order["status"], order["erp_exported"], order["export_time"]) == (
        "SHIPPED",
        True,
        "2026-01-01T00:00:00+00:00",
    )


# --- several orders in one request -------------------------------------------------------------------------------


def test_request_without_orders_is_answered_without_reports(client):
    before = all_orders(client)
    response = post(client, soap11_document(request_document()))

    document = read_response_document(response)

    assert len(document) == 0
    assert all_orders(client) == before


def test_three_orders_are_reported_in_request_order(client):
    before = {order["order_number"]: order for order in all_orders(client)}
    orders = (
        order_element(10004, "PAID", payment_block(payment_information(3))),
        order_element(10005, "SHIPPED", shipping_block(shipping_information("T-5", identifier=None))),
        order_element(10006, "SHIPPED", shipping_block(shipping_information("T-6", "DPD"))),
    )

    reports = update(client, *orders)

    assert reports == [
        (0, None),
        (-5, "Shipping information needs shipping_provider_identifier or shipping_provider_external_id."),
        (0, None),
    ]
    after = {order["order_number"]: order for order in all_orders(client)}
    assert after[10005] == before[10005]
    assert (after[10004]["status"], after[10004]["payment_informations"]) == (
        "PAID",
        [{"payment_status_id": 3, "payment_status_identifier": None}],
    )
    assert (after[10006]["status"], after[10006]["shipping_informations"][0]["tracking_number"]) == ("SHIPPED", "T-6")
    changed = {number for number in after if after[number] != before[number]}
    assert changed == {10004, 10006}


def test_mixed_outcomes_each_get_their_own_report(client):
    orders = (
        order_element(10009, "PAID"),
        order_element(19999, "PAID"),
        order_element(10001, "ACKNOWLEDGED", acknowledgement_block("2026-04-01")),
        order_element(10001, "PAID", mandator_id=7),
    )

    assert update(client, *orders) == [
        (-2, "Order 10009 has status CANCELED and cannot be updated."),
        (-1, "Order not found: no order with order_number '19999' for mandator 1."),
        (0, None),
        (-4, "Unknown mandator 7."),
    ]
    assert order_json(client, 10001)["export_time"] == "2026-04-01"


def test_one_order_twice_in_a_request_is_updated_in_sequence(client):
    orders = (
        order_element(10008, "SHIPPED", shipping_block(shipping_information("FIRST"))),
        order_element(10008, "SHIPPED", shipping_block(shipping_information("SECOND"))),
        order_element(10008, "PAID", payment_block(payment_information(5))),
    )

    assert update(client, *orders) == [(0, None)] * 3

    order = order_json(client, 10008)
    assert order["status"] == "PAID"
    assert [shipping["tracking_number"] for shipping in order["shipping_informations"]] == ["FIRST"]
    assert order["payment_informations"] == [{"payment_status_id": 5, "payment_status_identifier": None}]


def test_concurrent_shipments_of_one_order_store_one_package(app):
    results = []
    start = threading.Barrier(5)

    def ship(tracking):
        client = app.test_client()
        start.wait()
        order = order_element(10001, "SHIPPED", shipping_block(shipping_information(tracking)))
        results.append(update(client, order))

    threads = [threading.Thread(target=ship, args=(f"T-{n}",)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [OK] * 5
    assert len(order_json(app.test_client(), 10001)["shipping_informations"]) == 1


# --- authentication ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "headers"),
    [
        (None, SOAP11_HEADERS),
        (("connect-demo", "wrong-password"), SOAP11_HEADERS),
        (("someone", "connect-password"), SOAP11_HEADERS),
        (("connect-demo", ""), SOAP11_HEADERS),
        (None, {**SOAP11_HEADERS, "Authorization": "Bearer connect-password"}),
        (None, {**SOAP11_HEADERS, "Authorization": "Basic not-base64!"}),
        (("connect-demo", "wrong-password"), {"Content-Type": "application/json"}),
    ],
    ids=["missing", "wrong-password", "wrong-user", "empty-password", "bearer", "garbled", "before-content-type"],
)
def test_missing_or_wrong_credentials_are_refused_with_401(client, auth, headers):
    response = post(client, soap11_document(request_document(order_element(10001, "PAID"))), headers, auth)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Speed4Trade CONNECT sandbox"'
    assert b"connect-password" not in response.data
    assert order_json(client, 10001)["status"] == "NEW"


# --- faults ------------------------------------------------------------------------------------------------------


def test_soap11_fault_shape(client):
    response = post(client, soap11_document("not xml"))

    envelope = etree.fromstring(response.data)
    assert envelope.nsmap == {"soap": SOAP11_NS}
    (fault,) = envelope.xpath("/soap:Envelope/soap:Body/soap:Fault", namespaces={"soap": SOAP11_NS})
    assert [child.tag for child in fault] == ["faultcode", "faultstring"]
    assert read_soap11_fault(response)[0] == "soap:Client"


def test_soap12_fault_shape(client):
    response = post(client, soap12_document("not xml"), SOAP12_HEADERS)

    envelope = etree.fromstring(response.data)
    assert envelope.nsmap == {"env": SOAP12_NS}
    (fault,) = envelope.xpath("/env:Envelope/env:Body/env:Fault", namespaces={"env": SOAP12_NS})
    assert [child.tag for child in fault] == [f"{{{SOAP12_NS}}}Code", f"{{{SOAP12_NS}}}Reason"]
    code, text = read_soap12_fault(response)
    assert code == "env:Sender"
    assert text.startswith("The request document in argRequestData was refused. The request is not well-formed XML")


@pytest.mark.parametrize(
    ("open_tag", "close_tag", "procedure"),
    [
        (
            '<ns:updateOrders xmlns:ns="urn:order-gateway-sandbox:speed4trade">',
            "</ns:updateOrders>",
            "Procedure 'updateOrders' in namespace 'urn:order-gateway-sandbox:speed4trade'",
        ),
        (
            '<ns:updateOrderStatus xmlns:ns="urn:other">',
            "</ns:updateOrderStatus>",
            "Procedure 'updateOrderStatus' in namespace 'urn:other'",
        ),
        ("<updateOrderStatus>", "</updateOrderStatus>", "Procedure 'updateOrderStatus' in namespace ''"),
    ],
    ids=["other-operation", "other-namespace", "no-namespace"],
)
def test_unknown_operation_fault(client, open_tag, close_tag, procedure):
    document = soap11_document(request_document(order_element(10001, "PAID"))).decode()
    document = document.replace('<ns:updateOrderStatus xmlns:ns="urn:order-gateway-sandbox:speed4trade">', open_tag)
    document = document.replace("</ns:updateOrderStatus>", close_tag)

    fault = read_soap11_fault(post(client, document.encode()))

    assert fault == (
        "soap:Client",
        f"{procedure} not present: this service offers updateOrderStatus in namespace "
        "'urn:order-gateway-sandbox:speed4trade'.",
    )
    assert order_json(client, 10001)["status"] == "NEW"


def test_unknown_operation_fault_in_soap12(client):
    document = soap12_document(request_document(order_element(10001, "PAID"))).replace(
        b"updateOrderStatus", b"fetchOrders"
    )

    code, text = read_soap12_fault(post(client, document, SOAP12_HEADERS))

    assert code == "env:Sender"
    assert text == (
        "Procedure 'fetchOrders' in namespace 'urn:order-gateway-sandbox:speed4trade' not present: "
        "this service offers updateOrderStatus in namespace 'urn:order-gateway-sandbox:speed4trade'."
    )


@pytest.mark.parametrize(
    ("parameters", "text"),
    [
        ("", "updateOrderStatus needs exactly one argRequestData parameter."),
        ("<argRequestData/>", "argRequestData is empty; it must carry the request document."),
        ("<argRequestData>  \n </argRequestData>", "argRequestData is empty; it must carry the request document."),
        (
            "<argRequestData>" + request_document().split("\n", 1)[1] + "</argRequestData>",
            "argRequestData must carry the request document as escaped text, not as XML elements.",
        ),
        (
            "<argRequestData>a</argRequestData><argRequestData>b</argRequestData>",
            "updateOrderStatus needs exactly one argRequestData parameter.",
        ),
        (
            "<requestData>" + escape(request_document()) + "</requestData>",
            "updateOrderStatus takes one parameter, argRequestData; 'requestData' is not expected.",
        ),
        (
            "<ns:argRequestData xmlns:ns='urn:other'>" + escape(request_document()) + "</ns:argRequestData>",
            "updateOrderStatus takes one parameter, argRequestData; 'argRequestData' is not expected.",
        ),
    ],
    ids=[
        "missing",
        "empty-element",
        "whitespace-only",
        "unescaped-document",
        "twice",
        "other-parameter-name",
        "parameter-in-other-namespace",
    ],
)
def test_request_data_parameter_fault(client, parameters, text):
    document = SOAP11_ENVELOPE.replace("<argRequestData>{request_data}</argRequestData>", parameters)

    assert read_soap11_fault(post(client, document.encode())) == ("soap:Client", text)


@pytest.mark.parametrize(
    ("document", "text"),
    [
        (b"", "Bad Request. The request is not well-formed XML"),
        (b"not xml at all", "Bad Request. The request is not well-formed XML"),
        (
            b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body>",
            "Bad Request. The request is not well-formed XML",
        ),
        (b"<updateOrderStatus xmlns='urn:order-gateway-sandbox:speed4trade'/>", "Bad Request. The root element"),
        (
            b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'/>",
            "Bad Request. The Envelope must hold one Body.",
        ),
        (
            b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body/></soap:Envelope>",
            "Bad Request. The Body must hold exactly one operation element.",
        ),
        (
            b"<!DOCTYPE soap:Envelope [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"
            b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body>&xxe;</soap:Body>"
            b"</soap:Envelope>",
            "Bad Request. A document type declaration (DOCTYPE) is not allowed",
        ),
    ],
    ids=["empty", "text", "unclosed", "not-an-envelope", "no-body", "empty-body", "doctype-in-envelope"],
)
def test_malformed_envelope_fault(client, document, text):
    faultcode, faultstring = read_soap11_fault(post(client, document))

    assert faultcode == "soap:Client"
    assert faultstring.startswith(text)


def test_soap12_envelope_sent_as_soap11_is_a_version_mismatch(client):
    document = soap12_document(request_document(order_element(10001, "PAID")))

    faultcode, faultstring = read_soap11_fault(post(client, document))

    assert faultcode == "soap:VersionMismatch"
    assert SOAP12_NS in faultstring
    assert order_json(client, 10001)["status"] == "NEW"


def test_soap11_envelope_sent_as_soap12_is_a_version_mismatch(client):
    document = soap11_document(request_document(order_element(10001, "PAID")))

    code, text = read_soap12_fault(post(client, document, SOAP12_HEADERS))

    assert code == "env:VersionMismatch"
    assert SOAP11_NS in text


@pytest.mark.parametrize(
    ("document", "headers", "read_fault", "expected"),
    [
        (
            soap11_document(request_document(order_element(10001, "PAID"))).replace(
                b"<soap:Body>",
                b"<soap:Header><Security soap:mustUnderstand='1' xmlns='urn:example'/></soap:Header><soap:Body>",
            ),
            SOAP11_HEADERS,
            read_soap11_fault,
            ("soap:MustUnderstand", "Header 'Security' was not understood."),
        ),
        (
            soap12_document(request_document(order_element(10001, "PAID"))).replace(
                b"<env:Body>",
                b"<env:Header><Security env:mustUnderstand='true' xmlns='urn:example'/></env:Header><env:Body>",
            ),
            SOAP12_HEADERS,
            read_soap12_fault,
            ("env:MustUnderstand", "Header 'Security' was not understood."),
        ),
    ],
    ids=["soap11", "soap12"],
)
def test_must_understand_header_fault(client, document, headers, read_fault, expected):
    assert read_fault(post(client, document, headers)) == expected
    assert order_json(client, 10001)["status"] == "NEW"


@pytest.mark.parametrize(
    "request_data",
    [
        "<request method='updateOrderStatus' version='1.0.0'>",
        "<request method='updateOrderStatus' version='1.0.0'><order></request>",
        "request",
        "<?xml version='1.0'?><request/><request/>",
    ],
    ids=["unclosed", "mismatched-tag", "text", "two-roots"],
)
def test_malformed_request_document_fault(client, request_data):
    faultcode, faultstring = read_soap11_fault(post(client, soap11_document(request_data)))

    assert faultcode == "soap:Client"
    assert faultstring.startswith(
        "The request document in argRequestData was refused. The request is not well-formed XML: "
    )


@pytest.mark.parametrize(
    ("doctype", "tracking"),
    [
        (
            '<!DOCTYPE request [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>',
            "&lol3;",
        ),
        ('<!DOCTYPE request [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"),
        ("<!DOCTYPE request>", "T-1"),
    ],
    ids=["entity-bomb", "external-entity", "bare-doctype"],
)
def test_doctype_in_request_document_is_refused(client, doctype, tracking):
    document = request_document(order_element(10001, "SHIPPED", shipping_block(shipping_information(tracking))))
    document = document.replace("?>\n", "?>\n" + doctype + "\n", 1)
    assert doctype in document

    faultcode, faultstring = read_soap11_fault(post(client, soap11_document(document)))

    assert faultcode == "soap:Client"
    assert faultstring == (
        "The request document in argRequestData was refused. "
        "A document type declaration (DOCTYPE) is not allowed in a SOAP message."
    )
    assert order_json(client, 10001)["shipping_informations"] == []


@pytest.mark.parametrize(
    ("request_data", "refused"),
    [
        (request_document().replace('method="updateOrderStatus"', 'method="updateOrders"'), ("request", AU)),
        (request_document().replace(' version="1.0.0"', ""), ("request", COMPLEX_TYPE_4)),
        (request_document().replace('version="1.0.0"', 'version="1"'), ("request", AU)),
        ("<response method='updateOrderStatus' version='1.0.0'/>", ("response", ELT_1)),
        (
            "<request xmlns='urn:order-gateway-sandbox:speed4trade' method='updateOrderStatus' version='1.0.0'/>",
            ("request", ELT_1),
        ),
        (request_document(order_element(key="order_id")), ("order", ENUMERATION)),
        (request_document(order_element().replace(' significant_key="order_number"', "")), ("order", COMPLEX_TYPE_4)),
        (request_document(order_element(status="NEW")), ("status", ENUMERATION)),
        (request_document(order_element(status="shipped")), ("status", ENUMERATION)),
        (request_document(order_element(status="")), ("status", ENUMERATION)),
        (request_document(order_element().replace("<status>FETCHED</status>", "")), ("order", CONTENT)),
        (request_document(order_element().replace("<mandator_id>1</mandator_id>", "")), ("order_number", CONTENT)),
        (request_document(order_element().replace("<mandator_id>1<", "<mandator_id>one<")), ("mandator_id", DATATYPE)),
        (request_document(order_element(keys="<order_number>T2-10001</order_number>")), ("order_number", DATATYPE)),
        (request_document(order_element(keys="<order_number/>")), ("order_number", DATATYPE)),
        (
            request_document(
                order_element(keys="<order_number_prefix>T2-</order_number_prefix><order_number>10001</order_number>")
            ),
            ("order_number", CONTENT),
        ),
        (
            request_document(
                order_element(keys="<transaction_id_1>TX1-10001</transaction_id_1><order_number>10001</order_number>")
            ),
            ("order_number", CONTENT),
        ),
        (request_document(order_element(keys="<order_id>10001</order_id>")), ("order_id", CONTENT)),
        (
            request_document(
                order_element(
                    status="SHIPPED",
                    information=payment_block(payment_information(1)) + shipping_block(shipping_information("T-1")),
                )
            ),
            ("shipping_informations", CONTENT),
        ),
        (
            request_document(order_element(status="SHIPPED", information="<shipping_informations/>")),
            ("shipping_informations", CONTENT),
        ),
        (
            request_document(
                order_element(
                    status="SHIPPED",
                    information="<shipping_informations><shipping_information><shipping_provider_identifier>DHL"
                    "</shipping_provider_identifier></shipping_information></shipping_informations>",
                )
            ),
            ("shipping_provider_identifier", CONTENT),
        ),
        (
            request_document(
                order_element(
                    status="SHIPPED",
                    information="<shipping_informations><shipping_information><tracking_number>T</tracking_number>"
                    "<shipping_date>2026-01-01</shipping_date></shipping_information></shipping_informations>",
                )
            ),
            ("shipping_date", CONTENT),
        ),
        (
            request_document(
                order_element(
                    status="PAID",
                    information="<payment_informations><payment_information>"
                    "<payment_status_identifier>x</payment_status_identifier><payment_status_id>1</payment_status_id>"
                    "</payment_information></payment_informations>",
                )
            ),
            ("payment_status_id", CONTENT),
        ),
        (
            request_document(
                order_element(status="PAID", information=payment_block(payment_information(1)).replace(">1<", ">paid<"))
            ),
            ("payment_status_id", DATATYPE),
        ),
        (
            request_document(order_element(status="ACKNOWLEDGED", information=acknowledgement_block("01.03.2026"))),
            ("export_time", UNION),
        ),
        (
            request_document(order_element(status="ACKNOWLEDGED", information=acknowledgement_block("2026-13-01"))),
            ("export_time", UNION),
        ),
        (
            request_document(order_element(status="ACKNOWLEDGED", information=acknowledgement_block(""))),
            ("export_time", UNION),
        ),
        (
            request_document(order_element(status="ACKNOWLEDGED", information="<acknowledgement_informations/>")),
            ("acknowledgement_informations", CONTENT),
        ),
        (request_document("<order_list/>"), ("order_list", CONTENT)),
    ],
    ids=[
        "wrong-method",
        "version-missing",
        "wrong-version",
        "wrong-root",
        "root-in-a-namespace",
        "unknown-significant-key",
        "significant-key-missing",
        "status-new",
        "status-lower-case",
        "status-empty",
        "status-missing",
        "mandator-missing",
        "mandator-not-integer",
        "order-number-not-integer",
        "order-number-empty",
        "prefix-before-number",
        "transaction-before-number",
        "unknown-key-element",
        "payment-before-shipping",
        "shipping-informations-empty",
        "tracking-number-missing",
        "unknown-shipping-element",
        "payment-variants-out-of-order",
        "payment-status-id-not-integer",
        "export-time-german-date",
        "export-time-month-13",
        "export-time-empty",
        "acknowledgement-informations-empty",
        "unknown-element-in-request",
    ],
)
def test_schema_invalid_request_document_fault(client, request_data, refused):
    before = all_orders(client)

    faultcode, faultstring = read_soap11_fault(post(client, soap11_document(request_data)))

    assert faultcode == "soap:Client"
    refusals = xsd_refusals(REQUEST_SCHEMA, etree.fromstring(request_data.encode()))
    assert [(refusal.element, refusal.check) for refusal in refusals] == [refused]
    assert faultstring == SCHEMA_FAULT + " ".join(refusal.message for refusal in refusals)
    assert all_orders(client) == before


def test_schema_fault_in_soap12(client):
    request_data = request_document(order_element(status="DELIVERED"))

    code, text = read_soap12_fault(post(client, soap12_document(request_data), SOAP12_HEADERS))

    assert code == "env:Sender"
    refusals = xsd_refusals(REQUEST_SCHEMA, etree.fromstring(request_data.encode()))
    assert [(refusal.element, refusal.check) for refusal in refusals] == [("status", ENUMERATION)]
    assert text == SCHEMA_FAULT + " ".join(refusal.message for refusal in refusals)


@pytest.mark.parametrize(
    ("content_type", "read_fault", "expected_code", "named"),
    [
        ("application/json", read_soap11_fault, "soap:Client", "application/json"),
        ("text/plain; charset=utf-8", read_soap11_fault, "soap:Client", "text/plain"),
        ("application/xml", read_soap11_fault, "soap:Client", "application/xml"),
        ("text/xml; charset=iso-8859-1", read_soap11_fault, "soap:Client", "iso-8859-1"),
        ("application/soap+xml; charset=iso-8859-1", read_soap12_fault, "env:Sender", "iso-8859-1"),
    ],
    ids=["json", "plain-text", "application-xml", "soap11-latin1", "soap12-latin1"],
)
def test_wrong_content_type_is_refused_with_415(client, content_type, read_fault, expected_code, named):
    document = soap11_document(request_document(order_element(10001, "PAID")))

    code, text = read_fault(post(client, document, {"Content-Type": content_type}), 415)

    assert code == expected_code
    assert named in text
    assert order_json(client, 10001)["status"] == "NEW"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_service_path_takes_only_post(client, method):
    response = client.open(SERVICE, method=method, auth=AUTH)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# --- JSON view, reset, configuration -----------------------------------------------------------------------------


def test_order_list_holds_the_demo_data(client):
    orders = all_orders(client)

    assert [(order["order_number"], order["mandator_id"], order["status"]) for order in orders] == [
        *[(number, 1, "NEW") for number in range(10001, 10009)],
        (10009, 1, "CANCELED"),
        (10010, 1, "REGROUPED"),
        (10011, 1, "SHIPPED"),
        (10012, 1, "PAID"),
        (10013, 1, "ACKNOWLEDGED"),
        (20001, 2, "NEW"),
    ]
    for order in orders:
        number = order["order_number"]
        assert (
            order["order_number_prefix"],
            order["external_order_number_1"],
            order["external_order_number_2"],
            order["marketplace_order_id_1"],
            order["marketplace_order_id_2"],
            order["transaction_id_1"],
            order["transaction_id_2"],
        ) == (
            "T2-",
            f"EXT1-{number}",
            f"EXT2-{number}",
            f"MP1-{number}",
            f"MP2-{number}",
            f"TX1-{number}",
            f"TX2-{number}",
        )
    by_number = {order["order_number"]: order for order in orders}
    assert by_number[10011]["shipping_informations"] == [
        {"tracking_number": "TRACK-OLD", "shipping_provider_identifier": "DHL", "shipping_provider_external_id": None}
    ]
    assert by_number[10012]["payment_informations"] == [{"payment_status_id": 2, "payment_status_identifier": None}]
    assert (by_number[10013]["erp_exported"], by_number[10013]["export_time"]) == (True, "2026-01-01T00:00:00+00:00")
    assert [number for number, order in by_number.items() if order["erp_exported"]] == [10013]


def test_one_order_has_every_field(client):
    assert order_json(client, 10001) == {
        "mandator_id": 1,
        "order_number": 10001,
        "order_number_prefix": "T2-",
        "external_order_number_1": "EXT1-10001",
        "external_order_number_2": "EXT2-10001",
        "marketplace_order_id_1": "MP1-10001",
        "marketplace_order_id_2": "MP2-10001",
        "transaction_id_1": "TX1-10001",
        "transaction_id_2": "TX2-10001",
        "status": "NEW",
        "erp_exported": False,
        "export_time": None,
        "shipping_informations": [],
        "payment_informations": [],
    }


def test_unknown_order_is_a_json_404(client):
    response = client.get("/speed4trade/orders/19999")

    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.get_json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "No order with order number 19999.",
    }


def test_reset_reloads_the_data_file(client):
    pristine = all_orders(client)
    assert update(client, order_element(10001, "SHIPPED", shipping_block(shipping_information("T-1")))) == OK
    assert update(client, order_element(10002, "ACKNOWLEDGED")) == OK
    assert all_orders(client) != pristine

    response = client.post("/speed4trade/_reset")

    assert response.status_code == 204
    assert all_orders(client) == pristine


def test_ongoing_sandbox_is_still_served(client):
    response = client.get("/ongoing/orders/1001")

    assert response.status_code == 200
    assert response.get_json()["order_number"] == "SO-1001"


def test_configured_service_path_namespace_and_data_file(tmp_path):
    data_file = tmp_path / "speed4trade.json"
    data_file.write_text(
        '{"credentials": {"user": "u", "password": "p"},'
        ' "mandators": [{"mandator_id": 5, "name": "Shop"}],'
        ' "orders": [{"mandator_id": 5, "order_number": 7, "status": "NEW"}]}',
        encoding="utf-8",
    )
    client = create_app(
        {
            "SPEED4TRADE_DATA": str(data_file),
            "SPEED4TRADE_SERVICE_PATH": "/connect/soap",
            "SPEED4TRADE_NAMESPACE": "urn:example:connect",
        }
    ).test_client()
    document = soap11_document(request_document(order_element(7, "PAID", mandator_id=5))).replace(
        NAMESPACE.encode(), b"urn:example:connect"
    )

    response = client.post("/connect/soap", data=document, headers=SOAP11_HEADERS, auth=("u", "p"))

    document_reply = etree.fromstring(response.data)
    (return_field,) = document_reply.xpath(
        "//ns:updateOrderStatusResponse/return", namespaces={"ns": "urn:example:connect"}
    )
    assert etree.fromstring(return_field.text.encode())[0].get("return_code") == "0"
    assert client.get("/speed4trade/orders/7").get_json()["status"] == "PAID"
    assert client.post(SERVICE, data=document, headers=SOAP11_HEADERS, auth=("u", "p")).status_code == 404
    old_namespace = soap11_document(request_document(order_element(7, "PAID", mandator_id=5)))
    faultcode, faultstring = read_soap11_fault(
        client.post("/connect/soap", data=old_namespace, headers=SOAP11_HEADERS, auth=("u", "p"))
    )
    assert faultcode == "soap:Client"
    assert "urn:example:connect" in faultstring
