"""The contract every registered backend and every one of its operations keeps with the connection and the REST
layer, run over each of them: declarations, planning, rendering without leaking secrets, the one reply shape,
the one error shape, and a transport that can be passed in."""

from __future__ import annotations

import json

import pytest

from gateway import create_app
from gateway.backends import BACKENDS, Backend, Operation
from gateway.canonical import OrderUpdateSchema, UpdateOutcome, load_order_update
from gateway.config import ConnectionSchema, ConnectionSettings, load_settings
from gateway.connections import Connection
from gateway.errors import ValidationFailed
from gateway.replies import READERS
from gateway.runtime import gateway_of
from gateway.transport import BackendReply
from tests.calls import RecordingTransport
from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_SERVICE_PATH,
    SPEED4TRADE_NAMESPACE,
    SPEED4TRADE_SERVICE_PATH,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)

# One valid canonical value per field, to add a field a backend may not carry to an otherwise valid update.
SAMPLE_VALUES = {
    "status": "open",
    "status_code": 425,
    "delivery_date": "2026-12-01T00:00:00",
    "new_order_number": "N-1",
    "waybill": "WB",
    "transporter_order_number": "TON",
    "printed_at": "2026-11-23T10:00:00",
    "shipped_at": "2026-11-23T11:00:00",
    "picking_priority": 1,
    "warehouse_instruction": "Careful",
    "return_waybill": "RWB",
    "service_point_code": "SP",
    "way_of_delivery": {"code": "DHL"},
    "order_number_prefix": "T2-",
    "mandator_id": 1,
    "shipments": [{"tracking_number": "T", "carrier": "DHL"}],
    "payment": {"status_id": 1},
    "acknowledged_at": "2026-11-23",
    "billing_address": {"city": "Berlin"},
    "shipping_address": {"postcode": "10115"},
}
CANONICAL_FIELDS = set(OrderUpdateSchema().fields) - {"connection", "id_type"}

# Per (backend kind, operation): an order the sandbox knows and a valid update of it that the backend's plan
# sends with that operation. Every operation of every registered kind needs one.
VALID_UPDATES = {
    ("ongoing", "UpdateOrder"): ("SO-1001", {"status": "released", "waybill": "WB-1"}),
    ("ongoing", "ProcessOrder"): ("SO-1002", {"status": "canceled"}),
    ("speed4trade", "updateOrderStatus"): (
        "10001", {"status": "shipped", "shipments": [{"tracking_number": "T-1", "carrier": "DHL"}]}),
    ("sellercenter", "UpdateOrderInformation"): (
        "300001", {"shipping_address": {"address1": "Unter den Linden 1", "city": "Berlin"}}),
}
OPERATIONS = sorted(VALID_UPDATES)


def _soap(body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
            f'envelope/"><soap:Body>{body}</soap:Body></soap:Envelope>').encode()


SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
# What each operation's backend answers when the call succeeded, written from the vendors' documents.
SUCCESS_REPLIES = {
    ("ongoing", "UpdateOrder"): BackendReply(200, SOAP_HEADERS, _soap(
        '<UpdateOrderResponse xmlns="http://ongoingsystems.se/WSI"><UpdateOrderResult><Success>true</Success>'
        '<OrderId>1001</OrderId></UpdateOrderResult></UpdateOrderResponse>')),
    ("ongoing", "ProcessOrder"): BackendReply(200, SOAP_HEADERS, _soap(
        '<ProcessOrderResponse xmlns="http://ongoingsystems.se/WSI"><ProcessOrderResult>'
        '<GoodsOwnerOrderNumber>SO-1002</GoodsOwnerOrderNumber><OrderId>1002</OrderId><InOrderId>0</InOrderId>'
        '<ArticleDefId xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
        '<Success>true</Success></ProcessOrderResult></ProcessOrderResponse>')),
    ("speed4trade", "updateOrderStatus"): BackendReply(200, SOAP_HEADERS, _soap(
        f'<ns1:updateOrderStatusResponse xmlns:ns1="{SPEED4TRADE_NAMESPACE}"><return>'
        '&lt;response method="updateOrderStatus"&gt;&lt;report return_code="0"/&gt;&lt;/response&gt;'
        '</return></ns1:updateOrderStatusResponse>')),
    ("sellercenter", "UpdateOrderInformation"): BackendReply(
        200, {"Content-Type": "application/json"},
        json.dumps({"SuccessResponse": {"Head": {"RequestAction": "UpdateOrderInformation"}, "Body": ""}}).encode()),
}


