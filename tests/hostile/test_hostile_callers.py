"""Callers sending crafted requests: deep nesting, huge lists, huge numbers, too many errors, strange query
strings and undecodable credentials are answered with the right 4xx problem, never with a 500."""

from __future__ import annotations

import base64
import http.client
import json
from urllib.parse import urlsplit

import pytest

from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, SPEED4TRADE_SERVICE_PATH, gateway_config, speed4trade_connection
from tests.hostile.conftest import (
    ARABIC_INDIC_ONE,
    ARABIC_INDIC_TEN,
    CONNECTION_TABLES,
    ENDPOINTS,
    FULLWIDTH_TEN,
    KINDS,
    PROBLEM_MEDIA_TYPE,
    VALID_UPDATES,
    WEBHOOK_AUTH,
    WEBHOOK_PATH,
    assert_problem,
    json_depth,
    nested_arrays,
    stored_events,
    webhook_gateway_config,
)
from tests.servers import closed_port, serve_wsgi
from tests.test_webhooks_receiving import PAYLOAD

DEFAULT_MAX_DEPTH = 32
TEN_KB = 10 * 1024
ENDPOINT_IDS = [endpoint.name for endpoint in ENDPOINTS]


# --- JSON nesting ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_body_nested_exactly_to_the_limit_is_read_and_validated(gateway_client, endpoint):
    body = endpoint.body("x", nested_arrays(DEFAULT_MAX_DEPTH - endpoint.around))
    assert json_depth(body) == DEFAULT_MAX_DEPTH
    reply = endpoint.send(gateway_client, body)
    assert reply.status_code == endpoint.reply_to_unknown_member, reply.get_data(as_text=True)[:2000]


@pytest.mark.parametrize("depth", [DEFAULT_MAX_DEPTH + 1, 970, 200_000])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_member_nested_beyond_the_limit_makes_the_whole_request_400(gateway_client, endpoint, depth):
    body = endpoint.body("x", nested_arrays(depth - endpoint.around))
    assert json_depth(body) == depth
    problem = assert_problem(endpoint.send(gateway_client, body), 400, "malformed-request")
    assert f"nested deeper than {DEFAULT_MAX_DEPTH} levels" in problem["detail"]
    assert stored_events(gateway_client) == []


@pytest.mark.parametrize("depth", [1000, 200_000])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_body_of_bare_brackets_is_400(gateway_client, endpoint, depth):
    problem = assert_problem(endpoint.send(gateway_client, nested_arrays(depth)), 400, "malformed-request")
    assert f"nested deeper than {DEFAULT_MAX_DEPTH} levels" in problem["detail"]


def test_webhook_credentials_are_checked_before_the_nesting(gateway_client):
    reply = gateway_client.post(WEBHOOK_PATH, data=nested_arrays(200_000), content_type="application/json",
                                auth=("ongoing-webhooks", "wrong"))
    assert_problem(reply, 401, "unauthorized")


@pytest.fixture
def shallow_client(make_gateway, sandbox_url):
    """A gateway configured with max_json_depth = 5."""
    config = webhook_gateway_config(sandbox_url + ONGOING_SERVICE_PATH)
    config["gateway"]["max_json_depth"] = 5
    return make_gateway(config).test_client()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ('{"x": [[[[1]]]]}', 422),   # an object and four arrays: depth 5; scalars do not count
        ('{"x": [[[["a"]]]]}', 422),
        ('{"x": [[[[{}]]]]}', 400),  # an empty object is a level too
        ('{"x": [[[[[1]]]]]}', 400),
        ("[[[[[[]]]]]]", 400),
    ],
)
def test_a_configured_max_json_depth_is_honoured(shallow_client, body, status):
    reply = shallow_client.patch("/orders/SO-1001", data=body, content_type="application/json")
    if status == 400:
        problem = assert_problem(reply, 400, "malformed-request")
        assert "nested deeper than 5 levels" in problem["detail"]
    else:
        assert_problem(reply, 422, "validation-failed")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_a_configured_max_json_depth_applies_to_every_endpoint(shallow_client, endpoint):
    body = endpoint.body("x", nested_arrays(6 - endpoint.around))
    problem = assert_problem(endpoint.send(shallow_client, body), 400, "malformed-request")
    assert "nested deeper than 5 levels" in problem["detail"]


