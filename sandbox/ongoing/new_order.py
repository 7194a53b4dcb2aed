"""The sandbox's own JSON document for adding an order to the simulated warehouse, checked by marshmallow."""

from dataclasses import dataclass

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from sandbox.ongoing.model import OrderLine

DEFAULT_NEW_ORDER_STATUS = 200


class NewOrderLineSchema(Schema):
    """One line of a new order: picked goods are allocated, allocated goods are ordered."""

    article = fields.String(required=True, validate=validate.Length(min=1, max=50))
    ordered = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    allocated = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0))
    picked = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0))

    @validates_schema
    def check_quantities(self, line: dict, **_kwargs: object) -> None:
        """Refuse more allocated than ordered, or more picked than allocated."""
        if line["allocated"] > line["ordered"]:
            raise ValidationError("Must not be more than ordered.", field_name="allocated")
        if line["picked"] > line["allocated"]:
            raise ValidationError("Must not be more than allocated.", field_name="picked")


class NewOrderSchema(Schema):
    """A new order: its goods owner, numbers, status and lines; unknown members are refused."""

    goods_owner_code = fields.String(required=True, validate=validate.Length(min=1))
    order_number = fields.String(required=True, validate=validate.Length(min=1, max=50))
    order_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=50))
    status = fields.Integer(strict=True, load_default=DEFAULT_NEW_ORDER_STATUS)
    lines = fields.List(fields.Nested(NewOrderLineSchema), load_default=list)


@dataclass(frozen=True)
class NewOrder:
    """What POST /ongoing/orders asks the warehouse to add."""

    goods_owner_code: str
    order_number: str
    order_id: str | None
    status: int
    lines: tuple[OrderLine, ...]


def read_new_order(document: object) -> NewOrder:
    """Check a POST /ongoing/orders document and read it; marshmallow's ValidationError names what is wrong."""
    loaded = NewOrderSchema().load(document)
    return NewOrder(
        goods_owner_code=loaded["goods_owner_code"],
        order_number=loaded["order_number"],
        order_id=loaded["order_id"],
        status=loaded["status"],
        lines=tuple(OrderLine(**line) for line in loaded["lines"]),
    )