def settings_table(kind: str) -> dict:
    """A minimal valid connection table for a backend kind: its required fields filled with placeholders."""
    schema = BACKENDS[kind].settings_schema()
    placeholders = {"mandator_id": 1, "soap_version": "1.1", "api_key": "key", "namespace": SPEED4TRADE_NAMESPACE}
    required = {name: placeholders.get(name, "X") for name, field in schema.fields.items()
                if field.required and name not in ConnectionSchema._declared_fields}
    return {"backend": kind, "url": "http://127.0.0.1:9/", "username": "user", "password": "password", **required}


def settings_for(kind: str) -> ConnectionSettings:
    """The loaded settings of settings_table's connection, named `contract`."""
    return load_settings({"connections": {"contract": settings_table(kind)}}, "<contract>",
                         BACKENDS).connections["contract"]


@pytest.fixture(params=sorted(BACKENDS))
def connection(request):
    instance = Connection(settings_for(request.param), BACKENDS[request.param])
    yield instance
    instance.close()


@pytest.fixture(params=OPERATIONS, ids=lambda key: f"{key[0]}-{key[1]}")
def operation_case(request):
    kind, name = request.param
    instance = Connection(settings_for(kind), BACKENDS[kind])
    order_id, document = VALID_UPDATES[request.param]
    yield instance, instance.backend.operations[name], load_order_update(order_id, document)
    instance.close()


def test_the_registry_is_keyed_by_kind_and_every_operation_is_covered_here():
    operations = {(kind, name) for kind, backend in BACKENDS.items()
                  for name in (operation.name for operation in backend.operation_classes)}
    assert operations == set(VALID_UPDATES) == set(SUCCESS_REPLIES)
    for kind, backend_class in BACKENDS.items():
        assert issubclass(backend_class, Backend)
        assert backend_class.kind == kind
        assert issubclass(backend_class.settings_schema, ConnectionSchema)
        assert all(issubclass(operation, Operation) for operation in backend_class.operation_classes)
    assert set(SAMPLE_VALUES) == CANONICAL_FIELDS


def test_declarations_speak_canonical_names(connection):
    backend = connection.backend
    assert backend.supported_fields <= CANONICAL_FIELDS
    assert backend.id_types
    for operation in backend.operations.values():
        assert operation.carries and operation.carries <= backend.supported_fields
        assert operation.reply_format in READERS
        assert isinstance(operation.idempotent, bool)
        assert operation.call_size >= 1


def test_the_plan_picks_the_operation(operation_case):
    connection, operation, update = operation_case
    assert connection.check(update).operation is operation


def test_a_valid_update_renders_without_the_secret_in_a_dry_run(operation_case):
    connection, operation, update = operation_case
    (request,) = connection.dry_run([connection.check(update)])
    assert operation.name in request.body.decode() + request.url
    assert request.method == "POST" and request.url.startswith("http://127.0.0.1:9/")
    assert request.body and b"password" not in request.body and "password" not in str(request.headers)
    assert "key" not in request.url.replace("Signature=********", "")


def test_credentials_reach_the_rendering_from_the_connection(operation_case):
    connection, operation, update = operation_case
    transport = RecordingTransport(SUCCESS_REPLIES[connection.kind, operation.name])
    connection.transport = transport
    connection.send([connection.check(update)])
    (sent,) = transport.sent
    # Ongoing logs in inside the body; the others authenticate on the transport (Basic, signature).
    assert (b"<Password>password</Password>" in sent.body) == (connection.kind == "ongoing")


def test_every_field_the_backend_cannot_carry_is_refused_by_name(connection):
    unsupported = sorted(CANONICAL_FIELDS - connection.backend.supported_fields)
    assert unsupported, "every backend leaves some canonical field to the others"
    (order_id, document), = [case for key, case in VALID_UPDATES.items() if key[0] == connection.kind][:1]
    for field in unsupported:
        document_with_field = {**document, field: SAMPLE_VALUES[field]}
        if field == "status_code" and "status" in document_with_field:
            del document_with_field["status"]  # the schema allows only one of the two
        with pytest.raises(ValidationFailed) as caught:
            connection.check(load_order_update(order_id, document_with_field))
        (message,) = caught.value.errors[field]
        assert message.startswith(f"Not supported by backend {connection.kind!r} (connection 'contract')")


