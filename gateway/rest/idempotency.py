"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): a client's retry of an update never applies it twice.

A key is the caller's (two callers may use the same key for different things), 1 to 255 characters, sent as a
structured-field string (`Idempotency-Key: "8e03978e-40d5"`; an unquoted token is taken too, as many clients send
one). The request's fingerprint — method, path, query without `dry_run`, and the JSON body in a canonical form — is
stored with it. The first request runs; a repeat with the same key and fingerprint gets the stored reply again,
byte for byte, with `Idempotent-Replayed: true`, and nothing is sent to a backend; the same key with another
fingerprint is 422; a repeat while the first is still running is 409.

Which replies are stored: any reply after a backend call was attempted (it may have changed the order: a retry
must not send it again), and any successful reply (a redelivery queued); a reply that sent nothing — the request
was invalid, not authorized, or refused before any call (breaker open, bulkhead full, lock busy) — is not, so the
same key may be used again once the cause is fixed. Dry runs are never stored. A stored reply is replayed for
`[gateway] idempotency_ttl_seconds` (24 h by default); a request that crashed frees its key when its lease (the
request budget plus a margin) runs out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, make_response, request

from gateway import metrics
from gateway.connections import calls_attempted
from gateway.errors import (
    GatewayError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    KeyStoreUnavailable,
    ValidationFailed,
)
from gateway.idempotency import IN_PROGRESS, MISMATCH, REPLAY, StoredResponse, open_idempotency_store
from gateway.rest.auth import current_caller
from gateway.rest.problems import gateway_error_response

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
#: the reply headers stored and replayed (the request id is the replaying request's own)
KEPT_HEADERS = ("Content-Type", "Retry-After", "Location", "WWW-Authenticate")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:/-]+")
LEASE_MARGIN_SECONDS = 30
log = logging.getLogger("gateway.idempotency")


def read_key() -> str | None:
    """The request's Idempotency-Key, or None; a malformed one is a 422 naming the header."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    value = value.strip()
    quoted = _SF_STRING.fullmatch(value)
    if quoted:
        key = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _TOKEN.fullmatch(value):
        key = value
    else:
        raise ValidationFailed({HEADER: ["Send a structured-field string of printable ASCII, e.g. "
                                         '"8e03978e-40d5-43e8-bc93-6894a57f9324".']})
    if not 1 <= len(key) <= 255:
        raise ValidationFailed({HEADER: ["An Idempotency-Key has 1 to 255 characters."]})
    return key


def fingerprint() -> str:
    """What makes two requests the same request: method, path, query (without dry_run) and the body's JSON."""
    query = sorted((name, value) for name, value in request.args.items(multi=True) if name != "dry_run")
    return request_fingerprint(request.method, request.path, query, request.get_data(cache=True))


def request_fingerprint(method: str, path: str, query: list[tuple[str, str]], raw: bytes) -> str:
    """The fingerprint of a request given by its parts (the console's redelivery is the API's, so it has its
    fingerprint)."""
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):
        body = raw.decode("utf-8", "replace")  # the view refuses it; its fingerprint still tells it apart
    text = json.dumps([method, path, query, body], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status)
    response.headers.remove("Content-Type")
    for name, value in stored.headers:
        response.headers.add(name, value)
    response.headers[REPLAYED] = "true"
    return response


def idempotent(view: Callable) -> Callable:
    """Make a view honour Idempotency-Key (dry runs excepted)."""
    @functools.wraps(view)
    def with_idempotency_key(*args: Any, **kwargs: Any) -> Any:
        key = read_key()
        if key is None or request.args.get("dry_run", "").lower() in ("1", "true", "yes", "on"):
            return view(*args, **kwargs)
        return run_idempotently(key, fingerprint(), lambda: make_response(view(*args, **kwargs)))

    return with_idempotency_key


def run_idempotently(key: str, print_: str, produce: Callable[[], Response]) -> Response:
    """The reply `produce` makes, once per caller, key and fingerprint: a repeat gets the kept reply again."""
    settings = current_app.config["GATEWAY_SETTINGS"]
    store = current_app.extensions["order_gateway_idempotency"]
    scoped = f"{current_caller().name}:{key}"
    try:
        begun = store.begin(scoped, print_, lease_seconds=settings.request_timeout + LEASE_MARGIN_SECONDS)
    except Exception:
        log.exception("the Idempotency-Key store could not be reached")
        raise KeyStoreUnavailable("The Idempotency-Key store could not be reached; nothing was sent. Send the "
                                  "request again with the same key.") from None
    if begun.state == REPLAY:
        metrics.idempotency_replays.inc()
        return _replay(begun.response)
    if begun.state == IN_PROGRESS:
        raise IdempotencyKeyInUse(f"A request with the Idempotency-Key {key!r} is still being served; "
                                  "ask again when it has been answered.")
    if begun.state == MISMATCH:
        raise IdempotencyKeyReused(f"The Idempotency-Key {key!r} was used for another request; use a new key "
                                   "for a new request.")
    attempted: list[str] = []
    token = calls_attempted.set(attempted)
    try:
        response = produce()
    except GatewayError as error:  # the problem reply it becomes is this request's reply: kept like any other
        response = gateway_error_response(error)
    except BaseException:
        if not attempted:
            store.abandon(scoped, print_)
        # An unforeseen failure after a call was attempted keeps the marker until its lease ends: the outcome
        # is unknown, so a retry must not send again before then.
        raise
    finally:
        calls_attempted.reset(token)
    if attempted or response.status_code < 400:
        headers = tuple((name, response.headers[name]) for name in KEPT_HEADERS if name in response.headers)
        store.complete(scoped, print_, StoredResponse(response.status_code, headers, response.get_data()),
                       ttl_seconds=settings.idempotency_ttl_seconds)
    else:
        store.abandon(scoped, print_)
    return response


def init_app(app: Flask) -> None:
    """Open the store of Idempotency-Key replies, closed with the app's other resources."""
    app.extensions["order_gateway_idempotency"] = open_idempotency_store(app.config["GATEWAY_SETTINGS"])
