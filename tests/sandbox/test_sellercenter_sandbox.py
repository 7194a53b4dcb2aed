"""The SellerCenter sandbox answers UpdateOrderInformation as the vendor's spec says, for calls signed here."""

import hashlib
import hmac
import json
import string
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sandbox import create_app
from sandbox.sellercenter.signing import build_string_to_sign, compute_signature

SERVICE = "/sellercenter/oms-api/"
API_KEY = "sandbox-sellercenter-api-key"
ACTION = "UpdateOrderInformation"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_TEXT = "2026-03-01T12:00:00+00:00"

ADDRESS_FIELDS = [
    "first_name",
    "last_name",
    "phone",
    "phone2",
    "address1",
    "address2",
    "address3",
    "address4",
    "address5",
    "city",
    "postcode",
    "country",
]
PENDING_ORDERS = list(range(300001, 300009))
NOT_PENDING_ORDERS = {300009: "ready_to_ship", 300010: "shipped", 300011: "canceled", 300012: "delivered"}

# The official test vector of the signing rule.
VECTOR_API_KEY = "b1bdb357ced10fe4e9a69840cdd4f0e9c03d77fe"
VECTOR_PARAMETERS = {
    "Action": "FeedList",
    "Format": "XML",
    "Timestamp": "2015-07-01T11:11:11+00:00",
    "UserID": "look@me.com",
    "Version": "1.0",
}
VECTOR_STRING_TO_SIGN = (
    "Action=FeedList&Format=XML&Timestamp=2015-07-01T11%3A11%3A11%2B00%3A00&UserID=look%40me.com&Version=1.0"
)
VECTOR_SIGNATURE = "3ceb8ed91049dfc718b0d2d176fb2ed0e5fd74f76c5971f34cdab48412476041"


# --- signing, written here from the vendor's rule -----------------------------------------------------------------

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def rfc3986(text: str) -> str:
    """Percent-encode every UTF-8 byte of `text` that is not an RFC 3986 unreserved character."""
    return "".join(chr(byte) if chr(byte) in UNRESERVED else f"%{byte:02X}" for byte in text.encode("utf-8"))


def string_to_sign(parameters: dict[str, str]) -> str:
    return "&".join(
        f"{rfc3986(name)}={rfc3986(value)}" for name, value in sorted(parameters.items()) if name != "Signature"
    )


def sign(parameters: dict[str, str], api_key: str = API_KEY) -> str:
    return hmac.new(api_key.encode(), string_to_sign(parameters).encode(), hashlib.sha256).hexdigest()


def call_parameters(timestamp: str = NOW_TEXT, **extra: str) -> dict[str, str]:
    return {"Action": ACTION, "ServiceName": "OMS", "Timestamp": timestamp, "Version": "1.0", **extra}


def signed(parameters: dict[str, str], api_key: str = API_KEY) -> dict[str, str]:
    return {**parameters, "Signature": sign(parameters, api_key)}


def query_string(parameters: dict[str, str]) -> str:
    return "&".join(f"{rfc3986(name)}={rfc3986(value)}" for name, value in parameters.items())


def request_body(*orders: dict) -> dict:
    return {"Request": {"Orders": list(orders)}}


def post(client, parameters: dict[str, str], body: bytes | dict):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return client.post(
        f"{SERVICE}?{query_string(parameters)}",
        data=data,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
    )


def update(client, *orders: dict, parameters: dict[str, str] | None = None):
    return post(client, signed(call_parameters()) if parameters is None else parameters, request_body(*orders))


def read_reply(response, http_status: int = 200) -> dict:
    assert response.status_code == http_status, response.data
    assert response.content_type == "application/json"
    return json.loads(response.data)


def success_document(timestamp: str = "2026-03-01T12:00:00+0000") -> dict:
    return {
        "SuccessResponse": {
            "Head": {"RequestId": "", "RequestAction": ACTION, "ResponseType": "", "Timestamp": timestamp},
            "Body": [],
        }
    }


def item_errors_document(*items: tuple[int, str]) -> dict:
    return {
        "ErrorResponse": {
            "Head": {
                "RequestAction": ACTION,
                "ErrorType": "Sender",
                "ErrorCode": "0",
                "ErrorMessage": "Some elements were not processed",
            },
            "Body": {
                ACTION: [
                    {"ErrorCode": None, "ErrorMessage": message, "Position": position} for position, message in items
                ]
            },
        }
    }


def call_error_document(code: str, message: str, error_type: str = "Sender", action: str = ACTION) -> dict:
    return {
        "ErrorResponse": {
            "Head": {"RequestAction": action, "ErrorType": error_type, "ErrorCode": code, "ErrorMessage": message},
            "Body": "",
        }
    }


