"""The contract every registered backend keeps with the REST layer, run over each of them."""

from __future__ import annotations

import pytest

from gateway.backends import BACKENDS, Backend
from gateway.canonical import OrderUpdateSchema, load_order_update
from gateway.config import ConnectionSchema, ConnectionSettings, load_settings
from gateway.errors import ValidationFailed
from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_SERVICE_PATH,
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

# Per backend kind: an order the sandbox knows and a valid update of it. Every registered kind needs one.
VALID_UPDATES = {
    "ongoing": ("SO-1001", {"status": "released", "waybill": "WB-1"}),
    "speed4trade": ("10001", {"status": "shipped", "shipments": [{"tracking_number": "T-1", "carrier": "DHL"}]}),
    "sellercenter": ("300001", {"shipping_address": {"address1": "Unter den Linden 1", "city": "Berlin"}}),
}


def settings_for(kind: str) -> ConnectionSettings:
    """Minimal valid settings for a backend kind: its required fields filled with placeholders."""
    schema = BACKENDS[kind].settings_schema()
    placeholders = {"mandator_id": 1, "soap_version": "1.1", "api_key": "key"}
    required = {name: placeholders.get(name, "X") for name, field in schema.fields.items()
                if field.required and name not in ConnectionSchema._declared_fields}
    table = {"backend": kind, "url": "http://127.0.0.1:9/", "username": "user", "password": "password", **required}
    return load_settings({"connections": {"contract": table}}, "<contract>", BACKENDS).connections["contract"]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    instance = BACKENDS[request.param](settings_for(request.param))
    yield instance
    instance.close()


def test_the_registry_is_keyed_by_kind_and_every_kind_is_covered_here():
    assert set(VALID_UPDATES) == set(BACKENDS)
    for kind, backend_class in BACKENDS.items():
        assert issubclass(backend_class, Backend)
        assert backend_class.kind == kind
        assert issubclass(backend_class.settings_schema, ConnectionSchema)
    assert set(SAMPLE_VALUES) == CANONICAL_FIELDS


def test_declarations_speak_canonical_names(backend):
    assert backend.supported_fields <= CANONICAL_FIELDS
    assert backend.id_types
    assert set(backend.refused_statuses) <= set(backend.status_map)


def test_a_valid_update_renders_without_the_secret(backend):
    order_id, document = VALID_UPDATES[backend.kind]
    request = backend.dry_run_view(backend.prepare_update(load_order_update(order_id, document), mask_credentials=True))
    assert request.method == "POST" and request.url.startswith("http://127.0.0.1:9/")
    assert request.body and b"password" not in request.body and "password" not in str(request.headers)
    assert "key" not in request.url.replace("Signature=********", "")


def test_every_field_the_backend_cannot_carry_is_refused_by_name(backend):
    unsupported = sorted(CANONICAL_FIELDS - backend.supported_fields)
    assert unsupported, "every backend leaves some canonical field to the others"
    order_id, document = VALID_UPDATES[backend.kind]
    for field in unsupported:
        assert_refused_by_name(backend, order_id, document, field)


def assert_refused_by_name(backend, order_id, document, field):
    document = {**document, field: SAMPLE_VALUES[field]}
    if field == "status_code" and "status" in document:
        del document["status"]  # the schema allows only one of the two
    with pytest.raises(ValidationFailed) as caught:
        backend.prepare_update(load_order_update(order_id, document))
    assert caught.value.errors[field] == [
        f"Not supported by backend {backend.kind!r} (connection 'contract')."
    ]


def test_every_id_type_renders(backend):
    _, document = VALID_UPDATES[backend.kind]
    for id_type in backend.id_types:
        extra = {"order_number_prefix": "P-"} if id_type == "order_number_and_prefix" else {}
        if id_type == "id_sales_order":
            extra = {}
        update = load_order_update("1001", {**document, "id_type": id_type, **extra})
        assert b"1001" in backend.prepare_update(update).body


def test_refused_statuses_carry_a_hint(backend):
    for status, hint in backend.refused_statuses.items():
        with pytest.raises(ValidationFailed) as caught:
            backend.prepare_update(load_order_update("1001", {"status": status}))
        assert caught.value.errors["status"] == [hint]


@pytest.fixture
def all_backends_client(make_gateway, sandbox_url):
    return make_gateway({"connections": {
        "ongoing": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH),
        "speed4trade": speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH),
        "sellercenter": sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH),
    }}).test_client()


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_backend_answers_in_the_one_normalized_shape(all_backends_client, kind):
    order_id, document = VALID_UPDATES[kind]
    reply = all_backends_client.patch(f"/orders/{order_id}", json={"connection": kind, **document},
                                      headers={"X-Request-ID": f"contract-{kind}"})
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert list(body) == ["order_id", "connection", "backend", "updated", "backend_order_id", "message", "request_id"]
    assert (body["order_id"], body["connection"], body["backend"]) == (order_id, kind, kind)
    assert body["updated"] == document
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == f"contract-{kind}"


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_backend_reports_an_unknown_order_as_404(all_backends_client, kind):
    _, document = VALID_UPDATES[kind]
    reply = all_backends_client.patch("/orders/999999", json={"connection": kind, **document})
    assert reply.status_code == 404
    problem = reply.get_json()
    assert problem["backend"]["connection"] == kind
    assert problem["backend"]["message"]
