"""The Backend base class: the few hooks every backend implements, and the update flow they plug into.

A backend subclass declares what it can carry (`supported_fields`, `id_types`, `default_status_map`,
`settings_schema`) and implements two hooks: `render_update_request` (canonical update -> wire request)
and `parse_update_reply` (wire reply -> UpdateOutcome or a BackendError). Everything else is shared here,
so the REST layer never needs to know which backend it talks to.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.config import MASK, ConnectionSchema, ConnectionSettings
from gateway.errors import BackendError, ValidationFailed
from gateway.transport import BackendReply, HttpTransport, OutboundRequest


class Backend(abc.ABC):
    """One configured connection to a backend system."""

    kind: ClassVar[str]
    settings_schema: ClassVar[type[ConnectionSchema]] = ConnectionSchema
    #: canonical id_type -> description, the first is the default
    id_types: ClassVar[Mapping[str, str]]
    #: canonical fields (besides connection and id_type) this backend can carry
    supported_fields: ClassVar[frozenset[str]]
    #: canonical status name -> backend code, before the connection's own status_map is applied
    default_status_map: ClassVar[Mapping[str, Any]] = {}
    #: canonical status names the backend must not be asked for, with the reason
    refused_statuses: ClassVar[Mapping[str, str]] = {}

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.status_map: dict[str, Any] = {**self.default_status_map, **settings.status_map}
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

    def masked_auth_headers(self) -> dict[str, str]:
        """Headers the transport's authentication adds, with secrets masked, to show in dry runs."""
        return {}

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """Backend-specific validation beyond the shared checks; returns field path -> messages."""
        return {}

    @abc.abstractmethod
    def render_update_request(self, update: OrderUpdate, *, password: str) -> OutboundRequest:
        """Translate a checked canonical update into the backend's wire request."""

    @abc.abstractmethod
    def parse_update_reply(self, reply: BackendReply) -> UpdateOutcome:
        """Normalize the backend's reply, raising a BackendError subclass for every kind of failure."""

    # --- the shared flow -------------------------------------------------------------------------------

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
        elif status is not None and status not in self.status_map:
            errors.setdefault("status", []).append(
                f"Unknown status {status!r} for connection {self.name!r}; one of: "
                f"{', '.join(name for name in self.status_map if name not in self.refused_statuses)}."
            )
        for path, messages in self.check_backend_rules(update).items():
            errors.setdefault(path, []).extend(messages)
        if errors:
            raise ValidationFailed(errors)

    def prepare_update(self, update: OrderUpdate, *, mask_credentials: bool = False) -> OutboundRequest:
        """Check and render an update; with mask_credentials the password is replaced by a mask."""
        self.check_update(update)
        password = self.settings.password.reveal() if self.settings.password else ""
        return self.render_update_request(update, password=MASK if mask_credentials and password else password)

    def update_order(self, update: OrderUpdate) -> UpdateOutcome:
        """Check, render, send and normalize one order update."""
        request = self.prepare_update(update)
        try:
            return self.parse_update_reply(self.transport.send(request))
        except BackendError as error:
            raise self._scrubbed(error) from None

    def _scrubbed(self, error: BackendError) -> BackendError:
        """The error with the connection's password removed, in case a backend echoed it."""
        error.connection = self.name
        secret = self.settings.password.reveal() if self.settings.password else ""
        if secret:
            error.detail = error.detail.replace(secret, MASK)
            if error.message:
                error.message = error.message.replace(secret, MASK)
        return error

    def close(self) -> None:
        """Release the connection's pooled HTTP connections."""
        self.transport.close()
