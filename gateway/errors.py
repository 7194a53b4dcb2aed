"""The gateway's one exception tree; every failure a client can see is one of these.

    GatewayError                      500  base class; anything unexpected ends here
    ├── ConfigError                   ---  the configuration file is broken (stops start-up)
    ├── RequestProblem                4xx  the client's request cannot be served as sent
    │   ├── MalformedRequest          400  the body is not valid JSON, or not a JSON object
    │   ├── Unauthorized              401  no or an unknown API key, or a webhook's wrong vendor credentials
    │   ├── Forbidden                 403  the caller's key lacks the scope or the connection
    │   ├── NotFound                  404  the gateway itself has no such resource
    │   │   ├── WebhookNotFound       404  no connection of that backend receives webhooks under that name
    │   │   ├── EventNotFound         404  no stored event has that id
    │   │   └── JobNotFound           404  no update job has that id (or not one of the caller's connections)
    │   ├── IdempotencyKeyInUse       409  a request with the same Idempotency-Key is still being served
    │   ├── IdempotencyKeyReused      422  the Idempotency-Key was used for another request
    │   ├── OutcomeUnknown            409  the key's first request reached a backend and its outcome was lost
    │   ├── JobNotRetryable           409  the update job was done: it is not sent again
    │   ├── UnsupportedMediaType      415  the body is not application/json
    │   ├── PayloadTooLarge           413  the body is larger than the configured limit
    │   ├── ValidationFailed          422  invalid for the canonical schema or for the backend
    │   └── TooManyFailedAttempts     429  too many failed authentications from this address or key prefix
    ├── TranslationError              500  the gateway rendered a document its own XSD refuses (a gateway bug)
    ├── StoreUnavailable              503  a store (Redis, an SQLite file) is down, frozen, busy or full; names it
    │   └── KeyStoreUnavailable       503  the Idempotency-Key store could not be reached; nothing was sent
    └── BackendError                  5xx  the backend did not do what was asked
        ├── OrderNotFound             404  the backend does not know the order
        ├── OrderStateConflict        409  the backend refused because of the order's state
        ├── BackendRejected           422  the backend refused the update for another stated reason
        ├── BackendFailure            502  SOAP fault, 5xx, unparseable or hostile reply, refused credentials
        ├── BackendUnavailable        503  the backend could not be reached, or its breaker is open
        │   ├── ConnectionBusy        503  the connection's bulkhead or call lock stayed taken; nothing sent
        │   └── RateLimited           503  the connection's outbound rate limit left no call in time; nothing sent
        └── BackendTimeout            504  the backend did not answer in time

Every class carries its HTTP status, a problem `type` slug, a `title` and the HTTP headers its reply needs
(`Retry-After`, `WWW-Authenticate`), so the REST layer turns any of them into one application/problem+json
shape without knowing which backend or endpoint raised it. An error is built whole: what it carries (a
BackendError's `retry_after`, `from_transport`, `never_sent`) is given to its constructor, never set afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status = 500
    slug = "internal-error"
    title = "Internal gateway error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title

    def reply_headers(self) -> dict[str, str]:
        """HTTP headers the problem reply carries besides its media type."""
        return {}


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or invalid; names the file, the key and the problem."""

    slug = "configuration-error"
    title = "Invalid configuration"

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class RequestProblem(GatewayError):
    """The client's request cannot be served as it was sent."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class MalformedRequest(RequestProblem):
    """The body is not parseable JSON, or not a JSON object."""

    status = 400
    slug = "malformed-request"
    title = "Malformed request body"


class Unauthorized(RequestProblem):
    """The request lacks valid credentials; `challenge` is the WWW-Authenticate value to answer with."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, *, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.challenge = challenge

    def reply_headers(self) -> dict[str, str]:
        """The authentication challenge, when there is one."""
        return {"WWW-Authenticate": self.challenge} if self.challenge else {}


class Forbidden(RequestProblem):
    """The caller is known but not allowed this: `missing` names the scope or connection it lacks."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"

    def __init__(self, detail: str, *, scope: str | None = None) -> None:
        super().__init__(detail)
        self.scope = scope

    def reply_headers(self) -> dict[str, str]:
        """RFC 6750's insufficient_scope challenge, when a scope is what is missing."""
        if self.scope is None:
            return {}
        return {"WWW-Authenticate": f'Bearer realm="order gateway", error="insufficient_scope", scope="{self.scope}"'}


class NotFound(RequestProblem):
    """The gateway has no such resource."""

    status = 404
    slug = "not-found"
    title = "Not found"


class WebhookNotFound(NotFound):
    """No connection with that name receives webhooks from that backend."""

    slug = "webhook-not-found"
    title = "No such webhook receiver"


class EventNotFound(NotFound):
    """No stored event has that id."""

    slug = "event-not-found"
    title = "Event not found"


class JobNotFound(NotFound):
    """No update job has that id, or none the caller may see."""

    slug = "job-not-found"
    title = "Update job not found"


class JobNotRetryable(RequestProblem):
    """A done update job was asked to be sent again: only failed and dead jobs are."""

    status = 409
    slug = "job-not-retryable"
    title = "The update job cannot be sent again"


class IdempotencyKeyInUse(RequestProblem):
    """A request with the same Idempotency-Key is still being served."""

    status = 409
    slug = "idempotency-key-in-use"
    title = "Idempotency-Key in use"

    def reply_headers(self) -> dict[str, str]:
        """Ask again in a moment."""
        return {"Retry-After": "1"}


