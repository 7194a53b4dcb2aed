"""The configured connections of a running gateway, each a ready Backend with its own pooled session."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.backends import Backend
from gateway.config import GatewaySettings
from gateway.errors import ValidationFailed


class Connections:
    """Looks up the Backend that serves a request's connection."""

    def __init__(self, settings: GatewaySettings, backends: Mapping[str, type[Backend]]) -> None:
        self.default = settings.default_connection
        self.by_name: dict[str, Backend] = {
            name: backends[connection.backend](connection) for name, connection in settings.connections.items()
        }
        if self.default is None and len(self.by_name) == 1:
            self.default = next(iter(self.by_name))

    def resolve(self, name: str | None) -> Backend:
        """The backend for `name`, or for the default connection when name is None."""
        if name is None:
            if self.default is None:
                raise ValidationFailed({"connection": [
                    f"Required: no default connection is configured; one of: {', '.join(self.by_name)}."
                ]})
            name = self.default
        backend = self.by_name.get(name)
        if backend is None:
            raise ValidationFailed({"connection": [
                f"Unknown connection {name!r}; one of: {', '.join(self.by_name)}."
            ]})
        return backend

    def close(self) -> None:
        """Close every connection's HTTP pool."""
        for backend in self.by_name.values():
            backend.close()
