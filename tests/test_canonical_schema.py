"""The canonical schema: every field's type, bounds and the cross-field rules, as a table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from marshmallow import Schema, ValidationError, fields, validate

from gateway.backends.sellercenter.update_order_information import WireAddressSchema, WireOrderSchema
from gateway.canonical import OrderUpdateSchema, WayOfDelivery, flatten_errors, load_order_update
from gateway.canonical.schema import AddressSchema, PaymentSchema, ShipmentSchema, SparseNested, WayOfDeliverySchema
from tests.refusals import refusal

# marshmallow's own checks, asked what they say (tests.refusals): the gateway's bounds, never marshmallow's wording
STRING = refusal(fields.String(), 300)
INTEGER = refusal(fields.Integer(strict=True), "300")
DATETIME = refusal(fields.DateTime(format="iso"), "tomorrow")
BOOLEAN = refusal(fields.Boolean(), "maybe")
REQUIRED = refusal(fields.String(required=True))
NULL = refusal(fields.String(), None)
UNKNOWN = refusal(Schema(), {"colour": "red"})
NOT_AN_OBJECT = refusal(fields.Nested(Schema), "DHL")
INT32 = validate.Range(min=-(2**31), max=2**31 - 1)
NON_NEGATIVE_INT32 = validate.Range(min=0, max=2**31 - 1)


def too_long(max_length: int, min_length: int | None = None) -> str:
    """What marshmallow's Length check with these bounds says of a text one character too long."""
    return refusal(validate.Length(min=min_length, max=max_length), "x" * (max_length + 1))


def errors_of(document) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        load_order_update("SO-1", document)
    return flatten_errors(caught.value.messages)


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ({"status": 300}, "status", STRING),
        ({"status": ""}, "status", refusal(validate.Length(min=1, max=50), "")),
        ({"status_code": "300"}, "status_code", INTEGER),
        ({"status_code": 3.5}, "status_code", INTEGER),
        ({"status_code": -1}, "status_code", refusal(NON_NEGATIVE_INT32, -1)),
        ({"status": "released", "status_code": 300}, "status_code", "not both"),
        ({"delivery_date": "tomorrow"}, "delivery_date", DATETIME),
        ({"printed_at": "2026-13-01T00:00:00"}, "printed_at", DATETIME),
        ({"shipped_at": 1700000000}, "shipped_at", DATETIME),
        ({"shipped_at": "0756-08-26T10:49:28.5-16:07"}, "shipped_at", "within -14:00 and +14:00"),
        ({"printed_at": "2026-11-23T10:00:00+01:00:30"}, "printed_at", "whole minutes"),
        ({"acknowledged_at": "2026-11-23T10:00:00+15:00"}, "acknowledged_at", "within -14:00 and +14:00"),
        ({"new_order_number": ""}, "new_order_number", refusal(validate.Length(min=1, max=50), "")),
        ({"new_order_number": "x" * 51}, "new_order_number", too_long(50, min_length=1)),
        ({"waybill": "x" * 51}, "waybill", too_long(50)),
        ({"transporter_order_number": "x" * 151}, "transporter_order_number", too_long(150)),
        ({"picking_priority": "high"}, "picking_priority", INTEGER),
        ({"picking_priority": 2**31}, "picking_priority", refusal(INT32, 2**31)),
        ({"warehouse_instruction": "x" * 501}, "warehouse_instruction", too_long(500)),
        ({"return_waybill": "x" * 51}, "return_waybill", too_long(50)),
        ({"service_point_code": "x" * 51}, "service_point_code", too_long(50)),
        ({"way_of_delivery": "DHL"}, "way_of_delivery", NOT_AN_OBJECT),
        ({"way_of_delivery": {}}, "way_of_delivery.code", REQUIRED),
        ({"way_of_delivery": {"code": "x" * 301}}, "way_of_delivery.code", too_long(300, min_length=1)),
        ({"way_of_delivery": {"code": "D", "name": "x" * 101}}, "way_of_delivery.name", too_long(100)),
        ({"way_of_delivery": {"code": "D", "create_if_missing": "maybe"}}, "way_of_delivery.create_if_missing",
         BOOLEAN),
        ({"way_of_delivery": {"code": "D", "colour": "red"}}, "way_of_delivery.colour", UNKNOWN),
        ({"waybill": None}, "waybill", NULL),
        ({"colour": "red"}, "colour", UNKNOWN),
        ({"connection": ""}, "connection", refusal(validate.Length(min=1, max=100), "")),
        ({"shipments": [{"tracking_number": "T"}] * 101}, "shipments", "At most 100 items; got 101."),
        ({"shipments": []}, "shipments", "At least 1 item."),
        (["status", "released"], "body", "must be a JSON object"),
        ("released", "body", "must be a JSON object"),
    ],
)
def test_invalid_documents_name_the_field_and_the_reason(document, path, fragment):
    """`fragment` is the gateway's own wording, or what marshmallow's check says (never its wording written out)."""
    errors = errors_of(document)
    assert path in errors, errors
    assert any(fragment in message for message in errors[path]), errors[path]


