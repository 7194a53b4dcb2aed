"""Callers: who is asking (a `Caller`, with its scopes and connections), and the `Authenticator` that knows the
configured callers' keys, kept as digests and compared in constant time, never looked up by value.

The REST layer (gateway/rest/auth.py) establishes the caller of each request with it; the console logs callers in
with it (gateway/console/). Reading a caller's connections marks the request as scoped to them (the WSGI environ's
SCOPED_ENVIRON_KEY), so tests can tell that a route touching connection data kept to them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import has_request_context, request

from gateway.config import SCOPES, GatewaySettings, caller_with_key, key_digest

#: set in the WSGI environ when a request read its caller's connections (tests/test_route_policies.py asks it of
#: every route whose policy says it touches connection data)
SCOPED_ENVIRON_KEY = "gateway.connections_scoped"


def _note_scoped() -> None:
    if has_request_context():
        request.environ[SCOPED_ENVIRON_KEY] = True


@dataclass(frozen=True)
class Caller:
    """Who is asking, and what it may do: scopes, and connections (None: every one)."""

    name: str
    scopes: frozenset[str]
    allowed_connections: frozenset[str] | None

    @property
    def connections(self) -> frozenset[str] | None:
        """The connections whose data (orders, events, exchanges) this caller may see and use; None: every one.
        Reading them marks the request as scoped to them."""
        _note_scoped()
        return self.allowed_connections

    def sees(self, connection: str | None) -> bool:
        """Whether this caller may see or use the data of `connection` (None, a record of no connection: only a
        caller of every connection may)."""
        connections = self.connections
        return connections is None or connection in connections


#: who current_caller() is when nothing established a caller (an open route, the console's login form): no scope,
#: no connection
NOBODY = Caller("anonymous", frozenset(), frozenset())
#: a request without a key when `[gateway] allow_anonymous = true`, and only then: every scope, every connection
ANONYMOUS = Caller("anonymous", frozenset(SCOPES), None)


def _key_tag(digest: bytes) -> str:
    """A name for one key that a store may keep (a console session): a digest of the key's digest."""
    return hashlib.sha256(b"order-gateway key tag\0" + digest).hexdigest()


class Authenticator:
    """The configured callers' keys, kept as digests and compared in constant time."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.allow_anonymous = settings.allow_anonymous
        self.by_name = {caller.name: Caller(caller.name, caller.scopes, caller.connections)
                        for caller in settings.callers.values()}
        self.callers = tuple(settings.callers.values())
        self._key_tags = {caller.name: frozenset(_key_tag(digest) for digest in caller.key_digests)
                          for caller in self.callers}

    def caller_named(self, name: str) -> Caller | None:
        """The configured caller of this name, or None."""
        return self.by_name.get(name)

    def caller_for(self, key: str) -> Caller | None:
        """The caller whose key this is; every key is compared, so the time taken says nothing about which."""
        found = caller_with_key(self.callers, key)
        return None if found is None else self.by_name[found.name]

    def log_in(self, key: str) -> tuple[Caller, str] | None:
        """The caller whose key this is, with the key's tag (which key, for a console session to keep), or None."""
        caller = self.caller_for(key)
        return None if caller is None else (caller, _key_tag(key_digest(key)))

    def holding(self, name: str, key_tag: str) -> Caller | None:
        """The caller of this name as configured now, if it still holds the key of this tag; else None."""
        caller = self.by_name.get(name)
        return caller if caller is not None and key_tag in self._key_tags[name] else None
