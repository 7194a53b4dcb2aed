"""The marshmallow schema of the canonical order-update document; unknown fields are refused.

Lengths and ranges are those of the strictest backend that documents them (Ongoing WMS's UpdateOrder; where
no backend documents a limit, 255); which fields and values a connection accepts is its backend's own check.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any, ClassVar

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, missing, post_load, validate, validates_schema

from gateway.canonical.model import OrderUpdate, Payment, Shipment, WayOfDelivery

INT32 = validate.Range(min=-(2**31), max=2**31 - 1)
# Characters no XML 1.0 document may hold (JSON may): C0 controls but tab/newline/return, lone surrogates, FFFE/F.
_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def check_text(value: str) -> None:
    """Refuse text that no backend's wire format can carry."""
    if _NOT_XML_TEXT.search(value):
        raise ValidationError("Contains control characters (or unpaired surrogates) that cannot be sent.")


class Text(fields.String):
    """A string that every backend's wire format can carry."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        check_text(text)
        return text

NON_NEGATIVE_INT32 = validate.Range(min=0, max=2**31 - 1)


def _text(max_length: int, *, min_length: int = 0) -> fields.String:
    """A string field bounded as the backend documentation bounds it."""
    if min_length:
        return Text(validate=validate.Length(min=min_length, max=max_length))
    return Text(validate=validate.Length(max=max_length))


MAX_UTC_OFFSET = timedelta(hours=14)


def check_offset(value: datetime) -> None:
    """Offsets beyond ±14:00, or with seconds, exist in Python but in no wire format the backends speak."""
    offset = value.utcoffset()
    if offset is not None and (abs(offset) > MAX_UTC_OFFSET or offset.seconds % 60 or offset.microseconds):
        raise ValidationError("The UTC offset must be whole minutes within -14:00 and +14:00.")


class Timestamp(fields.DateTime):
    """An ISO 8601 datetime (a date alone means its midnight) with a real-world UTC offset, if any."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        loaded = super()._deserialize(value, attr, data, **kwargs)
        check_offset(loaded)
        return loaded


class DateOrDateTime(fields.Field):
    """An ISO 8601 date (kept a date) or datetime."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid ISO 8601 date or datetime."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date | datetime:
        if isinstance(value, str):
            try:
                if len(value) == 10:
                    return date.fromisoformat(value)
                loaded = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                check_offset(loaded)
                return loaded
        raise self.make_error("invalid")


class BoundedList(fields.List):
    """A list whose length is checked before any item is: 200,000 items cost one comparison, not 200,000 errors."""

    def __init__(self, inner: fields.Field, *, max_items: int, min_items: int = 0, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.max_items, self.min_items = max_items, min_items

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list:
        if isinstance(value, list | tuple):
            if len(value) > self.max_items:
                raise ValidationError(f"At most {self.max_items} items; got {len(value)}.")
            if len(value) < self.min_items:
                raise ValidationError(f"At least {self.min_items} item{'s' if self.min_items > 1 else ''}.")
        return super()._deserialize(value, attr, data, **kwargs)


class SparseNested(fields.Nested):
    """A Nested field that loads each object with its schema narrowed (`only`) to the declared names the object
    gives and the fields that must still report a missing value or load a default, in declaration order:
    marshmallow's work grows with the members sent, not with every member declared. It loads and refuses as
    fields.Nested does; anything but an object, or a field with only, exclude or many, takes Nested's own path."""

    def _load(self, value: Any, partial: Any = None) -> Any:
        if self.only is not None or self.exclude or self.many or not isinstance(value, Mapping):
            return super()._load(value, partial)
        schema = _narrowed(type(self.schema), frozenset(self.schema.fields).intersection(value))
        try:
            return schema.load(value, unknown=self.unknown, partial=partial)
        except ValidationError as error:
            raise ValidationError(error.messages, valid_data=error.valid_data) from error


@functools.lru_cache(maxsize=512)
def _narrowed(schema_class: type[Schema], given: frozenset[str]) -> Schema:
    """`schema_class` limited to the given names and to its required fields and fields with a load default."""
    declared = schema_class().fields
    return schema_class(only=[name for name, field in declared.items()
                              if name in given or field.required or field.load_default is not missing])


#: parcels one update may carry (Speed4Trade's shipping information)
MAX_SHIPMENTS = 100


