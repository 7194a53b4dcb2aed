"""The Backend base class: the few hooks every backend implements, and the update flow they plug into.

A backend subclass declares what it can carry (`supported_fields`, `id_types`, `default_status_map`,
`settings_schema`, `orders_per_call`) and implements two hooks: `render_request` (canonical updates -> one
wire request) and `parse_reply` (wire reply -> one UpdateOutcome or BackendError per update, or a raised
BackendError when the whole call failed). Single and bulk updates share this flow; the REST layer never needs
to know which backend it talks to.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.canonical.events import OrderEvent
from gateway.config import MASK, ConnectionSchema, ConnectionSettings
from gateway.errors import BackendError, BackendRejected, OrderNotFound, OrderStateConflict, ValidationFailed
from gateway.transport import BackendReply, HttpTransport, OutboundRequest


class Backend(abc.ABC):
    """One configured connection to a backend system."""

    kind: ClassVar[str]
    #: how replies and errors name the backend system
    display_name: ClassVar[str]
    settings_schema: ClassVar[type[ConnectionSchema]] = ConnectionSchema
    #: canonical id_type -> description, the first is the default
    id_types: ClassVar[Mapping[str, str]]
    #: canonical fields (besides connection and id_type) this backend can carry
    supported_fields: ClassVar[frozenset[str]]
    #: named canonical documents that show what the backend does, for the API's documentation
    example_updates: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: canonical status name -> backend code, before the connection's own status_map is applied
    default_status_map: ClassVar[Mapping[str, Any]] = {}
    #: canonical status names the backend must not be asked for, with the reason
    refused_statuses: ClassVar[Mapping[str, str]] = {}
    #: orders one backend call may carry; None: the connection's `max_orders_per_call` setting decides
    orders_per_call: ClassVar[int | None] = None
    #: the backend's webhook template names -> canonical event types; empty: it sends no webhooks
    default_webhook_event_types: ClassVar[Mapping[str, str]] = {}
    #: the marshmallow schema of the backend's webhook payload, for the API's documentation
    webhook_payload_schema: ClassVar[type | None] = None

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.status_map: dict[str, Any] = {**self.default_status_map, **settings.status_map}
        #: backend status code -> canonical status name (the first name mapped to it), for events
        self.status_names: dict[Any, str] = {}
        for name, code in self.status_map.items():
            self.status_names.setdefault(code, name)
        #: webhook template name -> event type: the backend's defaults with the connection's own over them
        self.webhook_event_types: dict[str, str] = {
            **self.default_webhook_event_types, **(settings.webhooks or {}).get("event_types", {})}
        self.transport = HttpTransport(
            connection=settings.name,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_reply_bytes=settings.max_reply_bytes,
            pool_size=settings.pool_size,
            verify_tls=settings.verify_tls,
            auth=self.make_auth(),
        )

    # --- hooks -----------------------------------------------------------------------------------------

    @classmethod
    def check_settings(cls, settings: ConnectionSettings) -> tuple[str, str] | None:
        """Cross-field check of a connection's settings: (key, problem), or None when they are fine."""
        return None

    def make_auth(self) -> Any:
        """A requests AuthBase for transport-level authentication, or None."""
        return None

    def dry_run_view(self, request: OutboundRequest) -> OutboundRequest:
        """The request as a dry run shows it: what transport-level authentication adds, with secrets masked."""
        return request

    def secret_values(self) -> list[str]:
        """Every credential of the connection, to be masked wherever a backend might echo it."""
        return [self.settings.password.reveal()] if self.settings.password else []

    def read_webhook(self, payload: Any) -> OrderEvent:
        """A canonical OrderEvent from one of the backend's webhook payloads; raises ValidationFailed."""
        raise ValidationFailed({"body": [f"Backend {self.kind!r} sends no webhooks."]})

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """Backend-specific validation beyond the shared checks; returns field path -> messages."""
        return {}

    @abc.abstractmethod
    def render_request(self, updates: Sequence[OrderUpdate], *, password: str) -> OutboundRequest:
        """Translate checked canonical updates (at most `call_size` of them) into one wire request."""

    @abc.abstractmethod
    def parse_reply(self, reply: BackendReply, updates: Sequence[OrderUpdate]) -> list[UpdateOutcome | BackendError]:
        """One outcome or error per update, in order; raises a BackendError when the whole call failed."""

    # --- the shared flow -------------------------------------------------------------------------------

    def refusal(self, *, not_found: bool, conflict: bool, code: str | None, message: str | None) -> BackendError:
        """The error for a refusal the backend explained: 404 unknown order, 409 the order's state, else 422."""
        details = {"connection": self.name, "code": code, "message": message or None}
        text = message or "no message given"
        if not_found:
            return OrderNotFound(f"{self.display_name} does not know the order: {text}", **details)
        if conflict:
            return OrderStateConflict(
                f"{self.display_name} refused the update because of the order's state: {text}", **details)
        return BackendRejected(f"{self.display_name} refused the update: {text}", **details)

    def refusal_by_message(self, message: str, code: str | None) -> BackendError:
        """A refusal told in words, mapped by the connection's order_not_found/order_conflict patterns."""
        options = self.settings.options
        return self.refusal(
            not_found=any(pattern.search(message) for pattern in options["order_not_found_patterns"]),
            conflict=any(pattern.search(message) for pattern in options["order_conflict_patterns"]),
            code=code, message=message,
        )

    def effective_id_type(self, update: OrderUpdate) -> str:
        """The id type of the update, or the backend's default."""
        return update.id_type or next(iter(self.id_types))

    def backend_status_code(self, update: OrderUpdate) -> Any:
        """The backend code the update's status maps to (status_code passes through)."""
        if "status_code" in update.changes:
            return update.changes["status_code"]
        return self.status_map.get(update.changes.get("status"))

    def check_update(self, update: OrderUpdate) -> None:
        """Refuse, with field paths, anything this connection's backend cannot carry."""
        errors: dict[str, list[str]] = {}
        where = f"backend {self.kind!r} (connection {self.name!r})"
        for name in (*update.identification, *update.changes):
            if name not in self.supported_fields:
                errors.setdefault(name, []).append(f"Not supported by {where}.")
        if update.id_type is not None and update.id_type not in self.id_types:
            errors.setdefault("id_type", []).append(
                f"Not supported by {where}; one of: {', '.join(self.id_types)}."
            )
        status = update.changes.get("status")
        if status in self.refused_statuses:
            errors.setdefault("status", []).append(self.refused_statuses[status])
        elif status is not None and "status" in self.supported_fields and status not in self.status_map:
            errors.setdefault("status", []).append(
                f"Unknown status {status!r} for connection {self.name!r}; one of: "
                f"{', '.join(name for name in self.status_map if name not in self.refused_statuses)}."
            )
        for path, messages in self.check_backend_rules(update).items():
            errors.setdefault(path, []).extend(messages)
        if errors:
            raise ValidationFailed(errors)

    @property
    def call_size(self) -> int:
        """How many orders travel in one backend call."""
        return self.orders_per_call or self.settings.options["max_orders_per_call"]

    def _password(self, mask_credentials: bool) -> str:
        password = self.settings.password.reveal() if self.settings.password else ""
        return MASK if mask_credentials and password else password

    def prepare_update(self, update: OrderUpdate, *, mask_credentials: bool = False) -> OutboundRequest:
        """Check and render one update; with mask_credentials the password is replaced by a mask."""
        self.check_update(update)
        return self.render_request([update], password=self._password(mask_credentials))

    def prepare_batches(self, updates: Sequence[OrderUpdate]) -> list[OutboundRequest]:
        """The requests a batch of checked updates travels in, credentials masked (for dry runs)."""
        return [
            self.dry_run_view(self.render_request(updates[start:start + self.call_size], password=MASK))
            for start in range(0, len(updates), self.call_size)
        ]

    def update_order(self, update: OrderUpdate) -> UpdateOutcome:
        """Check, render, send and normalize one order update; raises the BackendError of a refusal."""
        self.check_update(update)
        (result,) = self.send_updates([update])
        if isinstance(result, BackendError):
            raise result
        return result

    def send_updates(self, updates: Sequence[OrderUpdate]) -> list[UpdateOutcome | BackendError]:
        """Send checked updates in calls of `call_size`, in order; a failed call fails exactly its own items."""
        results: list[UpdateOutcome | BackendError] = []
        password = self._password(False)
        for start in range(0, len(updates), self.call_size):
            chunk = updates[start:start + self.call_size]
            try:
                outcomes = self.parse_reply(self.transport.send(self.render_request(chunk, password=password)), chunk)
            except BackendError as error:
                outcomes = [error] * len(chunk)
            results.extend(self._scrubbed(outcome) if isinstance(outcome, BackendError) else outcome
                           for outcome in outcomes)
        return results

    def _scrubbed(self, error: BackendError) -> BackendError:
        """The error with the connection's secrets removed, in case a backend echoed them."""
        error.connection = self.name
        for secret in self.secret_values():
            if secret:
                error.detail = error.detail.replace(secret, MASK)
                if error.message:
                    error.message = error.message.replace(secret, MASK)
        return error

    def close(self) -> None:
        """Release the connection's pooled HTTP connections."""
        self.transport.close()