class IdempotencyKeyReused(RequestProblem):
    """The Idempotency-Key was used for a different request."""

    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused for another request"


class OutcomeUnknown(RequestProblem):
    """The Idempotency-Key's first request attempted a backend call that must not be sent twice, and its outcome was
    not kept (its process died, or the key's store failed): the order may or may not have changed."""

    status = 409
    slug = "outcome-unknown"
    title = "Outcome of the first request unknown"


class UnsupportedMediaType(RequestProblem):
    """The body was not sent as application/json."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class PayloadTooLarge(RequestProblem):
    """The body is larger than the configured limit."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class ValidationFailed(RequestProblem):
    """The document is invalid for the canonical schema or for the connection's backend."""

    status = 422
    slug = "validation-failed"
    title = "Validation failed"

    def __init__(self, errors: Mapping[str, Sequence[str]], detail: str = "") -> None:
        self.errors = {path: list(messages) for path, messages in errors.items()}
        first = next(iter(self.errors.items()), None)
        summary = f"{first[0]}: {first[1][0]}" if first and first[1] else ""
        if not detail:
            detail = f"The request is invalid: {summary}" if summary else "The request is invalid."
        super().__init__(detail)


class TooManyFailedAttempts(RequestProblem):
    """Authentication failed too often from the client's address or with the presented key's prefix: every attempt
    is refused, the right key's too, until `retry_after` seconds have passed."""

    status = 429
    slug = "too-many-failed-attempts"
    title = "Too many failed authentications"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def reply_headers(self) -> dict[str, str]:
        """When to try again, in whole seconds."""
        return {"Retry-After": str(self.retry_after)}


class TranslationError(GatewayError):
    """The rendered backend document failed the gateway's own XSD: a gateway bug, never sent."""

    status = 500
    slug = "translation-error"
    title = "The gateway could not translate the request"


class StoreUnavailable(GatewayError):
    """A store the request needs cannot be used now (down, not answering in time, busy, full); `store` names it
    ("event store", "call locks"), never its address. gateway/stores.py turns the stores' own errors into it."""

    status = 503
    slug = "store-unavailable"
    title = "Store unavailable"
    #: the store this error is about, when its raiser did not say
    default_store = "store"

    def __init__(self, detail: str = "", *, store: str | None = None) -> None:
        self.store = store or self.default_store
        super().__init__(detail or f"The {self.store} cannot be used right now; try again in a moment.")

    def reply_headers(self) -> dict[str, str]:
        """Ask again in a moment."""
        return {"Retry-After": "1"}


class KeyStoreUnavailable(StoreUnavailable):
    """The Idempotency-Key store could not be reached; nothing was sent, the client may retry with its key."""

    default_store = "idempotency store"


class BackendError(GatewayError):
    """The backend did not do what was asked; carries the connection and the backend's own code and text."""

    status = 502
    slug = "backend-error"
    title = "Backend error"

    def __init__(self, detail: str, *, connection: str = "", code: str | None = None, message: str | None = None,
                 retry_after: str | None = None, from_transport: bool = False, never_sent: bool = False) -> None:
        super().__init__(detail)
        self.connection = connection
        self.code = code
        self.message = message
        #: seconds (or an HTTP date) the client should wait before retrying, when the backend (or a guard) said so
        self.retry_after = retry_after
        #: raised by the transport (no reply to read), and whether the request provably never reached the backend
        self.from_transport = from_transport
        self.never_sent = never_sent

    def reply_headers(self) -> dict[str, str]:
        """Retry-After, when the backend said how long to wait."""
        return {"Retry-After": self.retry_after} if self.retry_after else {}

    def backend_details(self) -> dict:
        """The `backend` member of the problem document."""
        return {"connection": self.connection, "code": self.code, "message": self.message}


class OrderNotFound(BackendError):
    """The backend does not know the order."""

    status = 404
    slug = "order-not-found"
    title = "Order not found"


class OrderStateConflict(BackendError):
    """The backend refused the update because of the order's current state."""

    status = 409
    slug = "order-state-conflict"
    title = "Order state conflict"


class BackendRejected(BackendError):
    """The backend refused the update for a reason it stated."""

    status = 422
    slug = "backend-rejected"
    title = "Backend rejected the update"


class BackendFailure(BackendError):
    """The backend failed: a fault, a 5xx, an unparseable or hostile reply, or refused credentials."""

    status = 502
    slug = "backend-failure"
    title = "Backend failure"


class BackendUnavailable(BackendError):
    """The backend could not be reached."""

    status = 503
    slug = "backend-unavailable"
    title = "Backend unavailable"


class ConnectionBusy(BackendUnavailable):
    """The connection's bulkhead or call lock stayed taken beyond the wait allowed; nothing was sent. The client
    may ask again in a second, unless told otherwise."""

    def __init__(self, detail: str, *, retry_after: str | None = "1", **details: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **details)


class RateLimited(BackendUnavailable):
    """The connection's outbound rate limit (max_calls_per_second) had no call to spare within the wait allowed;
    nothing was sent. `retry_after` (whole seconds, at least 1) says when the next call may go."""

    def __init__(self, detail: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(detail, retry_after=str(max(retry_after, 1)), **details)


class BackendTimeout(BackendError):
    """The backend did not answer within the configured timeout."""

    status = 504
    slug = "backend-timeout"
    title = "Backend timeout"
