"""The configured connections of a running gateway: each a backend kind with its own settings, credentials,
transport and secrets, and the one update flow every backend plugs into.

    Connection.check(update)           -> PlannedUpdate     fields, ids and rules checked; operation chosen
    Connection.dry_run(planned)        -> [OutboundRequest] the calls that would go out, credentials masked
    Connection.send(planned)           -> [UpdateOutcome | BackendError], one per update, in order

Updates travel in calls: consecutive updates planned onto the same operation share a call, up to the
operation's `call_size`; a failed call fails exactly its own updates. The REST layer never needs to know which
backend it talks to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from gateway.backends import Backend, Credentials, Operation
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.config import ConnectionSettings, GatewaySettings
from gateway.errors import BackendError, BackendFailure, BackendUnavailable, ValidationFailed
from gateway.replies import read_reply
from gateway.transport import HttpTransport, OutboundRequest, Transport


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A checked canonical update and the operation that will carry it."""

    update: OrderUpdate
    operation: Operation


class Connection:
    """One configured connection: settings, credentials and transport; it renders nothing itself.

    Its secrets are masked by the gateway's one Scrubber (gateway/scrubbing.py) wherever errors become documents
    and log lines, so nothing here needs to know which texts a backend might echo.
    """

    def __init__(self, settings: ConnectionSettings, backend_class: type[Backend],
                 transport: Transport | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.backend = backend_class(settings)
        self.kind = self.backend.kind
        self.credentials = Credentials(
            username=settings.username, password=settings.password.reveal() if settings.password else "")
        self.auth = self.backend.make_auth()
        self.transport: Transport = transport or HttpTransport(
            connection=settings.name,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_reply_bytes=settings.max_reply_bytes,
            pool_size=settings.pool_size,
            verify_tls=settings.verify_tls,
            auth=self.auth,
        )

    def check(self, update: OrderUpdate) -> PlannedUpdate:
        """Refuse (ValidationFailed, with field paths) what the backend cannot carry; plan the rest."""
        return PlannedUpdate(update, self.backend.check_update(update))

    def dry_run(self, planned: Sequence[PlannedUpdate]) -> list[OutboundRequest]:
        """The requests the planned updates would travel in, with every credential masked."""
        credentials = self.credentials.masked()
        return [self.backend.dry_run_view(operation.render(updates, credentials))
                for operation, updates in self.calls(planned)]

    def send(self, planned: Sequence[PlannedUpdate]) -> list[UpdateOutcome | BackendError]:
        """Send planned updates call by call, in order; a failed call fails exactly its own updates."""
        results: list[UpdateOutcome | BackendError] = []
        for operation, updates in self.calls(planned):
            try:
                outcomes = self._call(operation, updates)
            except BackendError as error:
                outcomes = [error] * len(updates)
            for outcome in outcomes:
                if isinstance(outcome, BackendError):
                    outcome.connection = self.name
                results.append(outcome)
        return results

    def calls(self, planned: Sequence[PlannedUpdate]) -> Iterator[tuple[Operation, list[OrderUpdate]]]:
        """The calls planned updates travel in: runs of one operation, cut at its call size."""
        start = 0
        while start < len(planned):
            operation = planned[start].operation
            end = start + 1
            while end < len(planned) and end - start < operation.call_size and planned[end].operation is operation:
                end += 1
            yield operation, [item.update for item in planned[start:end]]
            start = end

    def _call(self, operation: Operation, updates: list[OrderUpdate]) -> list[UpdateOutcome | BackendError]:
        reply = self.transport.send(operation.render(updates, self.credentials))
        try:
            payload = read_reply(reply, operation.reply_format, self.name, max_depth=self.settings.max_reply_depth)
            outcomes = operation.parse(payload, updates)
        except BackendUnavailable as error:
            error.retry_after = error.retry_after or reply.headers.get("Retry-After")
            raise
        if len(outcomes) != len(updates):
            raise BackendFailure(f"{operation.name} gave {len(outcomes)} outcomes for {len(updates)} orders.",
                               connection=self.name)
        return outcomes

    def close(self) -> None:
        """Release the connection's pooled HTTP connections."""
        self.transport.close()


class Connections:
    """The running gateway's connections by name, and the default one."""

    def __init__(self, settings: GatewaySettings, backends: Mapping[str, type[Backend]],
                 transports: Mapping[str, Transport] | None = None) -> None:
        transports = transports or {}
        self.default = settings.default_connection
        self.by_name: dict[str, Connection] = {
            name: Connection(connection, backends[connection.backend], transports.get(name))
            for name, connection in settings.connections.items()
        }
        if self.default is None and len(self.by_name) == 1:
            self.default = next(iter(self.by_name))

    def resolve(self, name: str | None) -> Connection:
        """The connection called `name`, or the default connection when name is None."""
        if name is None:
            if self.default is None:
                raise ValidationFailed({"connection": [
                    f"Required: no default connection is configured; one of: {', '.join(self.by_name)}."
                ]})
            name = self.default
        connection = self.by_name.get(name)
        if connection is None:
            raise ValidationFailed({"connection": [
                f"Unknown connection {name!r}; one of: {', '.join(self.by_name)}."
            ]})
        return connection

    def close(self) -> None:
        """Close every connection's HTTP pool."""
        for connection in self.by_name.values():
            connection.close()
