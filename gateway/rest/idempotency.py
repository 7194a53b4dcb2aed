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
`[gateway] idempotency_ttl_seconds` (24 h by default).

Outcome first: every backend call is noted on the key before it is sent (KeyRecord: its journal exchange id, and
whether the operation may be sent twice); a call that cannot be noted is not sent (503 store-unavailable). Once a
call was attempted, its outcome is the reply, whatever happens to the key's record afterwards: a complete() that
fails is counted and logged (gateway/bookkeeping.py). A request that crashed, or whose reply could not be kept,
holds its key until its lease (`request_timeout` plus `idempotency_lease_margin_seconds`) runs out; then a retry is
sent again only when every call noted is idempotent, and otherwise answered 409 `outcome-unknown`, naming the
calls, until the key's lifetime ends: the order may have changed, and only a look at it can tell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request

from gateway import metrics
from gateway.bookkeeping import describe_error, note_failure
from gateway.calls import AttemptListener, CallAttempt
from gateway.errors import (
    GatewayError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    KeyStoreUnavailable,
    OutcomeUnknown,
    ValidationFailed,
)
from gateway.idempotency import (
    IN_PROGRESS,
    MISMATCH,
    OUTCOME_UNKNOWN,
    REPLAY,
    Attempt,
    IdempotencyStore,
    StoredResponse,
    open_idempotency_store,
)
from gateway.rest.auth import current_caller
from gateway.rest.common import PREFER, RESPOND_ASYNC, prefers_async
from gateway.rest.problems import gateway_error_response
from gateway.rest.request_ids import current_request_id
from gateway.runtime import current_gateway, gateway_of

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
#: the reply headers stored and replayed (the request id is the replaying request's own)
KEPT_HEADERS = ("Content-Type", "Retry-After", "Location", "WWW-Authenticate")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:/-]+")
#: the default of `[gateway] idempotency_lease_margin_seconds`: how much longer than the request's budget its key
#: is held
LEASE_MARGIN_SECONDS = 30
#: calls named in an outcome-unknown reply at most
NAMED_CALLS = 3
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


def _fingerprinted_query() -> list[tuple[str, str]]:
    """The query as a fingerprint has it: without dry_run, with `Prefer: respond-async` (a request answered with a
    job is not the request answered with the update)."""
    query = sorted((name, value) for name, value in request.args.items(multi=True) if name != "dry_run")
    return [*query, (PREFER, RESPOND_ASYNC)] if prefers_async() else query


def fingerprint() -> str:
    """What makes two requests the same request: method, path, query (without dry_run), whether it prefers an
    asynchronous reply, and the body's JSON, read from the raw body (an endpoint that declares no body: whatever was
    sent tells two requests apart)."""
    return request_fingerprint(request.method, request.path, _fingerprinted_query(), request.get_data(cache=True))


def body_fingerprint(document: Any) -> str:
    """The fingerprint of this request, whose body its endpoint parsed into `document`: the same as fingerprint()
    gives for the raw body (the same canonical form of its JSON), without parsing it again."""
    return _digest(request.method, request.path, _fingerprinted_query(),
                   json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def request_fingerprint(method: str, path: str, query: list[tuple[str, str]], raw: bytes) -> str:
    """The fingerprint of a request given by its parts (the console's redelivery is the API's, so it has its
    fingerprint)."""
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):
        body = raw.decode("utf-8", "replace")  # the view refuses it; its fingerprint still tells it apart
    return _digest(method, path, query, body)


def _digest(method: str, path: str, query: list[tuple[str, str]], body: str) -> str:
    text = json.dumps([method, path, query, body], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status)
    response.headers.remove("Content-Type")
    for name, value in stored.headers:
        response.headers.add(name, value)
    response.headers[REPLAYED] = "true"
    return response


class KeyRecord:
    """The Idempotency-Key's record while its request runs: each backend call is noted on it before it is sent, so
    that when the reply cannot be kept (the process dies, the store fails) the key's next request knows that a call
    may have reached a backend, and whether sending it again is harmless.

    A call that must be noted — the request's first, or its first that must not be sent twice — and cannot be is not
    sent (KeyStoreUnavailable). Others are noted up to MAX_NOTED, for the names in an outcome-unknown reply, and
    one that cannot be is counted and logged; a retry of a call already noted is sent either way.
    """

    #: calls noted by name at most (a bulk may make hundreds; the request id finds them all in the journal)
    MAX_NOTED = 10

    def __init__(self, store: IdempotencyStore, key: str, fingerprint: str, ttl_seconds: float) -> None:
        self.store, self.key, self.fingerprint, self.ttl_seconds = store, key, fingerprint, ttl_seconds
        #: every attempt that went out (or was about to)
        self.attempted: list[CallAttempt] = []
        self._noted = 0
        self._noted_idempotent = True

    def attempting(self, attempt: CallAttempt) -> None:
        """Note the attempt on the key, or stop it unsent when it must be noted and cannot be."""
        decisive = self._noted == 0 or (self._noted_idempotent and not attempt.idempotent)
        if decisive or (not attempt.retry and self._noted < self.MAX_NOTED):
            self._note(attempt, decisive)
        self.attempted.append(attempt)

    def _note(self, attempt: CallAttempt, decisive: bool) -> None:
        failure: BaseException | str
        try:
            if self.store.attempt(self.key, self.fingerprint, Attempt(
                    attempt.exchange_id, attempt.connection, attempt.operation, attempt.order_ids,
                    attempt.idempotent, current_request_id()), ttl_seconds=self.ttl_seconds):
                self._noted += 1
                self._noted_idempotent = self._noted_idempotent and attempt.idempotent
                return
            failure = "the key's record is no longer this request's (its lease ran out)"
        except Exception as error:
            failure = error
        if decisive:
            note_failure("idempotency_record", failure, f"{attempt.operation} on connection "
                         f"{attempt.connection!r} was not sent, as a retry could not tell whether it was")
            raise KeyStoreUnavailable(
                "The Idempotency-Key store could not note this call before it went out, so it was not sent (a retry "
                "with the key must be able to tell whether it was). Try again in a moment.")
        note_failure("idempotency_record", failure, f"{attempt.operation} on connection {attempt.connection!r} "
                     "went out without its exchange id noted on the Idempotency-Key")

    def may_repeat(self) -> bool:
        """Whether every call attempted may be sent again."""
        return all(attempt.idempotent for attempt in self.attempted)


