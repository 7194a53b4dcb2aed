"""The marshmallow schema of the canonical order-update document; unknown fields are refused.

Lengths and ranges are those of the strictest backend that carries each field (Ongoing WMS's UpdateOrder);
which fields and values a particular connection accepts is the backend's own check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from gateway.canonical.model import OrderUpdate, WayOfDelivery

INT32 = validate.Range(min=-(2**31), max=2**31 - 1)
NON_NEGATIVE_INT32 = validate.Range(min=0, max=2**31 - 1)


def _text(max_length: int, *, min_length: int = 0) -> fields.String:
    """A string field bounded as the backend documentation bounds it."""
    if min_length:
        return fields.String(validate=validate.Length(min=min_length, max=max_length))
    return fields.String(validate=validate.Length(max=max_length))


class WayOfDeliverySchema(Schema):
    """The way of delivery (carrier product) to set on the order."""

    class Meta:
        unknown = RAISE

    code = fields.String(required=True, validate=validate.Length(min=1, max=300))
    name = _text(100)
    create_if_missing = fields.Boolean(load_default=False)

    @post_load
    def make_way_of_delivery(self, data: dict, **_: Any) -> WayOfDelivery:
        """Turn the loaded mapping into a WayOfDelivery."""
        return WayOfDelivery(**data)


class OrderUpdateSchema(Schema):
    """The canonical body of PATCH /orders/<id>."""

    class Meta:
        unknown = RAISE
        ordered = True

    connection = fields.String(validate=validate.Length(min=1, max=100))
    id_type = fields.String(validate=validate.Length(min=1, max=50))

    status = fields.String(validate=validate.Length(min=1, max=50))
    status_code = fields.Integer(strict=True, validate=NON_NEGATIVE_INT32)
    delivery_date = fields.DateTime(format="iso")
    new_order_number = _text(50, min_length=1)
    waybill = _text(50)
    transporter_order_number = _text(150)
    printed_at = fields.DateTime(format="iso")
    shipped_at = fields.DateTime(format="iso")
    picking_priority = fields.Integer(strict=True, validate=INT32)
    warehouse_instruction = _text(500)
    return_waybill = _text(50)
    service_point_code = _text(50)
    way_of_delivery = fields.Nested(WayOfDeliverySchema)

    @validates_schema
    def check_status_given_once(self, data: dict, **_: Any) -> None:
        """A status is given either canonically or as the backend's own code, never both."""
        if "status" in data and "status_code" in data:
            raise ValidationError("Give either status or status_code, not both.", field_name="status_code")


ROUTING_FIELDS = ("connection", "id_type")
_SCHEMA = OrderUpdateSchema()


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error messages into {"a.b.0.c": [messages]} field paths."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = "body" if key == "_schema" and not prefix else str(key)
            if key == "_schema" and prefix:
                path = prefix
            else:
                path = f"{prefix}.{name}" if prefix else name
            for sub_path, sub_messages in flatten_errors(value, path).items():
                flat.setdefault(sub_path, []).extend(sub_messages)
    elif isinstance(messages, list | tuple) and all(isinstance(m, str) for m in messages):
        flat[prefix or "body"] = list(messages)
    elif isinstance(messages, list | tuple):
        for index, value in enumerate(messages):
            flat.update(flatten_errors(value, f"{prefix}.{index}" if prefix else str(index)))
    else:
        flat[prefix or "body"] = [str(messages)]
    return flat


def load_order_update(order_id: str, document: Any) -> OrderUpdate:
    """Validate a canonical document for the order `order_id`; raises ValidationError with field paths."""
    if not isinstance(document, Mapping):
        raise ValidationError({"body": ["The body must be a JSON object."]})
    data = _SCHEMA.load(document)
    changes = {name: value for name, value in data.items() if name not in ROUTING_FIELDS}
    if not changes:
        raise ValidationError({"body": ["Nothing to update: give at least one field to change."]})
    sent = {name: document[name] for name in changes}
    return OrderUpdate(
        order_id=order_id,
        connection=data.get("connection"),
        id_type=data.get("id_type"),
        changes=changes,
        fields=sent,
    )
