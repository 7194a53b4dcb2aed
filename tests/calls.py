"""Helpers for tests that drive one connection's operations directly: render, parse, and a canned transport."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.backends import BACKENDS
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.config import load_settings
from gateway.connections import Connection
from gateway.errors import BackendError
from gateway.replies import read_reply
from gateway.transport import BackendReply, OutboundRequest


def make_connection(name: str, table: dict) -> Connection:
    """A Connection built from one configuration table, as the gateway builds it."""
    settings = load_settings({"connections": {name: table}}, "<test>", BACKENDS)
    return Connection(settings.connections[name], BACKENDS[table["backend"]])


def render(connection: Connection, updates: Sequence[OrderUpdate], *, masked: bool = False) -> OutboundRequest:
    """Check and plan the updates, and render them as one call (credentials masked on request)."""
    planned = [connection.check(update) for update in updates]
    credentials = connection.credentials.masked() if masked else connection.credentials
    return planned[0].operation.render(list(updates), credentials)


def parse_reply(connection: Connection, reply: BackendReply,
                updates: Sequence[OrderUpdate]) -> list[UpdateOutcome | BackendError]:
    """What the updates' operation reads from `reply`; whole-call failures raise."""
    operation = connection.check(updates[0]).operation
    return operation.parse(read_reply(reply, operation.reply_format, connection.name), list(updates))


class RecordingTransport:
    """A transport that answers every request with one canned reply and keeps what it was sent."""

    def __init__(self, reply: BackendReply) -> None:
        self.reply = reply
        self.sent: list[OutboundRequest] = []
        self.closed = False

    def send(self, request: OutboundRequest, deadline: object = None) -> BackendReply:
        """Record the request and answer with the canned reply."""
        self.sent.append(request)
        return self.reply

    def close(self) -> None:
        """Remember that the connection closed its transport."""
        self.closed = True
