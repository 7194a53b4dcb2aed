"""What marshmallow says when one of its own checks refuses a value, asked of marshmallow as the tests run.

A test names the check that refused (a field's type or "required" or "null" error, a validator with its bounds, an
unknown field) and compares with what that check says today, never with marshmallow's wording: a marshmallow release
that rewords its messages breaks no test, while a refusal by another check still fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing


def refusal(check: Schema | fields.Field | Callable[[Any], Any], value: Any = missing) -> str:
    """The one message with which a marshmallow schema, field or validator refuses `value`.

    For a field, `missing` (the default) stands for a member the document leaves out.
    """
    try:
        if isinstance(check, Schema):
            check.load(value)
        elif isinstance(check, fields.Field):
            check.deserialize(value)
        else:
            check(value)
    except ValidationError as error:
        messages = error.messages
        while isinstance(messages, dict):
            (messages,) = messages.values()
        (message,) = messages
        return message
    raise AssertionError(f"{check!r} accepted {value!r}")
