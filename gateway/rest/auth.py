"""Callers: every request but the webhook receiver's and the docs' carries `Authorization: Bearer <key>`, and what
it asks for is checked against the caller's scopes and connections.

Keys are compared in constant time against every configured key (never looked up by value), and never logged or
answered: the scrubber masks them. Which endpoint needs which scope is one table, POLICIES; an endpoint not in it
needs a known caller, so a new endpoint is closed until it says otherwise. The caller's name is on `g.caller`,
in the WSGI environ for the access log (`gateway.caller`), and in what operators see of its actions.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from gateway import logs
from gateway.config import SCOPES, GatewaySettings
from gateway.errors import ConfigError, Forbidden, Unauthorized

OPEN = "open"  # authenticated otherwise (the webhook receiver: the vendor's own credentials)
SESSION = "session"  # a browser's console login (gateway.console checks its session cookie and the scope)


@dataclass(frozen=True)
class OpenWhen:
    """Open when the [gateway] setting of this name is true; otherwise a known caller with one of `scopes` (none
    given: any known caller)."""

    setting: str
    scopes: tuple[str, ...] = ()


DOCS = OpenWhen("open_docs")
METRICS = OpenWhen("open_metrics", ("metrics:read",))
CHALLENGE = 'Bearer realm="order gateway"'
ENVIRON_KEY = "gateway.caller"

#: endpoint -> OPEN, SESSION, an OpenWhen (DOCS, METRICS), or the scopes of which the caller needs one (views may
#: ask for more, e.g. a dry run)
POLICIES: dict[str, object] = {
    "orders.update_order": ("orders:write", "orders:dry-run"),
    "orders.update_orders": ("orders:write", "orders:dry-run"),
    "events.list_events": ("events:read",),
    "events.show_event": ("events:read",),
    "events.redeliver_event": ("events:redeliver",),
    "webhooks.receive_webhook": OPEN,
    "exchanges.list_exchanges": ("exchanges:read",),
    "exchanges.show_exchange": ("exchanges:read",),
    "health.livez": OPEN,
    "health.readyz": OPEN,
    "metrics.show_metrics": METRICS,
    "docs.openapi_document": DOCS,
    "docs.swagger_ui": DOCS,
    "docs.swagger_ui_asset": DOCS,
    # the console's pages check their session cookie and the scope console themselves (gateway.console.views)
    "console.login_form": SESSION,
    "console.log_in": SESSION,
    "console.log_out": SESSION,
    "console.static": SESSION,
    "console.overview": SESSION,
    "console.order_timeline": SESSION,
    "console.redeliver": SESSION,
}


@dataclass(frozen=True)
class Caller:
    """Who is asking, and what it may do: scopes, and connections (None: every one)."""

    name: str
    scopes: frozenset[str]
    connections: frozenset[str] | None


ANONYMOUS = Caller("anonymous", frozenset(SCOPES), None)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Authenticator:
    """The configured callers' keys, kept as digests and compared in constant time."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.allow_anonymous = settings.allow_anonymous
        self.opened = frozenset(policy.setting for policy in (DOCS, METRICS) if getattr(settings, policy.setting))
        self.by_name = {caller.name: Caller(caller.name, caller.scopes, caller.connections)
                        for caller in settings.callers.values()}
        self.keys = [(_digest(key.reveal()), self.by_name[caller.name])
                     for caller in settings.callers.values() for key in caller.keys]

    def caller_named(self, name: str) -> Caller | None:
        """The configured caller of this name (a console session names its caller), or None."""
        return self.by_name.get(name)

    def caller_for(self, key: str) -> Caller | None:
        """The caller whose key this is; every key is compared, so the time taken says nothing about which."""
        presented, found = _digest(key), None
        for digest, caller in self.keys:
            if hmac.compare_digest(presented, digest):
                found = caller
        return found


def _bearer_key() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def authenticate() -> None:
    """Establish the caller before any view runs; 401 without a known key, 403 without any of the scopes."""
    policy = POLICIES.get(request.endpoint) if request.endpoint else OPEN  # no route: the 404 or 405 as usual
    authenticator: Authenticator = current_app.extensions["order_gateway_auth"]
    if isinstance(policy, OpenWhen):
        if policy.setting in authenticator.opened:
            return
        policy = policy.scopes or None
    if policy in (OPEN, SESSION):
        return
    key = _bearer_key()
    if key is None and not request.headers.get("Authorization") and authenticator.allow_anonymous:
        caller: Caller | None = ANONYMOUS
    else:
        caller = authenticator.caller_for(key) if key is not None else None
    if caller is None:
        raise Unauthorized("Send a valid API key as Authorization: Bearer <key>." if key is None
                           else "The API key is not known.", challenge=CHALLENGE)
    g.caller = caller
    request.environ[ENVIRON_KEY] = caller.name
    logs.note(caller=caller.name)
    if isinstance(policy, tuple):
        require_scope(*policy)


def current_caller() -> Caller:
    """The authenticated caller of this request."""
    return g.get("caller") or ANONYMOUS


def require_scope(*scopes: str) -> None:
    """403 unless the caller has one of these scopes."""
    caller = current_caller()
    if not caller.scopes.intersection(scopes):
        raise Forbidden(f"Caller {caller.name!r} lacks the scope {' or '.join(scopes)}.", scope=scopes[0])


def require_connection(name: str) -> None:
    """403 unless the caller may use this connection."""
    caller = current_caller()
    if caller.connections is not None and name not in caller.connections:
        raise Forbidden(f"Caller {caller.name!r} may not use connection {name!r}; it may use: "
                        f"{', '.join(sorted(caller.connections))}.")


def init_app(app: Flask, settings: GatewaySettings) -> None:
    """Authenticate every request before its view; a gateway nobody could call refuses to start."""
    if not settings.callers and not settings.allow_anonymous:
        raise ConfigError(settings.source, "callers", "no [callers.<name>] is configured, so every request would be "
                                                      "refused: configure the services that call the gateway, or set "
                                                      "[gateway] allow_anonymous = true to serve anyone without a key")
    app.extensions["order_gateway_auth"] = Authenticator(settings)
    app.before_request(authenticate)