# --- list lengths ------------------------------------------------------------------------------------------

@pytest.fixture
def speed4trade_client(make_gateway, sandbox_url):
    """A gateway with one Speed4Trade connection at the sandbox."""
    connection = speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH)
    return make_gateway(gateway_config(s4t=connection)).test_client()


def shipments(count: int) -> list[dict]:
    """`count` valid shipments."""
    return [{"tracking_number": f"T-{n}", "carrier": "DHL"} for n in range(count)]


@pytest.mark.parametrize(
    ("items", "count"),
    [([0] * 200_000, 200_000), (shipments(101), 101), ([{"tracking_number": 5}] * 5000, 5000)],
    ids=["200000-integers", "101-shipments", "5000-bad-shipments"],
)
def test_a_list_over_its_documented_limit_is_refused_with_one_short_message(speed4trade_client, items, count):
    reply = speed4trade_client.patch("/orders/10001?dry_run=true", json={"status": "shipped", "shipments": items})
    problem = assert_problem(reply, 422, "validation-failed")
    assert problem["errors"]["shipments"] == [f"At most 100 items; got {count}."]
    assert len(reply.get_data()) < TEN_KB


def test_a_list_at_its_documented_limit_is_accepted(speed4trade_client):
    reply = speed4trade_client.patch("/orders/10001?dry_run=true", json={"status": "shipped",
                                                                        "shipments": shipments(100)})
    assert reply.status_code == 200, reply.get_data(as_text=True)[:2000]
    assert reply.get_json()["request"]["body"].count("T-99") == 1


def test_a_bulk_item_with_too_long_a_list_fails_alone_and_briefly(speed4trade_client):
    reply = speed4trade_client.patch("/orders?dry_run=true", json={"orders": [
        {"order_id": "10001", "status": "shipped", "shipments": [0] * 200_000},
        {"order_id": "10002", "status": "fetched"},
    ]})
    assert reply.status_code == 207, reply.get_data(as_text=True)[:2000]
    first, second = reply.get_json()["results"]
    assert first["status"] == 422
    assert first["body"]["errors"]["shipments"] == ["At most 100 items; got 200000."]
    assert second["status"] == 200
    assert len(reply.get_data()) < TEN_KB


@pytest.mark.parametrize("count", [501, 200_000])
def test_a_bulk_update_over_max_bulk_items_is_413_and_brief(gateway_client, count):
    reply = gateway_client.patch("/orders", json={"orders": [0] * count})
    problem = assert_problem(reply, 413, "payload-too-large")
    assert str(count) in problem["detail"]
    assert len(reply.get_data()) < TEN_KB


# --- how many errors a problem lists -----------------------------------------------------------------------

@pytest.mark.parametrize(("count", "omitted"), [(49, 0), (50, 0), (51, 1), (200, 150)])
def test_a_problem_lists_at_most_50_error_paths(gateway_client, count, omitted):
    reply = gateway_client.patch("/orders/SO-1001", json={f"x{n}": 1 for n in range(count)})
    problem = assert_problem(reply, 422, "validation-failed")
    assert len(problem["errors"]) == min(count, 50)
    assert set(problem["errors"]) <= {f"x{n}" for n in range(count)}
    if omitted:
        assert problem["errors_omitted"] == omitted
        assert problem["detail"].endswith(f"({omitted} more errors not listed)")
    else:
        assert "errors_omitted" not in problem
        assert "not listed" not in problem["detail"]


