"""The query parameters of every endpoint, validated by marshmallow like bodies: unknown ones are refused.

Numbers in a query are ASCII digits only (`int()` would take "²" or Arabic-Indic digits); flags are spelled out.
"""

from __future__ import annotations

from typing import Any, ClassVar

from flask import request
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway.canonical import flatten_errors
from gateway.canonical.events import ALL_EVENT_TYPES
from gateway.canonical.schema import Text
from gateway.errors import ValidationFailed
from gateway.jobs.base import JOB_STATES
from gateway.safejson import parse_ascii_int

DELIVERY_STATES = ("pending", "delivered", "dead")


class AsciiInteger(fields.Integer):
    """An integer query parameter in ASCII digits."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not an integer in ASCII digits."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        number = parse_ascii_int(value if isinstance(value, str) else None)
        if number is None:
            raise self.make_error("invalid")
        return number


class Flag(fields.Field):
    """A boolean query flag: 1/true/yes/on, or 0/false/no/off/empty."""

    TRUE = frozenset({"1", "true", "yes", "on"})
    FALSE = frozenset({"", "0", "false", "no", "off"})

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, str) and value.lower() in self.TRUE:
            return True
        if isinstance(value, str) and value.lower() in self.FALSE:
            return False
        raise ValidationError("Not a valid boolean; use true or false.")


class QuerySchema(Schema):
    """A query string: unknown parameters are refused by name."""

    class Meta:
        unknown = RAISE


class NoQuery(QuerySchema):
    """An endpoint that takes no query parameters."""


class IgnoredQuery(QuerySchema):
    """An endpoint that reads no query and ignores any given (a health probe, a metrics scraper): nothing is loaded,
    so nothing is refused."""


class UpdateQuery(QuerySchema):
    """PATCH /orders/<id> and PATCH /orders."""

    dry_run = Flag(load_default=False)


class EventListQuery(QuerySchema):
    """GET /events."""

    order_id = Text(validate=validate.Length(min=1, max=255))
    type = fields.String(validate=validate.OneOf(ALL_EVENT_TYPES, error="One of: {choices}."))
    state = fields.String(validate=validate.OneOf(DELIVERY_STATES, error="One of: {choices}."))
    connection = Text(validate=validate.Length(min=1, max=100))
    #: the cursor of a reply's `next`: the last event id of the page before
    before = Text(validate=validate.Length(min=1, max=255))
    limit = AsciiInteger(load_default=100, validate=validate.Range(min=1, max=1000,
                                                                  error="An integer from 1 to 1000."))


class UpdateListQuery(QuerySchema):
    """GET /updates."""

    connection = Text(validate=validate.Length(min=1, max=100))
    order_id = Text(validate=validate.Length(min=1, max=255))
    state = fields.String(validate=validate.OneOf(JOB_STATES, error="One of: {choices}."))
    request_id = Text(validate=validate.Length(min=1, max=128))
    #: the cursor of a reply's `next`: the last job id of the page before
    before = Text(validate=validate.Length(min=1, max=255))
    limit = AsciiInteger(load_default=50, validate=validate.Range(min=1, max=10_000,
                                                                 error="An integer from 1 to 10000."))


def read_query(schema: type[QuerySchema]) -> dict[str, Any]:
    """The request's query parameters loaded by `schema`; 422 naming each parameter that is wrong."""
    if schema is IgnoredQuery:
        return {}
    arguments = request.args
    repeated = [name for name in arguments if len(arguments.getlist(name)) > 1]
    if repeated:
        raise ValidationFailed({name: ["Give this parameter once."] for name in repeated})
    try:
        return schema().load(arguments.to_dict())
    except ValidationError as error:
        errors = flatten_errors(error.messages)
        raise ValidationFailed({path: ["Unknown query parameter." if message == "Unknown field." else message
                                       for message in messages] for path, messages in errors.items()}) from None