class ShipmentSchema(Schema):
    """A parcel: its tracking number and the carrier, by name or by the caller's own carrier id."""

    class Meta:
        unknown = RAISE

    tracking_number = Text(required=True, validate=validate.Length(min=1, max=255))
    carrier = Text(validate=validate.Length(min=1, max=255))
    carrier_external_id = Text(validate=validate.Length(min=1, max=255))

    @post_load
    def make_shipment(self, data: dict, **_: Any) -> Shipment:
        """Turn the loaded mapping into a Shipment."""
        return Shipment(**data)


class PaymentSchema(Schema):
    """A payment state: the backend's numeric status id or its status identifier, exactly one of them."""

    class Meta:
        unknown = RAISE

    status_id = fields.Integer(strict=True, validate=NON_NEGATIVE_INT32)
    status = Text(validate=validate.Length(min=1, max=255))

    @validates_schema
    def check_exactly_one(self, data: dict, **_: Any) -> None:
        """Either status_id or status, not both and not neither."""
        if ("status_id" in data) == ("status" in data):
            raise ValidationError("Give exactly one of status_id and status.", field_name="_schema")

    @post_load
    def make_payment(self, data: dict, **_: Any) -> Payment:
        """Turn the loaded mapping into a Payment."""
        return Payment(**data)


ADDRESS_FIELDS = (
    "first_name", "last_name", "phone", "phone2",
    "address1", "address2", "address3", "address4", "address5",
    "city", "postcode", "country",
)


class AddressSchema(Schema):
    """A postal address; partial: only the fields given change, and at least one must be given."""

    class Meta:
        unknown = RAISE

    first_name = _text(255)
    last_name = _text(255)
    phone = _text(255)
    phone2 = _text(255)
    address1 = _text(255)
    address2 = _text(255)
    address3 = _text(255)
    address4 = _text(255)
    address5 = _text(255)
    city = _text(255)
    postcode = _text(255)
    country = _text(255)

    @validates_schema
    def check_not_empty(self, data: dict, **_: Any) -> None:
        """An empty address changes nothing and is refused."""
        if not data:
            raise ValidationError(f"Give at least one of: {', '.join(ADDRESS_FIELDS)}.", field_name="_schema")


class WayOfDeliverySchema(Schema):
    """The way of delivery (carrier product) to set on the order."""

    class Meta:
        unknown = RAISE

    code = Text(required=True, validate=validate.Length(min=1, max=300))
    name = _text(100)
    create_if_missing = fields.Boolean(load_default=False)

    @post_load
    def make_way_of_delivery(self, data: dict, **_: Any) -> WayOfDelivery:
        """Turn the loaded mapping into a WayOfDelivery."""
        return WayOfDelivery(**data)


class OrderUpdateFieldsSchema(Schema):
    """The canonical body of PATCH /orders/<id>, field by field (OrderUpdateSchema adds the rule across fields)."""

    class Meta:
        unknown = RAISE
        ordered = True

    connection = Text(validate=validate.Length(min=1, max=100))
    id_type = Text(validate=validate.Length(min=1, max=50))
    order_number_prefix = Text(validate=validate.Length(min=1, max=255))
    mandator_id = fields.Integer(strict=True, validate=NON_NEGATIVE_INT32)

    status = Text(validate=validate.Length(min=1, max=50))
    status_code = fields.Integer(strict=True, validate=NON_NEGATIVE_INT32)
    delivery_date = Timestamp(format="iso")
    new_order_number = _text(50, min_length=1)
    waybill = _text(50)
    transporter_order_number = _text(150)
    printed_at = Timestamp(format="iso")
    shipped_at = Timestamp(format="iso")
    picking_priority = fields.Integer(strict=True, validate=INT32)
    warehouse_instruction = _text(500)
    return_waybill = _text(50)
    service_point_code = _text(50)
    way_of_delivery = SparseNested(WayOfDeliverySchema)
    shipments = BoundedList(SparseNested(ShipmentSchema), min_items=1, max_items=MAX_SHIPMENTS)
    payment = SparseNested(PaymentSchema)
    acknowledged_at = DateOrDateTime()
    billing_address = SparseNested(AddressSchema)
    shipping_address = SparseNested(AddressSchema)


class OrderUpdateSchema(OrderUpdateFieldsSchema):
    """The canonical body of PATCH /orders/<id>."""

    @validates_schema
    def check_status_given_once(self, data: dict, **_: Any) -> None:
        """A status is given either canonically or as the backend's own code, never both."""
        if "status" in data and "status_code" in data:
            raise ValidationError("Give either status or status_code, not both.", field_name="status_code")