def test_every_field_loads_into_python_values():
    update = load_order_update("SO-1", {
        "connection": "ongoing-demo",
        "id_type": "order_number",
        "status": "released",
        "delivery_date": "2026-12-01",
        "new_order_number": "SO-1-B",
        "waybill": "WB1",
        "transporter_order_number": "TON-1",
        "printed_at": "2026-11-23T10:15:00+01:00",
        "shipped_at": "2026-11-24T08:00:00Z",
        "picking_priority": 5,
        "warehouse_instruction": "Fragile",
        "return_waybill": "RWB1",
        "service_point_code": "SP-9",
        "way_of_delivery": {"code": "DHL-PARCEL", "name": "DHL Parcel", "create_if_missing": True},
    })
    assert update.connection == "ongoing-demo"
    assert update.id_type == "order_number"
    assert "connection" not in update.changes and "id_type" not in update.changes
    assert update.changes["delivery_date"] == datetime(2026, 12, 1)
    assert update.changes["printed_at"] == datetime(2026, 11, 23, 10, 15, tzinfo=timezone(timedelta(hours=1)))
    assert update.changes["shipped_at"].utcoffset() == timedelta(0)
    assert update.changes["picking_priority"] == 5
    assert update.changes["way_of_delivery"] == WayOfDelivery("DHL-PARCEL", "DHL Parcel", True)
    assert update.fields["delivery_date"] == "2026-12-01"
    assert len(update.changes) == 12


def test_way_of_delivery_defaults_to_find_only():
    update = load_order_update("SO-1", {"way_of_delivery": {"code": "POSTNORD"}})
    assert update.changes["way_of_delivery"] == WayOfDelivery("POSTNORD", None, False)


def test_empty_free_text_clears_a_value():
    update = load_order_update("SO-1", {"warehouse_instruction": "", "waybill": ""})
    assert update.changes == {"warehouse_instruction": "", "waybill": ""}


@pytest.mark.parametrize(
    "document",
    [
        {"status": "released"},
        {"connection": "ongoing-demo", "status": "released"},
        {"status": "released", "colour": "red"},
        {"status": 300, "colour": "red"},
        {"status": "released", "status_code": 300},
        {"status": "released", "status_code": 300, "colour": "red"},
        {"status": "", "status_code": 300},
        {"status_code": 300, "waybill": None},
        {"way_of_delivery": {"code": "D", "colour": "red"}, "waybill": "WB"},
        {"shipments": [{"tracking_number": "T", "carrier": "DHL"}], "status": "shipped", "mandator_id": 2},
        {"colour": "red", "size": "L"},
        {},
    ],
)
def test_the_schema_narrowed_to_a_document_loads_and_refuses_as_the_whole_schema(document):
    """load_order_update loads with a schema narrowed to the fields given; what it keeps or refuses, and with which
    messages, is what the whole OrderUpdateSchema says."""
    try:
        expected = OrderUpdateSchema().load(document)
    except ValidationError as error:
        with pytest.raises(ValidationError) as caught:
            load_order_update("SO-1", document)
        assert caught.value.messages == error.messages
    else:
        update = load_order_update("SO-1", document)
        loaded = {**update.changes, **update.identification}
        loaded.update({name: value for name, value in (("connection", update.connection), ("id_type", update.id_type))
                       if value is not None})
        assert loaded == expected


@pytest.mark.parametrize(
    ("nested", "value"),
    [
        (AddressSchema, {"address1": "Hauptstraße 5", "city": "Hamburg"}),
        (AddressSchema, {"city": "Hamburg", "first_name": "Jo", "colour": "red"}),
        (AddressSchema, {}),
        (AddressSchema, {"city": 5, "postcode": "x" * 256}),
        (AddressSchema, "Hamburg"),
        (WayOfDeliverySchema, {"code": "DHL"}),
        (WayOfDeliverySchema, {"name": "DHL Parcel"}),
        (WayOfDeliverySchema, {"code": "DHL", "create_if_missing": True, "colour": "red"}),
        (ShipmentSchema, {"tracking_number": "T", "carrier": "DHL"}),
        (ShipmentSchema, {"carrier": "DHL"}),
        (PaymentSchema, {"status_id": 1}),
        (PaymentSchema, {"status_id": 1, "status": "PAID"}),
        (PaymentSchema, {}),
        (WireAddressSchema, {"address1": "Hauptstraße 5", "city": "Hamburg"}),
        (WireAddressSchema, {"phone": 5}),
        (WireOrderSchema, {"id_sales_order": 7, "address_shipping": {"city": "Hamburg", "address1": "Hauptstraße 5"}}),
        (WireOrderSchema, {"address_billing": {"city": None}}),
    ],
)
def test_a_sparse_nested_field_loads_and_refuses_as_nested(nested, value):
    """SparseNested narrows the nested schema to the members an object gives; what it loads (in which order) or
    refuses, with which messages, is what fields.Nested says."""
    plain = Schema.from_dict({"member": fields.Nested(nested)})()
    sparse = Schema.from_dict({"member": SparseNested(nested)})()
    try:
        expected = plain.load({"member": value})
    except ValidationError as error:
        with pytest.raises(ValidationError) as caught:
            sparse.load({"member": value})
        assert caught.value.messages == error.messages
    else:
        loaded = sparse.load({"member": value})
        assert loaded == expected
        if isinstance(expected["member"], dict):
            assert list(loaded["member"]) == list(expected["member"])
