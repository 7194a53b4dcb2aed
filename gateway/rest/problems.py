"""One error shape for every reply: application/problem+json (RFC 9457), built from the exception tree.

Every document is scrubbed of the gateway's secrets first and bounded second, so a backend's 1 MB fault string or
a document with 10,000 invalid fields still answers a small reply, and no cut leaves part of a secret in clear:
at most MAX_LISTED_ERRORS field paths (the rest counted in `errors_omitted`), each with at most
MAX_MESSAGES_PER_PATH messages, and every text bounded by TEXT_LIMITS.
"""

from __future__ import annotations

import logging
import sqlite3

from flask import Flask, Response, current_app, json
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gateway.errors import BackendError, GatewayError, PayloadTooLarge, StoreUnavailable, ValidationFailed
from gateway.rest.request_ids import current_request_id
from gateway.runtime import find_gateway
from gateway.scrubbing import Scrubber
from gateway.stores import store_unavailable

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:order-gateway:problem:"

log = logging.getLogger("gateway.problems")
MAX_LISTED_ERRORS = 50
MAX_MESSAGES_PER_PATH = 10
#: the longest text each member may hold; longer texts end in an ellipsis
TEXT_LIMITS = {"detail": 1000, "message": 2000, "code": 100, "path": 200, "error": 500}
_NO_SCRUBBING = Scrubber()


def scrubber() -> Scrubber:
    """The running gateway's scrubber (none outside an app, e.g. for Werkzeug's own errors in tests)."""
    return getattr(find_gateway(current_app), "scrubber", _NO_SCRUBBING)


def bounded(text: str | None, limit: int) -> str | None:
    """The text cut to `limit` characters, an ellipsis marking the cut."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 1] + "…"


def _bounded_errors(errors: dict[str, list[str]]) -> tuple[dict[str, list[str]], int]:
    """At most MAX_LISTED_ERRORS paths with at most MAX_MESSAGES_PER_PATH bounded messages; how many were left."""
    listed = {}
    for path, messages in list(errors.items())[:MAX_LISTED_ERRORS]:
        listed[bounded(path, TEXT_LIMITS["path"])] = [bounded(message, TEXT_LIMITS["error"])
                                                      for message in messages[:MAX_MESSAGES_PER_PATH]]
    return listed, max(len(errors) - MAX_LISTED_ERRORS, 0)


def problem_document(status: int, slug: str, title: str, detail: str, **members: object) -> dict:
    """The members of a problem document, scrubbed and bounded; extra members (errors, backend) when given."""
    clean = scrubber()
    document: dict = {
        "type": TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": bounded(clean.scrub(detail), TEXT_LIMITS["detail"]),
        "request_id": current_request_id(),
    }
    for name, value in members.items():
        if value is None:
            continue
        if name == "errors":
            value, omitted = _bounded_errors(clean.scrub_document(value))
            if omitted:
                document["errors_omitted"] = omitted
                document["detail"] = f"{document['detail']} ({omitted} more errors not listed)"
        elif name == "backend":
            value = {key: bounded(clean.scrub(text), TEXT_LIMITS.get(key, TEXT_LIMITS["message"]))
                     if isinstance(text, str) else text for key, text in value.items()}
        else:
            value = clean.scrub_document(value)
        document[name] = value
    return document


def problem_response(status: int, slug: str, title: str, detail: str, **members: object) -> Response:
    """A problem+json reply."""
    document = problem_document(status, slug, title, detail, **members)
    return Response(json.dumps(document), status=status, mimetype=PROBLEM_MEDIA_TYPE)


def gateway_error_document(error: GatewayError) -> dict:
    """The problem document of any error of the gateway's exception tree (also used per bulk item)."""
    members: dict[str, object] = {}
    if isinstance(error, ValidationFailed):
        members["errors"] = error.errors
    if isinstance(error, BackendError):
        members["backend"] = error.backend_details()
        members["retry_after"] = error.retry_after
    if isinstance(error, StoreUnavailable):
        members["store"] = error.store
    document = problem_document(error.status, error.slug, error.title, error.detail, **members)
    if error.status >= 500:
        log.warning("request %s failed: %s %s", current_request_id(), type(error).__name__, document["detail"])
    return document


def gateway_error_response(error: GatewayError) -> Response:
    """The problem reply for any error of the gateway's exception tree."""
    document = gateway_error_document(error)
    response = Response(json.dumps(document), status=error.status, mimetype=PROBLEM_MEDIA_TYPE)
    response.headers.update(error.reply_headers())
    return response


def http_error_response(error: HTTPException) -> Response:
    """Werkzeug's own HTTP errors (404 route, 405 method, 413 size) in the same shape."""
    slug = (error.name or "error").lower().replace(" ", "-")
    response = problem_response(error.code or 500, slug, error.name, error.description or error.name)
    if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def body_too_large_response(error: RequestEntityTooLarge) -> Response:
    """A body over max_body_bytes: the same problem as a batch over max_bulk_items."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return gateway_error_response(PayloadTooLarge(f"The body is larger than the {limit} bytes this gateway accepts."))


def unexpected_error_response(error: Exception) -> Response:
    """Anything unforeseen: logged with its traceback on the server, never shown to the client. A store's failure
    (Redis, SQLite, a lock file) is foreseen: 503 `store-unavailable` naming the store (gateway/stores.py), logged in
    one line."""
    if isinstance(error, HTTPException):
        return http_error_response(error)
    unavailable = store_unavailable(error)
    if unavailable is not None:
        # SQLite's message says what went wrong (locked, full) and names no file; a Redis error's may hold an address
        said = f": {str(error)[:200]}" if isinstance(error, sqlite3.Error) else ""
        log.warning("request %s: the %s failed: %s%s", current_request_id(), unavailable.store, type(error).__name__,
                    said)
        return gateway_error_response(unavailable)
    log.exception("request %s failed unexpectedly", current_request_id())
    return problem_response(500, "internal-error", "Internal gateway error",
                            "The gateway failed unexpectedly; the request id identifies it in the logs.")


def init_app(app: Flask) -> None:
    """Register the handlers that turn every error into problem+json."""
    app.register_error_handler(GatewayError, gateway_error_response)
    app.register_error_handler(RequestEntityTooLarge, body_too_large_response)
    app.register_error_handler(HTTPException, http_error_response)
    app.register_error_handler(Exception, unexpected_error_response)