ROUTING_FIELDS = ("connection", "id_type")
#: fields that help find the order rather than change it
IDENTIFICATION_FIELDS = ("order_number_prefix", "mandator_id")
_NOT_CHANGES = frozenset((*ROUTING_FIELDS, *IDENTIFICATION_FIELDS))
#: the fields OrderUpdateSchema's rule across fields reads: without both, the rule has nothing to refuse
_STATUS_FIELDS = frozenset({"status", "status_code"})
_SCHEMA = OrderUpdateSchema()
_DECLARED = frozenset(_SCHEMA.fields)


@functools.lru_cache(maxsize=256)
def _schema_of(present: frozenset[str], only_declared: bool) -> OrderUpdateFieldsSchema:
    """The schema limited to the fields a document gives (`only`): marshmallow's work grows with the fields sent,
    not with every field of every backend. A name the document gives that no backend knows stays unknown (refused
    as before); at most 256 such schemas are kept, whatever combinations are sent.

    Marshmallow looks for unknown names only where the document has some (`only_declared` is False), and runs the
    rule across fields only where it can refuse something: it calls no schema validator of a schema without one.
    """
    if not present:
        return _SCHEMA
    schema_class = OrderUpdateSchema if present >= _STATUS_FIELDS else OrderUpdateFieldsSchema
    return schema_class(only=sorted(present), unknown=EXCLUDE if only_declared else RAISE)


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
    """Validate a canonical document for the order `order_id`; raises ValidationError with field paths.

    An update without changes loads: whether that is "nothing to update" or "status is required" is the
    connection's backend's to say.
    """
    if not isinstance(document, Mapping):
        raise ValidationError({"body": ["The body must be a JSON object."]})
    try:
        check_text(order_id)
    except ValidationError as error:
        raise ValidationError({"id": error.messages}) from None
    present = _DECLARED.intersection(document)
    data = _schema_of(present, len(present) == len(document)).load(document)
    changes = {name: value for name, value in data.items() if name not in _NOT_CHANGES}
    return OrderUpdate(
        order_id=order_id,
        connection=data.get("connection"),
        id_type=data.get("id_type"),
        identification={name: data[name] for name in IDENTIFICATION_FIELDS if name in data},
        changes=changes,
        fields={name: document[name] for name in changes},
    )


def update_document(update: OrderUpdate) -> dict[str, Any]:
    """The canonical document that load_order_update(update.order_id, ...) loads into this update again: how an
    update is kept to be sent later (gateway/jobs)."""
    routing = {name: value for name, value in (("connection", update.connection), ("id_type", update.id_type))
               if value is not None}
    return {**routing, **update.identification, **update.fields}


class BulkUpdateSchema(Schema):
    """The envelope of PATCH /orders: one connection, and the items, each validated on its own later."""

    class Meta:
        unknown = RAISE

    connection = Text(validate=validate.Length(min=1, max=100))
    orders = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1))


_BULK_SCHEMA = BulkUpdateSchema()


def load_bulk_envelope(document: Any) -> dict:
    """Validate the bulk envelope (not its items); raises ValidationError with field paths."""
    if not isinstance(document, Mapping):
        raise ValidationError({"body": ["The body must be a JSON object."]})
    return _BULK_SCHEMA.load(document)


def load_bulk_item(item: Any, connection: str | None) -> OrderUpdate:
    """Validate one bulk item: `order_id` plus the canonical fields of PATCH /orders/<id>."""
    if not isinstance(item, Mapping):
        raise ValidationError({"body": ["Each item must be a JSON object."]})
    errors: dict[str, list[str]] = {}
    order_id = item.get("order_id")
    if isinstance(order_id, int) and not isinstance(order_id, bool):
        order_id = str(order_id)
    if not isinstance(order_id, str) or not 1 <= len(order_id) <= 255:
        errors["order_id"] = ["Required: the order's id, a string (or integer) of 1 to 255 characters."]
    if "connection" in item:
        errors["connection"] = ["Give the connection once, for the whole batch."]
    document = {name: value for name, value in item.items() if name not in ("order_id", "connection")}
    try:
        update = load_order_update(order_id if isinstance(order_id, str) else "", document)
    except ValidationError as error:
        errors.update(flatten_errors(error.messages))
    if errors:
        raise ValidationError(errors)
    return dataclasses.replace(update, connection=connection)