def test_a_bulk_item_problem_lists_at_most_50_error_paths(gateway_client):
    item = {"order_id": "SO-1001", **{f"x{n}": 1 for n in range(200)}}
    reply = gateway_client.patch("/orders", json={"orders": [item]})
    assert reply.status_code == 207
    body = reply.get_json()["results"][0]["body"]
    assert (len(body["errors"]), body["errors_omitted"]) == (50, 150)
    assert body["detail"].endswith("(150 more errors not listed)")


def test_a_webhook_problem_lists_at_most_50_error_paths(gateway_client):
    payload = {**PAYLOAD, "tracking": [{"isReturn": "maybe"}] * 200}
    reply = gateway_client.post(WEBHOOK_PATH, json=payload, auth=WEBHOOK_AUTH)
    problem = assert_problem(reply, 422, "validation-failed")
    assert (len(problem["errors"]), problem["errors_omitted"]) == (50, 150)
    assert all(path.startswith("tracking.") for path in problem["errors"])
    assert stored_events(gateway_client) == []


# --- huge integer literals ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "template",
    ["{n}", "-{n}", "[{n}]", '{{"code": "DHL", "deep": {{"n": {n}}}}}'],
    ids=["positive", "negative", "in-a-list", "in-an-object"],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_an_integer_literal_of_5000_digits_is_400(gateway_client, endpoint, template):
    body = endpoint.body(endpoint.integer_member, template.format(n="7" * 5000))
    problem = assert_problem(endpoint.send(gateway_client, body), 400, "malformed-request")
    assert "digits" in problem["detail"]
    assert stored_events(gateway_client) == []


# --- query strings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["²", ARABIC_INDIC_TEN, FULLWIDTH_TEN, "0", "1001", "abc", "-1", "10.5"])
def test_an_events_limit_that_is_not_an_ascii_integer_in_range_is_422(gateway_client, limit):
    problem = assert_problem(gateway_client.get("/events", query_string={"limit": limit}), 422, "validation-failed")
    assert "limit" in problem["errors"]


@pytest.mark.parametrize("limit", ["1", "10", "1000"])
def test_an_events_limit_in_range_is_accepted(gateway_client, limit):
    reply = gateway_client.get("/events", query_string={"limit": limit})
    assert reply.status_code == 200
    assert reply.get_json()["count"] == 0


def test_an_unknown_query_parameter_is_422(gateway_client):
    problem = assert_problem(gateway_client.get("/events?colour=red"), 422, "validation-failed")
    assert "colour" in problem["errors"]


def test_every_documented_events_parameter_is_accepted(gateway_client):
    reply = gateway_client.get("/events?order_id=SO-1&type=order.picked&state=pending&limit=5")
    assert reply.status_code == 200, reply.get_data(as_text=True)


@pytest.mark.parametrize("flag", ["²", ARABIC_INDIC_ONE, "true\u0000"])
@pytest.mark.parametrize("path", ["/orders/SO-1001", "/orders"])
def test_a_dry_run_flag_that_is_not_a_boolean_is_422(gateway_client, path, flag):
    document = {"status": "open"} if path != "/orders" else {"orders": [{"order_id": "SO-1001", "status": "open"}]}
    reply = gateway_client.patch(path, query_string={"dry_run": flag}, json=document)
    problem = assert_problem(reply, 422, "validation-failed")
    assert "dry_run" in problem["errors"]


# --- undecodable credentials -------------------------------------------------------------------------------

UNDECODABLE_AUTHORIZATIONS = [
    b"Basic \xff\xfe\xfd",
    "Basic pässwörd".encode(),
    b"Basic \x80" + base64.b64encode(b"ongoing-webhooks:webhook-demo-password"),
    b"Basic " + base64.b64encode(b"ongoing-webhooks:webhook-demo-password\xff"),
    b"Basic " + base64.b64encode(b"\xff\xfe:\xfd"),
]
AUTHORIZATION_IDS = ["latin-1-bytes", "utf-8-bytes", "prefixed-byte", "non-utf-8-password", "non-utf-8-pair"]