def not_pending_message(id_sales_order: int) -> str:
    return (
        f"Address information cannot be changed since order with src_id: SRC-{id_sales_order} is not in pending status"
    )


def order_json(client, id_sales_order: int) -> dict:
    response = client.get(f"/sellercenter/orders/{id_sales_order}")
    assert response.status_code == 200
    return response.get_json()


def all_orders(client) -> list[dict]:
    return client.get("/sellercenter/orders").get_json()["orders"]


class FixedClock:
    """A clock that says what it is told; tests move it by setting `now`."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return FixedClock(NOW)


@pytest.fixture
def app(clock):
    return create_app({"TESTING": True, "SELLERCENTER_CLOCK": clock})


@pytest.fixture
def client(app):
    return app.test_client()


# --- the signing rule ---------------------------------------------------------------------------------------------


def test_signing_helper_reproduces_the_official_test_vector():
    assert string_to_sign(VECTOR_PARAMETERS) == VECTOR_STRING_TO_SIGN
    assert sign(VECTOR_PARAMETERS, VECTOR_API_KEY) == VECTOR_SIGNATURE
    assert sign({**VECTOR_PARAMETERS, "Signature": "ignored"}, VECTOR_API_KEY) == VECTOR_SIGNATURE


def test_sandbox_signing_reproduces_the_official_test_vector():
    assert build_string_to_sign(VECTOR_PARAMETERS) == VECTOR_STRING_TO_SIGN
    assert compute_signature(VECTOR_STRING_TO_SIGN, VECTOR_API_KEY) == VECTOR_SIGNATURE


def test_signing_helper_encodes_per_rfc3986():
    assert rfc3986("a b~c+d@e/f") == "a%20b~c%2Bd%40e%2Ff"
    assert rfc3986("Köln") == "K%C3%B6ln"


# --- updates ------------------------------------------------------------------------------------------------------


def test_partial_billing_update_changes_only_the_given_fields(client):
    before = order_json(client, 300001)

    reply = read_reply(
        update(client, {"id_sales_order": 300001, "address_billing": {"first_name": "Erika", "city": "Köln"}})
    )

    assert reply == success_document()
    after = order_json(client, 300001)
    assert after["address_billing"] == {**before["address_billing"], "first_name": "Erika", "city": "Köln"}
    assert after["address_shipping"] == before["address_shipping"]
    assert (after["src_id"], after["status"]) == ("SRC-300001", "pending")


def test_shipping_and_billing_change_independently(client):
    before = order_json(client, 300002)

    reply = read_reply(
        update(
            client,
            {
                "id_sales_order": 300002,
                "address_billing": {"postcode": "20095"},
                "address_shipping": {"address1": "Hauptstraße 5", "phone": "0"},
            },
        )
    )

    assert reply == success_document()
    after = order_json(client, 300002)
    assert after["address_billing"] == {**before["address_billing"], "postcode": "20095"}
    assert after["address_shipping"] == {**before["address_shipping"], "address1": "Hauptstraße 5", "phone": "0"}


def test_shipping_only_update_leaves_billing_alone(client):
    before = order_json(client, 300003)

    assert read_reply(update(client, {"id_sales_order": 300003, "address_shipping": {"address5": "Hof 2"}})) == (
        success_document()
    )

    after = order_json(client, 300003)
    assert after["address_billing"] == before["address_billing"]
    assert after["address_shipping"] == {**before["address_shipping"], "address5": "Hof 2"}


def test_every_address_field_can_be_set_including_to_empty(client):
    new_address = {name: f"new {name}" for name in ADDRESS_FIELDS} | {"address5": ""}

    assert read_reply(update(client, {"id_sales_order": 300004, "address_billing": new_address})) == success_document()

    assert order_json(client, 300004)["address_billing"] == new_address


def test_success_timestamp_is_the_clock_in_utc_with_a_plus0000_offset(client, clock):
    clock.now = datetime(2026, 7, 2, 14, 26, 3, tzinfo=timezone(timedelta(hours=2)))
    parameters = signed(call_parameters("2026-07-02T12:26:03+00:00"))

    reply = read_reply(
        update(client, {"id_sales_order": 300001, "address_billing": {"city": "A"}}, parameters=parameters)
    )

    assert reply == success_document("2026-07-02T12:26:03+0000")


def test_several_orders_are_updated_in_one_call(client):
    orders = [{"id_sales_order": number, "address_shipping": {"city": f"City {number}"}} for number in PENDING_ORDERS]

    assert read_reply(update(client, *orders)) == success_document()

    assert [order_json(client, number)["address_shipping"]["city"] for number in PENDING_ORDERS] == [
        f"City {number}" for number in PENDING_ORDERS
    ]


def test_the_same_order_twice_in_one_call_is_updated_in_request_order(client):
    orders = [
        {"id_sales_order": 300005, "address_billing": {"city": "First", "postcode": "11111"}},
        {"id_sales_order": 300005, "address_billing": {"city": "Second"}},
    ]

    assert read_reply(update(client, *orders)) == success_document()

    billing = order_json(client, 300005)["address_billing"]
    assert (billing["city"], billing["postcode"]) == ("Second", "11111")


def test_mixed_batch_lists_only_the_failed_items_by_zero_based_position(client):
    before = {number: order_json(client, number) for number in (300002, 300003, 300010)}
    orders = [
        {"id_sales_order": 300001, "address_billing": {"city": "Bonn"}},
        {"id_sales_order": 300010, "address_billing": {"city": "Bonn"}},
        {"id_sales_order": 399999, "address_billing": {"city": "Bonn"}},
        {"id_sales_order": 300002, "address_billing": {}},
        {"id_sales_order": 300003},
        {"id_sales_order": 300004, "address_shipping": {"city": "Bonn"}},
        {"id_sales_order": 300002, "address_billing": {"city": "Bonn"}, "address_shipping": {}},
    ]

    reply = read_reply(update(client, *orders))

    assert reply == item_errors_document(
        (1, not_pending_message(300010)),
        (2, "Order with id_sales_order 399999 does not exist"),
        (3, "No address information given for order 300002"),
        (4, "No address information given for order 300003"),
        (6, "No address information given for order 300002"),
    )
    assert order_json(client, 300001)["address_billing"]["city"] == "Bonn"
    assert order_json(client, 300004)["address_shipping"]["city"] == "Bonn"
    assert {number: order_json(client, number) for number in before} == before


def test_all_items_failed_is_still_the_error_code_0_shape(client):
    pristine = all_orders(client)
    orders = [
        {"id_sales_order": 300012, "address_shipping": {"city": "Bonn"}},
        {"id_sales_order": 1, "address_shipping": {"city": "Bonn"}},
    ]

    reply = read_reply(update(client, *orders))

    assert reply == item_errors_document(
        (0, not_pending_message(300012)), (1, "Order with id_sales_order 1 does not exist")
    )
    assert all_orders(client) == pristine


@pytest.mark.parametrize("id_sales_order", sorted(NOT_PENDING_ORDERS))
def test_orders_no_longer_pending_keep_their_addresses(client, id_sales_order):
    before = order_json(client, id_sales_order)
    assert before["status"] == NOT_PENDING_ORDERS[id_sales_order]

    reply = read_reply(
        update(client, {"id_sales_order": id_sales_order, "address_shipping": {"city": "Bonn"}, "address_billing": {}})
    )

    assert reply == item_errors_document((0, not_pending_message(id_sales_order)))
    assert order_json(client, id_sales_order) == before


@pytest.mark.parametrize("id_sales_order", [0, -300001, 300013, 2**40])
def test_unknown_orders_do_not_exist(client, id_sales_order):
    reply = read_reply(update(client, {"id_sales_order": id_sales_order, "address_billing": {"city": "Bonn"}}))

    assert reply == item_errors_document((0, f"Order with id_sales_order {id_sales_order} does not exist"))


def test_the_body_is_not_signed(client):
    parameters = signed(call_parameters())

    first = post(client, parameters, request_body({"id_sales_order": 300006, "address_billing": {"city": "One"}}))
    second = post(client, parameters, request_body({"id_sales_order": 300006, "address_billing": {"city": "Two"}}))

    assert read_reply(first) == success_document()
    assert read_reply(second) == success_document()
    assert order_json(client, 300006)["address_billing"]["city"] == "Two"


def test_concurrent_updates_of_one_order_all_land(app):
    start = threading.Barrier(len(ADDRESS_FIELDS))
    replies = []

    def change(field):
        client = app.test_client()
        start.wait()
        replies.append(read_reply(update(client, {"id_sales_order": 300007, "address_billing": {field: f"<{field}>"}})))

    threads = [threading.Thread(target=change, args=(field,)) for field in ADDRESS_FIELDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert replies == [success_document()] * len(ADDRESS_FIELDS)
    assert order_json(app.test_client(), 300007)["address_billing"] == {field: f"<{field}>" for field in ADDRESS_FIELDS}


# --- query parameters, timestamps and signatures that are accepted ---------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "clock_offset"),
    [
        ("2026-03-01T12:00:00+00:00", timedelta(0)),
        ("2026-03-01T12:00:00+0000", timedelta(0)),
        ("2026-03-01T12:00:00Z", timedelta(0)),
        ("2026-03-01T13:00:00+01:00", timedelta(0)),
        ("2026-03-01T07:00:00-0500", timedelta(0)),
        ("2026-03-01T12:00:00.250+00:00", timedelta(0)),
        ("2026-03-01T12:05:00+00:00", timedelta(0)),
        ("2026-03-01T11:55:00+0000", timedelta(0)),
    ],
    ids=[
        "colon-offset",
        "plain-offset",
        "zulu",
        "plus-one-hour",
        "minus-five-hours",
        "fraction",
        "300s-ahead",
        "300s-behind",
    ],
)
def test_timestamps_with_an_offset_within_the_window_are_accepted(client, clock, timestamp, clock_offset):
    clock.now = NOW + clock_offset
    parameters = signed(call_parameters(timestamp))

    reply = read_reply(
        update(client, {"id_sales_order": 300001, "address_billing": {"city": "Bonn"}}, parameters=parameters)
    )

    assert reply == success_document()
    assert order_json(client, 300001)["address_billing"]["city"] == "Bonn"


@pytest.mark.parametrize(
    "user_id",
    ["oms@sandbox.example", "oms sandbox~+@example", "someone-else@example.org", "Ünïcode €"],
    ids=["demo-user", "space-tilde-plus-at", "other-user", "non-ascii"],
)
def test_extra_parameters_are_signed_along(client, user_id):
    parameters = signed(call_parameters(UserID=user_id))

    reply = read_reply(
        update(client, {"id_sales_order": 300001, "address_billing": {"phone": "1"}}, parameters=parameters)
    )

    assert reply == success_document()


def test_rfc3986_edge_characters_are_encoded_before_signing():
    parameters = call_parameters(UserID="oms sandbox~+@example")

    assert "&UserID=oms%20sandbox~%2B%40example&" in string_to_sign(parameters)
    assert build_string_to_sign(parameters) == string_to_sign(parameters)


def test_query_is_decoded_before_it_is_encoded_for_signing(client):
    # A client may leave '@', '~' and ':' unescaped in the URL; the signature is over the RFC 3986 form all the same.
    parameters = signed(call_parameters("2026-03-01T12:00:00Z", UserID="oms@sandbox.example~x"))
    raw_query = query_string(parameters).replace("%40", "@").replace("%3A", ":")
    assert "UserID=oms@sandbox.example~x" in raw_query

    response = client.post(
        f"{SERVICE}?{raw_query}",
        data=json.dumps(request_body({"id_sales_order": 300001, "address_billing": {"city": "Bonn"}})),
    )

    assert read_reply(response) == success_document()


def test_parameter_order_in_the_url_does_not_matter(client):
    parameters = signed(call_parameters(UserID="oms@sandbox.example"))
    reversed_parameters = dict(reversed(parameters.items()))

    response = post(
        client, reversed_parameters, request_body({"id_sales_order": 300001, "address_billing": {"city": "B"}})
    )

    assert read_reply(response) == success_document()


def test_of_a_repeated_parameter_the_last_one_counts(client):
    parameters = signed(call_parameters())
    query = "Version=2.0&" + query_string(parameters)

    response = client.post(
        f"{SERVICE}?{query}",
        data=json.dumps(request_body({"id_sales_order": 300001, "address_billing": {"city": "B"}})),
    )

    assert read_reply(response) == success_document()


def test_system_clock_is_the_default():
    client = create_app({"TESTING": True}).test_client()
    parameters = signed(call_parameters(datetime.now(UTC).isoformat(timespec="seconds")))

    reply = read_reply(
        update(client, {"id_sales_order": 300001, "address_billing": {"city": "Now"}}, parameters=parameters)
    )

    assert set(reply) == {"SuccessResponse"}
    returned = datetime.strptime(reply["SuccessResponse"]["Head"]["Timestamp"], "%Y-%m-%dT%H:%M:%S%z")
    assert abs(datetime.now(UTC) - returned) < timedelta(seconds=60)


# --- whole-call errors --------------------------------------------------------------------------------------------

VALID_ORDER = {"id_sales_order": 300001, "address_billing": {"city": "Refused"}}


def assert_call_refused(client, response, code: str, message: str, action: str = ACTION, http_status: int = 200):
    """The reply is the whole-call ErrorResponse with `code` and `message`, and the order is unchanged."""
    assert read_reply(response, http_status) == call_error_document(code, message, action=action)
    assert order_json(client, 300001)["address_billing"]["city"] == "Berlin"


@pytest.mark.parametrize("name", ["Action", "Timestamp", "Version", "Signature"])
@pytest.mark.parametrize("form", ["absent", "empty"])
def test_e001_mandatory_parameter_missing(client, name, form):
    parameters = signed(call_parameters())
    if form == "absent":
        del parameters[name]
    else:
        parameters[name] = ""
    if name != "Signature":
        parameters = signed({key: value for key, value in parameters.items() if key != "Signature"})

    response = post(client, parameters, request_body(VALID_ORDER))

    action = "" if name == "Action" else ACTION
    assert_call_refused(client, response, "1", f"E001: Parameter {name} is mandatory", action=action)


def test_e001_names_the_first_missing_parameter(client):
    response = post(client, {"ServiceName": "OMS", "Version": "1.0"}, request_body(VALID_ORDER))

    assert_call_refused(client, response, "1", "E001: Parameter Action is mandatory", action="")


@pytest.mark.parametrize("version", ["2.0", "1", "1.0.0", "v1.0"])
def test_e002_invalid_version(client, version):
    response = post(client, signed({**call_parameters(), "Version": version}), request_body(VALID_ORDER))

    assert_call_refused(client, response, "2", "E002: Invalid Version")


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-03-01 12:00:00+00:00",
        "2026-03-01T12:00:00",
        "2026-03-01T12:00+00:00",
        "2026-03-01",
        "1772366400",
        "20260301T120000Z",
        "2026-02-30T12:00:00+00:00",
        "2026-03-01T24:00:00+00:00",
        "2026-03-01T12:00:00+24:00",
        "2026-03-01t12:00:00z",
        "2026-03-01T12:00:00 00:00",
        "Sun, 01 Mar 2026 12:00:00 GMT",
    ],
    ids=[
        "space-separator",
        "no-offset",
        "no-seconds",
        "date-only",
        "epoch",
        "basic-format",
        "february-30",
        "hour-24",
        "offset-of-a-day",
        "lower-case",
        "plus-decoded-as-space",
        "http-date",
    ],
)
def test_e004_invalid_timestamp_format(client, timestamp):
    response = post(client, signed(call_parameters(timestamp)), request_body(VALID_ORDER))

    assert_call_refused(client, response, "4", "E004: Invalid Timestamp format")


def test_e004_for_a_plus_sign_sent_unescaped(client):
    # An unescaped '+' in a query is a space, so the offset is lost on the way.
    parameters = signed(call_parameters())
    query = query_string(parameters).replace("%2B", "+")

    response = client.post(f"{SERVICE}?{query}", data=json.dumps(request_body(VALID_ORDER)))

    assert_call_refused(client, response, "4", "E004: Invalid Timestamp format")


@pytest.mark.parametrize(
    "timestamp",
    ["2026-03-01T11:54:59+00:00", "2026-03-01T12:05:01+0000", "2015-07-01T11:11:11+00:00", "2030-01-01T00:00:00Z"],
    ids=["301s-past", "301s-future", "years-past", "years-future"],
)
def test_e003_timestamp_outside_the_window(client, timestamp):
    response = post(client, signed(call_parameters(timestamp)), request_body(VALID_ORDER))

    assert_call_refused(client, response, "3", "E003: Timestamp has expired")


def test_e003_window_is_configurable(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "SELLERCENTER_TIMESTAMP_WINDOW_SECONDS": 10}).test_client()

    accepted = update(client, VALID_ORDER, parameters=signed(call_parameters("2026-03-01T12:00:10Z")))
    refused = post(client, signed(call_parameters("2026-03-01T11:59:49Z")), request_body(VALID_ORDER))

    assert read_reply(accepted) == success_document()
    assert read_reply(refused) == call_error_document("3", "E003: Timestamp has expired")


@pytest.mark.parametrize(
    "make_parameters",
    [
        lambda: signed(call_parameters(), api_key="not-the-key"),
        lambda: signed(call_parameters(), api_key=API_KEY + " "),
        lambda: {**signed(call_parameters()), "Timestamp": "2026-03-01T12:00:01+00:00"},
        lambda: {**signed(call_parameters()), "UserID": "oms@sandbox.example"},
        lambda: {**signed(call_parameters(UserID="oms@sandbox.example")), "UserID": "other@sandbox.example"},
        lambda: {**signed(call_parameters()), "Signature": sign(call_parameters()).upper()},
        lambda: {**signed(call_parameters()), "Signature": "0" * 64},
        lambda: {**signed(call_parameters()), "Signature": "ü" * 64},
        lambda: {
            **call_parameters(UserID="a b"),
            "Signature": hmac.new(
                API_KEY.encode(), string_to_sign(call_parameters(UserID="a+b")).encode(), hashlib.sha256
            ).hexdigest(),
        },
        lambda: {
            **call_parameters(),
            "Signature": hmac.new(
                VECTOR_API_KEY.encode(), string_to_sign(call_parameters()).encode(), hashlib.sha256
            ).hexdigest(),
        },
    ],
    ids=[
        "wrong-key",
        "key-with-trailing-space",
        "tampered-timestamp",
        "unsigned-extra-parameter",
        "tampered-user-id",
        "upper-case-hex",
        "zeros",
        "non-ascii",
        "space-signed-as-plus",
        "vector-key",
    ],
)
def test_e007_signature_mismatch(client, make_parameters):
    response = post(client, make_parameters(), request_body(VALID_ORDER))

    assert_call_refused(client, response, "7", "E007: Login failed. Signature mismatch")


@pytest.mark.parametrize(
    ("changes", "action"),
    [
        ({"ServiceName": "Seller"}, ACTION),
        ({"ServiceName": "oms"}, ACTION),
        ({"ServiceName": None}, ACTION),
        ({"Action": "GetOrders"}, "GetOrders"),
        ({"Action": "updateorderinformation"}, "updateorderinformation"),
        ({"Action": "FeedList", "ServiceName": "OMS"}, "FeedList"),
    ],
    ids=["other-service", "lower-case-service", "no-service", "other-action", "lower-case-action", "seller-api-action"],
)
def test_e008_invalid_action(client, changes, action):
    parameters = {**call_parameters(), **changes}
    parameters = signed({name: value for name, value in parameters.items() if value is not None})

    response = post(client, parameters, request_body(VALID_ORDER))

    assert_call_refused(client, response, "8", "E008: Invalid Action", action=action)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"Request": {"Orders": [',
        b"\xff\xfe\xfa",
        b"[]",
        b"null",
        b'{"Request": null}',
        b'{"Request": {}}',
        b'{"Request": {"Orders": {}}}',
        b'{"Request": {"Orders": "300001"}}',
        b'{"Request": {"Orders": []}, "Extra": 1}',
        b'{"Request": {"Orders": [], "Extra": 1}}',
        b'{"request": {"Orders": [{"id_sales_order": 300001, "address_billing": {"city": "X"}}]}}',
        b'{"Request": {"Orders": [300001]}}',
        b'{"Request": {"Orders": [{"address_billing": {"city": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": "300001", "address_billing": {"city": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001.0, "address_billing": {"city": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": true, "address_billing": {"city": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": null, "address_billing": {"city": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": [{"city": "X"}]}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": null}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": {"city": null}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": {"postcode": 53111}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": {"street": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": {"City": "X"}}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "status": "canceled"}]}}',
        b'{"Request": {"Orders": [{"id_sales_order": 300001, "address_billing": {"city": "X"}}, {}]}}',
        b"[" * 100000 + b"]" * 100000,
    ],
    ids=[
        "empty-body",
        "not-json",
        "truncated",
        "not-utf8",
        "array",
        "null",
        "request-null",
        "no-orders",
        "orders-object",
        "orders-string",
        "extra-top-level-member",
        "extra-request-member",
        "lower-case-request",
        "order-not-object",
        "id-missing",
        "id-string",
        "id-float",
        "id-boolean",
        "id-null",
        "address-array",
        "address-null",
        "field-null",
        "field-number",
        "unknown-field",
        "field-wrong-case",
        "unknown-order-member",
        "second-order-empty",
        "deeply-nested",
    ],
)
def test_e005_invalid_request_format(client, body):
    response = post(client, signed(call_parameters()), body)

    assert_call_refused(client, response, "5", "E005: Invalid Request Format")


def test_e030_empty_request(client):
    response = post(client, signed(call_parameters()), request_body())

    assert_call_refused(client, response, "30", "E030: Empty Request")


def test_e011_request_too_big(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "MAX_CONTENT_LENGTH": 200}).test_client()
    orders = [{"id_sales_order": 300001, "address_billing": {"city": "Refused"}}] * 10

    response = post(client, signed(call_parameters()), request_body(*orders))

    assert_call_refused(client, response, "11", "E011: Request too big")


def test_e429_too_many_requests_with_retry_after(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "SELLERCENTER_RATE_LIMIT_PER_MINUTE": 2}).test_client()
    for city in ("One", "Two"):
        assert read_reply(update(client, {"id_sales_order": 300002, "address_billing": {"city": city}})) == (
            success_document()
        )

    response = update(client, VALID_ORDER)

    assert response.headers["Retry-After"] == "60"
    assert_call_refused(client, response, "429", "E429: Too many requests", http_status=429)
    assert order_json(client, 300002)["address_billing"]["city"] == "Two"


def test_e429_calls_are_counted_over_a_sliding_minute(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "SELLERCENTER_RATE_LIMIT_PER_MINUTE": 1}).test_client()

    def call_at(moment: datetime) -> int:
        clock.now = moment
        parameters = signed(call_parameters(moment.isoformat()))
        return update(client, VALID_ORDER, parameters=parameters).status_code

    assert call_at(NOW) == 200
    assert call_at(NOW + timedelta(seconds=59)) == 429
    assert call_at(NOW + timedelta(seconds=60)) == 200
    assert call_at(NOW + timedelta(seconds=61)) == 429


def test_e429_is_forgotten_on_reset(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "SELLERCENTER_RATE_LIMIT_PER_MINUTE": 1}).test_client()
    assert update(client, VALID_ORDER).status_code == 200
    assert update(client, VALID_ORDER).status_code == 429

    assert client.post("/sellercenter/_reset").status_code == 204

    assert read_reply(update(client, VALID_ORDER)) == success_document()


def test_calls_refused_before_the_rate_limit_are_not_counted(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "SELLERCENTER_RATE_LIMIT_PER_MINUTE": 1}).test_client()
    for _ in range(3):
        refused = post(client, signed(call_parameters(), api_key="not-the-key"), request_body(VALID_ORDER))
        assert read_reply(refused)["ErrorResponse"]["Head"]["ErrorCode"] == "7"

    assert read_reply(update(client, VALID_ORDER)) == success_document()


def test_rate_limit_is_off_by_default(client):
    replies = [read_reply(update(client, VALID_ORDER)) for _ in range(100)]

    assert replies == [success_document()] * 100


@pytest.mark.parametrize(
    ("parameters", "body", "code"),
    [
        ({"Version": "2.0", "Signature": None}, request_body(VALID_ORDER), "1"),
        ({"Version": "2.0", "Timestamp": "yesterday", "Signature": "bad"}, request_body(VALID_ORDER), "2"),
        ({"Timestamp": "yesterday", "Signature": "bad"}, request_body(VALID_ORDER), "4"),
        ({"Timestamp": "2015-07-01T11:11:11+00:00", "Signature": "bad"}, request_body(VALID_ORDER), "3"),
        ({"ServiceName": "Seller", "Signature": "bad"}, request_body(VALID_ORDER), "7"),
        ({"ServiceName": "Seller"}, b"not json", "8"),
        ({}, {"Request": {"Orders": [], "Extra": 1}}, "5"),
    ],
    ids=[
        "E001-before-E002",
        "E002-before-E004",
        "E004-before-E007",
        "E003-before-E007",
        "E007-before-E008",
        "E008-before-E005",
        "E005-before-E030",
    ],
)
def test_checks_run_in_order(client, parameters, body, code):
    call = {**call_parameters(), **{name: value for name, value in parameters.items() if name != "Signature"}}
    if "Signature" not in parameters:
        call = signed(call)
    elif parameters["Signature"] is not None:
        call["Signature"] = parameters["Signature"]

    reply = read_reply(post(client, call, body))

    assert reply["ErrorResponse"]["Head"]["ErrorCode"] == code


def test_e005_comes_before_the_rate_limit(clock):
    client = create_app({"SELLERCENTER_CLOCK": clock, "SELLERCENTER_RATE_LIMIT_PER_MINUTE": 1}).test_client()
    assert update(client, VALID_ORDER).status_code == 200

    response = post(client, signed(call_parameters()), b"not json")

    assert read_reply(response) == call_error_document("5", "E005: Invalid Request Format")


@pytest.mark.expected_traceback
def test_e006_unexpected_internal_error_reveals_nothing(app, client, monkeypatch):
    store = app.extensions["sandbox.sellercenter"]["store"]

    def fail(updates):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(store, "update_order_information", fail)

    response = update(client, VALID_ORDER)

    assert read_reply(response) == call_error_document("6", "E006: Unexpected internal error", error_type="Platform")
    assert b"hunter2" not in response.data


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_service_path_takes_only_post(client, method):
    response = client.open(f"{SERVICE}?{query_string(signed(call_parameters()))}", method=method)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_replies_keep_the_member_order_of_the_specification(client):
    success = update(client, VALID_ORDER).get_data(as_text=True)
    refused = post(client, signed(call_parameters(), api_key="x"), request_body(VALID_ORDER)).get_data(as_text=True)

    assert success.index('"RequestId"') < success.index('"RequestAction"') < success.index('"ResponseType"')
    assert success.index('"ResponseType"') < success.index('"Timestamp"') < success.index('"Body"')
    assert refused.index('"RequestAction"') < refused.index('"ErrorType"') < refused.index('"ErrorCode"')
    assert refused.index('"ErrorCode"') < refused.index('"ErrorMessage"') < refused.index('"Body"')


# --- JSON view, reset, configuration --------------------------------------------------------------------------------


def test_order_list_holds_the_demo_data(client):
    orders = all_orders(client)

    assert [(order["id_sales_order"], order["src_id"], order["status"]) for order in orders] == [
        *[(number, f"SRC-{number}", "pending") for number in PENDING_ORDERS],
        (300009, "SRC-300009", "ready_to_ship"),
        (300010, "SRC-300010", "shipped"),
        (300011, "SRC-300011", "canceled"),
        (300012, "SRC-300012", "delivered"),
    ]
    for order in orders:
        assert set(order) == {"id_sales_order", "src_id", "status", "address_billing", "address_shipping"}
        for member in ("address_billing", "address_shipping"):
            address = order[member]
            assert set(address) == set(ADDRESS_FIELDS)
            assert all(isinstance(value, str) for value in address.values())
            assert address["country"] == "Germany"
            assert all(address[name] for name in ("first_name", "last_name", "phone", "address1", "city", "postcode"))


def test_one_order_has_every_field(client):
    assert order_json(client, 300001) == {
        "id_sales_order": 300001,
        "src_id": "SRC-300001",
        "status": "pending",
        "address_billing": {
            "first_name": "Anna",
            "last_name": "Schmidt",
            "phone": "+49 30 5550100",
            "phone2": "+49 151 2340000",
            "address1": "Lindenstraße 12",
            "address2": "Hinterhaus",
            "address3": "1. Obergeschoss",
            "address4": "Wohnung 10",
            "address5": "Klingel Schmidt",
            "city": "Berlin",
            "postcode": "10115",
            "country": "Germany",
        },
        "address_shipping": {
            "first_name": "Anna",
            "last_name": "Schmidt",
            "phone": "+49 30 5550100",
            "phone2": "",
            "address1": "Lindenstraße 12",
            "address2": "",
            "address3": "",
            "address4": "",
            "address5": "",
            "city": "Berlin",
            "postcode": "10115",
            "country": "Germany",
        },
    }


def test_unknown_order_is_a_json_404(client):
    response = client.get("/sellercenter/orders/399999")

    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.get_json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "No order with id_sales_order 399999.",
    }


def test_reset_reloads_the_data_file(client):
    pristine = all_orders(client)
    assert read_reply(update(client, {"id_sales_order": 300001, "address_billing": {"city": "Bonn"}})) == (
        success_document()
    )
    assert read_reply(update(client, {"id_sales_order": 300008, "address_shipping": {"phone2": "9"}})) == (
        success_document()
    )
    assert all_orders(client) != pristine

    response = client.post("/sellercenter/_reset")

    assert response.status_code == 204
    assert all_orders(client) == pristine


def test_other_sandboxes_are_still_served(client):
    assert client.get("/ongoing/orders/1001").get_json()["order_number"] == "SO-1001"
    assert client.get("/speed4trade/orders/10001").get_json()["order_number"] == 10001


def test_configured_service_path_and_data_file(tmp_path, clock):
    address = {name: "" for name in ADDRESS_FIELDS}
    data_file = tmp_path / "sellercenter.json"
    data_file.write_text(
        json.dumps(
            {
                "api_users": [
                    {"user_id": "first@example", "api_key": "first-key"},
                    {"user_id": "second@example", "api_key": "second-key"},
                ],
                "orders": [
                    {
                        "id_sales_order": 7,
                        "src_id": "S-7",
                        "status": "pending",
                        "address_billing": address,
                        "address_shipping": address,
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    client = create_app(
        {"SELLERCENTER_DATA": str(data_file), "SELLERCENTER_SERVICE_PATH": "/oms-api/", "SELLERCENTER_CLOCK": clock}
    ).test_client()
    body = json.dumps(request_body({"id_sales_order": 7, "address_shipping": {"city": "Bonn"}}))

    replies = [
        read_reply(client.post(f"/oms-api/?{query_string(signed(call_parameters(), key))}", data=body))
        for key in ("first-key", "second-key")
    ]
    refused = read_reply(client.post(f"/oms-api/?{query_string(signed(call_parameters(), API_KEY))}", data=body))

    assert replies == [success_document()] * 2
    assert refused == call_error_document("7", "E007: Login failed. Signature mismatch")
    assert client.get("/sellercenter/orders/7").get_json()["address_shipping"]["city"] == "Bonn"
    assert (
        client.post(f"{SERVICE}?{query_string(signed(call_parameters(), 'first-key'))}", data=body).status_code == 404
    )


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"SELLERCENTER_TIMESTAMP_WINDOW_SECONDS": -1}, ValueError),
        ({"SELLERCENTER_RATE_LIMIT_PER_MINUTE": -1}, ValueError),
        ({"SELLERCENTER_CLOCK": "2026-03-01T12:00:00Z"}, TypeError),
    ],
    ids=["negative-window", "negative-rate-limit", "clock-not-callable"],
)
def test_broken_configuration_fails_at_start_up(config, error):
    with pytest.raises(error):
        create_app(config)
