"""The sandboxes' JSON error replies: application/problem+json (RFC 9457)."""

from collections.abc import Mapping

from flask import Response, json

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_response(status: int, title: str, detail: str, **members: object) -> Response:
    """A problem+json reply; extra members (such as `errors`) are added as given."""
    document = {"type": "about:blank", "title": title, "status": status, "detail": detail, **members}
    return Response(json.dumps(document), status=status, content_type=PROBLEM_CONTENT_TYPE)


def field_errors(messages: Mapping | list, path: str = "") -> list[dict]:
    """Flatten marshmallow's nested error messages into [{field, message}] with dotted field paths."""
    if isinstance(messages, list):
        return [{"field": path or "$", "message": message} for message in messages]
    errors = []
    for key, nested in messages.items():
        if key == "_schema":
            errors.extend(field_errors(nested, path))
        else:
            errors.extend(field_errors(nested, f"{path}.{key}" if path else str(key)))
    return errors