@pytest.mark.parametrize("authorization", UNDECODABLE_AUTHORIZATIONS, ids=AUTHORIZATION_IDS)
def test_undecodable_basic_credentials_are_401_through_the_test_client(gateway_client, authorization):
    reply = gateway_client.post(WEBHOOK_PATH, json=PAYLOAD,
                                environ_base={"HTTP_AUTHORIZATION": authorization.decode("latin-1")})
    assert_problem(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert stored_events(gateway_client) == []


@pytest.fixture
def served_gateway(make_gateway, sandbox_url):
    """A gateway receiving webhooks, served over real HTTP: (base URL, its test client)."""
    app = make_gateway(webhook_gateway_config(sandbox_url + ONGOING_SERVICE_PATH))
    with serve_wsgi(app) as url:
        yield url, app.test_client()


@pytest.mark.parametrize("authorization", UNDECODABLE_AUTHORIZATIONS, ids=AUTHORIZATION_IDS)
def test_undecodable_basic_credentials_are_401_over_http(served_gateway, authorization):
    url, client = served_gateway
    connection = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=10)
    try:
        connection.request("POST", WEBHOOK_PATH, body=json.dumps(PAYLOAD).encode(),
                           headers={"Content-Type": "application/json", "Authorization": authorization})
        reply = connection.getresponse()
        body = reply.read()
    finally:
        connection.close()
    assert reply.status == 401, body[:2000]
    assert reply.getheader("Content-Type") == PROBLEM_MEDIA_TYPE
    assert json.loads(body)["type"] == "urn:order-gateway:problem:unauthorized"
    assert stored_events(client) == []


# --- the shapes of replies ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dry_run", ["false", "true"])
def test_bulk_success_items_carry_the_request_id(gateway_client, dry_run):
    reply = gateway_client.patch(f"/orders?dry_run={dry_run}", headers={"X-Request-ID": "bulk-42"}, json={
        "orders": [{"order_id": "SO-1001", "status": "released"}, {"order_id": "SO-1002", "waybill": "W-2"}]})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    document = reply.get_json()
    assert document["request_id"] == reply.headers["X-Request-ID"] == "bulk-42"
    assert [result["body"]["request_id"] for result in document["results"]] == ["bulk-42", "bulk-42"]


@pytest.mark.parametrize("path", ["/orders/10001", "/orders"])
def test_a_speed4trade_update_of_only_a_mandator_names_the_missing_status(speed4trade_client, path):
    if path == "/orders":
        reply = speed4trade_client.patch(path, json={"orders": [{"order_id": "10001", "mandator_id": 2}]})
        assert reply.status_code == 207
        result = reply.get_json()["results"][0]
        assert result["status"] == 422
        errors = result["body"]["errors"]
    else:
        errors = assert_problem(speed4trade_client.patch(path, json={"mandator_id": 2}), 422,
                                "validation-failed")["errors"]
    assert "body" not in errors
    assert any("Required" in message for message in errors["status"]), errors


@pytest.fixture
def every_backend_app(make_gateway):
    """A gateway with one connection of each backend kind, named after it, none of them reachable."""
    url = f"http://127.0.0.1:{closed_port()}/"
    return make_gateway(gateway_config(**{kind: CONNECTION_TABLES[kind](url) for kind in KINDS}))


@pytest.mark.expected_traceback
@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_unforeseen_exception_is_a_500_problem_never_html(every_backend_app, monkeypatch, kind, bulk):
    def explode(planned):
        raise RuntimeError("<html>internal state</html>")

    monkeypatch.setattr(gateway_of(every_backend_app).connections.resolve(kind), "send", explode)
    order_id, document = VALID_UPDATES[kind]
    client = every_backend_app.test_client()
    if bulk:
        reply = client.patch("/orders", json={"connection": kind, "orders": [{"order_id": order_id, **document}]})
    else:
        reply = client.patch(f"/orders/{order_id}", json={"connection": kind, **document})
    problem = assert_problem(reply, 500, "internal-error")
    assert "<html" not in reply.get_data(as_text=True).lower()
    assert "internal state" not in problem["detail"]
