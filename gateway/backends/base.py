"""Backend kinds and their operations: what a vendor can be asked, and which call carries each canonical update.

    Backend                one per backend kind, configured with a connection's settings
    ├── operations         {name: Operation}, one per vendor call the gateway makes
    ├── plan(update)       the Operation that carries this canonical update
    └── declarations       id types, status map, settings schema, webhooks, examples, transport auth
    Operation              one vendor call (UpdateOrder, ProcessOrder, updateOrderStatus, ...)
    ├── declarations       the canonical changes it carries, its action, reply format, idempotency, batch size
    ├── render(updates, credentials) -> OutboundRequest
    └── parse(payload, updates)      -> one UpdateOutcome or BackendError per update

Nothing here sends: the connection (gateway/connections.py) owns the transport and the credentials, checks an
update, asks the backend's plan for the operation, renders, sends, has the reply classified (replies.py) and
hands the payload to the operation's parse hook. A new vendor call is a new Operation module with its template
and XSD, listed in its backend's `operation_classes` and chosen by its `plan`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.canonical.events import OrderEvent
from gateway.config import MASK, ConnectionSchema, ConnectionSettings
from gateway.errors import BackendError, BackendRejected, OrderNotFound, OrderStateConflict, ValidationFailed
from gateway.replies import SOAP
from gateway.transport import OutboundRequest


@dataclass(frozen=True, slots=True)
class Credentials:
    """The credentials an operation writes into its request; `masked()` is what a dry run shows."""

    username: str
    password: str

    def masked(self) -> Credentials:
        """The same credentials with the password replaced by the mask."""
        return Credentials(username=self.username, password=MASK if self.password else "")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={MASK!r})"


class Operation(abc.ABC):
    """One vendor call, bound to the backend (and so to the connection's settings) it belongs to."""

    #: the vendor's name of the call, shown in replies as `operation`
    name: ClassVar[str]
    #: canonical change fields this call can carry
    carries: ClassVar[frozenset[str]]
    #: "soap" or "json": how replies.py reads the reply before `parse` sees its payload
    reply_format: ClassVar[str] = SOAP
    #: whether sending the same call twice leaves the order as sending it once (retries may rely on it)
    idempotent: ClassVar[bool] = False
    #: orders one call may carry; None: the connection's `max_orders_per_call` setting decides
    orders_per_call: ClassVar[int | None] = None

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.settings = backend.settings

    @property
    def call_size(self) -> int:
        """How many orders travel in one call."""
        return self.orders_per_call or self.settings.options["max_orders_per_call"]

    def check_update(self, update: OrderUpdate) -> dict[str, list[str]]:
        """This call's own rules beyond the fields it carries; returns field path -> messages."""
        return {}

    def is_idempotent(self, updates: Sequence[OrderUpdate]) -> bool:
        """Whether sending these updates twice leaves the orders as sending them once (retries rely on it)."""
        return self.idempotent

    @abc.abstractmethod
    def render(self, updates: Sequence[OrderUpdate], credentials: Credentials) -> OutboundRequest:
        """Translate checked canonical updates (at most `call_size`) into one wire request."""

    @abc.abstractmethod
    def parse(self, payload: Any, updates: Sequence[OrderUpdate], *,
              retry_after: str | None = None) -> list[UpdateOutcome | BackendError]:
        """One outcome or error per update, in order; raises a BackendError when the whole call failed.
        `retry_after` is the reply's Retry-After (valid, else None), for a refusal that says the backend is
        overloaded (503 with Retry-After)."""


class Backend(abc.ABC):
    """A backend kind: its operations, the plan that picks one per update, and what it declares."""

    kind: ClassVar[str]
    #: how replies and errors name the backend system
    display_name: ClassVar[str]
    settings_schema: ClassVar[type[ConnectionSchema]] = ConnectionSchema
    #: the vendor calls this backend makes; the first is what `plan` picks unless a backend says otherwise
    operation_classes: ClassVar[tuple[type[Operation], ...]]
    #: canonical id_type -> description, the first is the default
    id_types: ClassVar[Mapping[str, str]]
    #: canonical fields that help find an order (not changes) this backend understands
    identification_fields: ClassVar[frozenset[str]] = frozenset()
    #: why a field no operation carries is refused, added to the message naming the field
    unsupported_reason: ClassVar[str] = ""
    #: named canonical documents that show what the backend does, for the API's documentation
    example_updates: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: canonical status name -> backend code, before the connection's own status_map is applied
    default_status_map: ClassVar[Mapping[str, Any]] = {}
    #: the backend's webhook template names -> canonical event types; empty: it sends no webhooks
    default_webhook_event_types: ClassVar[Mapping[str, str]] = {}
    #: the marshmallow schema of the backend's webhook payload, for the API's documentation
    webhook_payload_schema: ClassVar[type | None] = None
    #: why calls take the backend's call lock, for the 503 a caller gets when waiting for it runs out
    call_lock_reason: ClassVar[str] = ""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.name = settings.name
        #: how refusals of a field name this backend and connection
        self.subject = f"backend {self.kind!r} (connection {self.name!r})"
        self.status_map: dict[str, Any] = {**self.default_status_map, **settings.status_map}
        #: backend status code -> canonical status name (the first name mapped to it), for events
        self.status_names: dict[Any, str] = {}
        for name, code in self.status_map.items():
            self.status_names.setdefault(code, name)
        #: webhook template name -> event type: the backend's defaults with the connection's own over them
        self.webhook_event_types: dict[str, str] = {
            **self.default_webhook_event_types, **(settings.webhooks or {}).get("event_types", {})}
        # Built once per connection, so templates and XSDs are ready before the first request.
        self.operations: dict[str, Operation] = {
            operation_class.name: operation_class(self) for operation_class in self.operation_classes}
        self.supported_fields: frozenset[str] = self.identification_fields.union(
            *(operation.carries for operation in self.operations.values()))

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

    def read_webhook(self, payload: Any) -> OrderEvent:
        """A canonical OrderEvent from one of the backend's webhook payloads; raises ValidationFailed."""
        raise ValidationFailed({"body": [f"Backend {self.kind!r} sends no webhooks."]})

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """Rules every operation of the backend shares (how ids look); returns field path -> messages."""
        return {}

    def call_lock_name(self) -> str | None:
        """The lock every call of this connection holds, shared by every process (None: calls run in parallel)."""
        return None

    def plan(self, update: OrderUpdate) -> Operation:
        """The operation that carries this (field-checked) update; raises ValidationFailed when none can."""
        return self.operations[self.operation_classes[0].name]

    # --- shared helpers --------------------------------------------------------------------------------

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

    def check_update(self, update: OrderUpdate) -> Operation:
        """Refuse, with field paths, anything this backend cannot carry; the operation that carries the rest."""
        errors: dict[str, list[str]] = {}
        where = self.subject
        for name in (*update.identification, *update.changes):
            if name not in self.supported_fields:
                reason = f": {self.unsupported_reason}" if self.unsupported_reason else "."
                errors.setdefault(name, []).append(f"Not supported by {where}{reason}")
        if update.id_type is not None and update.id_type not in self.id_types:
            errors.setdefault("id_type", []).append(
                f"Not supported by {where}; one of: {', '.join(self.id_types)}."
            )
        status = update.changes.get("status")
        if status is not None and "status" in self.supported_fields and status not in self.status_map:
            errors.setdefault("status", []).append(
                f"Unknown status {status!r} for connection {self.name!r}; one of: {', '.join(self.status_map)}."
            )
        for path, messages in self.check_backend_rules(update).items():
            errors.setdefault(path, []).extend(messages)
        if errors:
            raise ValidationFailed(errors)
        operation = self.plan(update)
        for name in update.changes:
            if name not in operation.carries:
                errors.setdefault(name, []).append(
                    f"Not carried by {self.display_name}'s {operation.name}, the call this update needs.")
        for path, messages in operation.check_update(update).items():
            errors.setdefault(path, []).extend(messages)
        if not update.changes and not errors:
            errors["body"] = ["Nothing to update: give at least one field to change."]
        if errors:
            raise ValidationFailed(errors)
        return operation
