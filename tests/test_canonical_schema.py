"""The canonical schema: every field's type, bounds and the cross-field rules, as a table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from marshmallow import ValidationError

from gateway.canonical import WayOfDelivery, flatten_errors, load_order_update


def errors_of(document) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        load_order_update("SO-1", document)
    return flatten_errors(caught.value.messages)


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ({"status": 300}, "status", "Not a valid string"),
        ({"status": ""}, "status", "Length must be between 1 and 50"),
        ({"status_code": "300"}, "status_code", "Not a valid integer"),
        ({"status_code": 3.5}, "status_code", "Not a valid integer"),
        ({"status_code": -1}, "status_code", "greater than or equal to 0"),
        ({"status": "released", "status_code": 300}, "status_code", "not both"),
        ({"delivery_date": "tomorrow"}, "delivery_date", "Not a valid datetime"),
        ({"printed_at": "2026-13-01T00:00:00"}, "printed_at", "Not a valid datetime"),
        ({"shipped_at": 1700000000}, "shipped_at", "Not a valid datetime"),
        ({"shipped_at": "0756-08-26T10:49:28.5-16:07"}, "shipped_at", "within -14:00 and +14:00"),
        ({"printed_at": "2026-11-23T10:00:00+01:00:30"}, "printed_at", "whole minutes"),
        ({"acknowledged_at": "2026-11-23T10:00:00+15:00"}, "acknowledged_at", "within -14:00 and +14:00"),
        ({"new_order_number": ""}, "new_order_number", "Length must be between 1 and 50"),
        ({"new_order_number": "x" * 51}, "new_order_number", "Length must be between 1 and 50"),
        ({"waybill": "x" * 51}, "waybill", "Longer than maximum length 50"),
        ({"transporter_order_number": "x" * 151}, "transporter_order_number", "maximum length 150"),
        ({"picking_priority": "high"}, "picking_priority", "Not a valid integer"),
        ({"picking_priority": 2**31}, "picking_priority", "less than or equal to 2147483647"),
        ({"warehouse_instruction": "x" * 501}, "warehouse_instruction", "maximum length 500"),
        ({"return_waybill": "x" * 51}, "return_waybill", "maximum length 50"),
        ({"service_point_code": "x" * 51}, "service_point_code", "maximum length 50"),
        ({"way_of_delivery": "DHL"}, "way_of_delivery", "Invalid input type"),
        ({"way_of_delivery": {}}, "way_of_delivery.code", "Missing data for required field"),
        ({"way_of_delivery": {"code": "x" * 301}}, "way_of_delivery.code", "Length must be between 1 and 300"),
        ({"way_of_delivery": {"code": "D", "name": "x" * 101}}, "way_of_delivery.name", "maximum length 100"),
        ({"way_of_delivery": {"code": "D", "create_if_missing": "maybe"}}, "way_of_delivery.create_if_missing",
         "Not a valid boolean"),
        ({"way_of_delivery": {"code": "D", "colour": "red"}}, "way_of_delivery.colour", "Unknown field"),
        ({"waybill": None}, "waybill", "may not be null"),
        ({"colour": "red"}, "colour", "Unknown field"),
        ({"connection": ""}, "connection", "Length must be between 1 and 100"),
        ({"shipments": [{"tracking_number": "T"}] * 101}, "shipments", "At most 100 items; got 101."),
        ({"shipments": []}, "shipments", "At least 1 item."),
        (["status", "released"], "body", "must be a JSON object"),
        ("released", "body", "must be a JSON object"),
    ],
)
def test_invalid_documents_name_the_field_and_the_reason(document, path, fragment):
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