def outcome_unknown(key: str, attempts: tuple[Attempt, ...]) -> OutcomeUnknown:
    """The 409 of a key whose first request attempted calls that must not be sent twice, their outcome lost."""
    named = []
    for attempt in attempts[:NAMED_CALLS]:
        orders = ", ".join(attempt.order_ids[:5]) + (", ..." if len(attempt.order_ids) > 5 else "")
        named.append(f"{attempt.operation} on connection {attempt.connection!r} for {orders} "
                     f"(exchange {attempt.exchange_id})")
    more = f", and {len(attempts) - NAMED_CALLS} more" if len(attempts) > NAMED_CALLS else ""
    request_id = next((attempt.request_id for attempt in attempts if attempt.request_id), "")
    journal = f"GET /exchanges?request_id={request_id} lists" if request_id else "the journal holds"
    return OutcomeUnknown(
        f"The first request with the Idempotency-Key {key!r}{f' (request id {request_id})' if request_id else ''} "
        f"sent {'; '.join(named)}{more}, and its outcome was not kept: the gateway stopped before it could be. "
        "It may or may not have been applied, and sending it again is not safe, so it is not sent again. Check "
        f"the order in the backend ({journal} what was recorded of the calls) and send what is still needed with "
        "a new key.")


def run_idempotently(key: str, print_: str, produce: Callable[[AttemptListener], Response]) -> Response:
    """The reply `produce` makes, once per caller, key and fingerprint: a repeat gets the kept reply again. `produce`
    is given the key's record, to be told of every backend call before it goes out."""
    settings = current_app.config["GATEWAY_SETTINGS"]
    store = current_gateway().idempotency
    scoped = f"{current_caller().name}:{key}"
    lease = settings.request_timeout + settings.idempotency_lease_margin_seconds
    try:
        begun = store.begin(scoped, print_, lease_seconds=lease)
    except Exception as error:
        log.warning("the Idempotency-Key store could not be reached (%s); nothing was sent", describe_error(error))
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
    if begun.state == OUTCOME_UNKNOWN:
        raise outcome_unknown(key, begun.attempts)
    record = KeyRecord(store, scoped, print_, settings.idempotency_ttl_seconds)
    try:
        response = produce(record)
    except GatewayError as error:  # the problem reply it becomes is this request's reply: kept like any other
        response = gateway_error_response(error)
    except BaseException:
        if not record.attempted:
            _abandon(store, scoped, print_)
        # An unforeseen failure after a call was attempted keeps the record until its lease ends: the outcome
        # is unknown, so a retry is not sent again before then (and afterwards only if it may be repeated).
        raise
    if record.attempted or response.status_code < 400:
        headers = tuple((name, response.headers[name]) for name in KEPT_HEADERS if name in response.headers)
        try:
            store.complete(scoped, print_, StoredResponse(response.status_code, headers, response.get_data()),
                           ttl_seconds=settings.idempotency_ttl_seconds)
        except Exception as error:  # outcome first: the reply is the call's outcome, kept or not
            later = ("sent again" if record.may_repeat() else "answered 409 outcome-unknown") if record.attempted \
                else "served afresh"
            note_failure("idempotency_record", error, f"the reply ({response.status_code}) was sent but not kept "
                         f"for its Idempotency-Key: a retry with the key is answered 409 until the key's lease ends, "
                         f"then {later}")
    else:
        _abandon(store, scoped, print_)
    return response


def _abandon(store: IdempotencyStore, key: str, print_: str) -> None:
    """Free a key whose request sent nothing; if the store fails, the key frees itself when its lease ends."""
    try:
        store.abandon(key, print_)
    except Exception as error:
        note_failure("idempotency_record", error, "a request that sent nothing did not free its Idempotency-Key: "
                     "a retry with the key is answered 409 until the key's lease ends")


def init_app(app: Flask) -> None:
    """Open the store of Idempotency-Key replies, closed with the app's other resources."""
    gateway_of(app).idempotency = open_idempotency_store(app.config["GATEWAY_SETTINGS"])
