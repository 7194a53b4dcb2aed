"""The contract every registered backend keeps with the REST layer, run over each of them."""

from __future__ import annotations

import pytest

from gateway.backends import BACKENDS, Backend
from gateway.canonical import OrderUpdateSchema, load_order_update
from gateway.config import ConnectionSchema, ConnectionSettings, load_settings
from gateway.errors import ValidationFailed

# One valid canonical value per field, to build an update of each field a backend supports.
SAMPLE_VALUES = {
    "status": None,  # taken from the backend's own status map
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
}
CANONICAL_FIELDS = set(OrderUpdateSchema().fields) - {"connection", "id_type"}


def settings_for(kind: str) -> ConnectionSettings:
    """Minimal valid settings for a backend kind: its required fields filled with placeholders."""
    schema = BACKENDS[kind].settings_schema()
    required = {name: "X" for name, field in schema.fields.items()
                if field.required and name not in ConnectionSchema._declared_fields}
    table = {"backend": kind, "url": "http://127.0.0.1:9/", "username": "user", "password": "password", **required}
    return load_settings({"connections": {"contract": table}}, "<contract>", BACKENDS).connections["contract"]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    instance = BACKENDS[request.param](settings_for(request.param))
    yield instance
    instance.close()


def test_the_registry_is_keyed_by_kind():
    for kind, backend_class in BACKENDS.items():
        assert issubclass(backend_class, Backend)
        assert backend_class.kind == kind
        assert issubclass(backend_class.settings_schema, ConnectionSchema)


def test_declarations_speak_canonical_names(backend):
    assert backend.supported_fields <= CANONICAL_FIELDS
    assert backend.id_types
    assert set(backend.refused_statuses) <= set(backend.status_map)


@pytest.mark.parametrize("field", sorted(CANONICAL_FIELDS))
def test_each_field_is_either_rendered_or_refused_by_name(backend, field):
    value = SAMPLE_VALUES[field]
    if field == "status":
        value = next(name for name in backend.status_map if name not in backend.refused_statuses)
    update = load_order_update("1001", {field: value})
    if field in backend.supported_fields:
        request = backend.prepare_update(update, mask_credentials=True)
        assert request.method in ("POST", "PUT", "PATCH")
        assert request.body and b"password" not in request.body
    else:
        with pytest.raises(ValidationFailed) as caught:
            backend.prepare_update(update)
        assert f"Not supported by backend {backend.kind!r}" in caught.value.errors[field][0]


def test_every_id_type_renders(backend):
    for id_type in backend.id_types:
        status = next(name for name in backend.status_map if name not in backend.refused_statuses)
        request = backend.prepare_update(load_order_update("1001", {"id_type": id_type, "status": status}))
        assert b"1001" in request.body


def test_refused_statuses_carry_a_hint(backend):
    for status, hint in backend.refused_statuses.items():
        with pytest.raises(ValidationFailed) as caught:
            backend.prepare_update(load_order_update("1001", {"status": status}))
        assert caught.value.errors["status"] == [hint]