def test_an_update_without_changes_is_refused_naming_what_the_backend_needs(connection):
    with pytest.raises(ValidationFailed) as caught:
        connection.check(load_order_update("1001", {"id_type": next(iter(connection.backend.id_types))}))
    if connection.kind == "speed4trade":  # updateOrderStatus always sets a status: that is what is missing
        assert list(caught.value.errors) == ["status"] and "Required" in caught.value.errors["status"][0]
    else:
        assert caught.value.errors == {"body": ["Nothing to update: give at least one field to change."]}


def test_every_id_type_renders_in_every_operation(operation_case):
    connection, operation, update = operation_case
    for id_type in connection.backend.id_types:
        extra = {"order_number_prefix": "P-"} if id_type == "order_number_and_prefix" else {}
        document = {**dict(update.fields), "id_type": id_type, **extra}
        planned = connection.check(load_order_update("1001", document))
        assert planned.operation is operation
        (request,) = connection.dry_run([planned])
        assert b"1001" in request.body


def test_every_operation_parses_its_success_reply_into_one_outcome_per_update(operation_case):
    connection, operation, update = operation_case
    connection.transport = RecordingTransport(SUCCESS_REPLIES[connection.kind, operation.name])
    (outcome,) = connection.send([connection.check(update)])
    assert isinstance(outcome, UpdateOutcome) and outcome.message


@pytest.mark.parametrize(("reply", "status", "fragment"), [
    (BackendReply(401, {"Content-Type": "text/html"}, b"<html>no</html>"), 502, "refused the gateway's credentials"),
    (BackendReply(503, {"Content-Type": "text/html", "Retry-After": "7"}, b"<html>busy</html>"), 503, "overloaded"),
    (BackendReply(200, {"Content-Type": "text/plain"}, b"hello"), 502, "not"),
    (BackendReply(200, {}, b""), 502, "empty reply"),
])
def test_every_operation_classifies_bad_replies_alike(operation_case, reply, status, fragment):
    connection, _, update = operation_case
    connection.transport = RecordingTransport(reply)
    (error,) = connection.send([connection.check(update)])
    assert error.status == status and fragment in error.detail, error.detail
    assert error.connection == "contract"
    assert error.retry_after == reply.headers.get("Retry-After")


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_a_transport_passed_to_the_app_carries_every_call(kind, tmp_path):
    key = next(key for key in OPERATIONS if key[0] == kind)
    transport = RecordingTransport(SUCCESS_REPLIES[key])
    settings = {"gateway": {"allow_anonymous": True}, "connections": {"contract": settings_table(kind)},
                "events": {"database": str(tmp_path / "e.sqlite3"), "queue_database": str(tmp_path / "q.sqlite3")}}
    app = create_app(settings, transports={"contract": transport})
    try:
        order_id, document = VALID_UPDATES[key]
        reply = app.test_client().patch(f"/orders/{order_id}", json={"connection": "contract", **document})
        assert reply.status_code == 200, reply.get_json()
        assert reply.get_json()["operation"] == key[1]
        assert len(transport.sent) == 1
    finally:
        gateway_of(app).close()
    assert transport.closed


@pytest.fixture
def all_backends_client(make_gateway, sandbox_url):
    return make_gateway({"connections": {
        "ongoing": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH),
        "speed4trade": speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH),
        "sellercenter": sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH),
    }}).test_client()


@pytest.mark.parametrize("key", OPERATIONS, ids=lambda key: f"{key[0]}-{key[1]}")
def test_every_operation_answers_in_the_one_normalized_shape(all_backends_client, key):
    kind, name = key
    order_id, document = VALID_UPDATES[key]
    reply = all_backends_client.patch(f"/orders/{order_id}", json={"connection": kind, **document},
                                      headers={"X-Request-ID": f"contract-{kind}"})
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert list(body) == ["order_id", "connection", "backend", "operation", "updated", "backend_order_id",
                          "message", "request_id"]
    assert (body["order_id"], body["connection"], body["backend"], body["operation"]) == (order_id, kind, kind, name)
    assert body["updated"] == document
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == f"contract-{kind}"


@pytest.mark.parametrize("key", OPERATIONS, ids=lambda key: f"{key[0]}-{key[1]}")
def test_every_operation_reports_an_unknown_order_as_404(all_backends_client, key):
    kind, _ = key
    _, document = VALID_UPDATES[key]
    reply = all_backends_client.patch("/orders/999999", json={"connection": kind, **document})
    assert reply.status_code == 404, reply.get_json()
    problem = reply.get_json()
    assert problem["backend"]["connection"] == kind
    assert problem["backend"]["message"]
