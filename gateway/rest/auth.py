"""Callers: every request but the webhook receiver's and the docs' carries `Authorization: Bearer <key>`, and what
it asks for is checked against the caller's scopes and connections.

Keys are compared in constant time against every configured key (never looked up by value), and never logged or
answered: the scrubber masks them. What each endpoint needs is one table, POLICIES: who may call it, and whether it
touches a connection's data (orders, events, exchanges) — then its view keeps to the caller's connections, through
`Caller.sees()`, `scoped_connections()` or `require_connection()`. An endpoint not in the table needs a known
caller, so a new endpoint is closed until it says otherwise; tests/test_route_policies.py fails for a route missing
from it, and for a connection-data route whose view never reads the caller's connections. The caller's name is on
`g.caller`, in the WSGI environ for the access log (`gateway.caller`), and in what operators see of its actions.
Nothing else establishes a caller: without one, current_caller() is NOBODY, with no scope and no connection; only
`[gateway] allow_anonymous = true` serves a request without a key, as ANONYMOUS, with every scope.

A request that presents credentials is checked against the authentication throttle first (gateway/throttle.py): an
address or key prefix with too many failures is refused with 429, whatever the key, and every unknown key counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from flask import Flask, g, has_request_context, request

from gateway import logs
from gateway.config import SCOPES, GatewaySettings, caller_with_key, key_digest
from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.runtime import current_gateway, gateway_of
from gateway.throttle import AuthThrottle

OPEN = "open"  # authenticated otherwise (the webhook receiver: the vendor's own credentials), or public
SESSION = "session"  # a browser's console login (gateway.console checks its session and the scope)
KNOWN = "known"  # any known caller, whatever its scopes


@dataclass(frozen=True)
class OpenWhen:
    """Open when the [gateway] setting of this name is true; otherwise a known caller with one of `scopes` (none
    given: any known caller)."""

    setting: str
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """One endpoint's entry in POLICIES. `access`: OPEN, SESSION, KNOWN, an OpenWhen, or the scopes of which the
    caller needs one (views may ask for more, e.g. a dry run). `connection_data`: whether it reads or changes a
    connection's data (orders, events, exchanges), so that its view must keep to the caller's connections."""

    access: str | OpenWhen | tuple[str, ...]
    connection_data: bool = field(kw_only=True)


DOCS = OpenWhen("open_docs")
METRICS = OpenWhen("open_metrics", ("metrics:read",))
CHALLENGE = 'Bearer realm="order gateway"'
ENVIRON_KEY = "gateway.caller"
#: set in the WSGI environ when a request read its caller's connections (tests/test_route_policies.py asks it of
#: every route whose policy says it touches connection data)
SCOPED_ENVIRON_KEY = "gateway.connections_scoped"

#: endpoint -> what it needs and whether it touches connection data; every route of the app is listed
#: (tests/test_route_policies.py)
POLICIES: dict[str, Policy] = {
    "orders.update_order": Policy(("orders:write", "orders:dry-run"), connection_data=True),
    "orders.update_orders": Policy(("orders:write", "orders:dry-run"), connection_data=True),
    "events.list_events": Policy(("events:read",), connection_data=True),
    "events.show_event": Policy(("events:read",), connection_data=True),
    "events.redeliver_event": Policy(("events:redeliver",), connection_data=True),
    # a backend's webhook proves itself with its connection's own credentials: there is no caller to scope
    "webhooks.receive_webhook": Policy(OPEN, connection_data=False),
    "exchanges.list_exchanges": Policy(("exchanges:read",), connection_data=True),
    "exchanges.show_exchange": Policy(("exchanges:read",), connection_data=True),
    "health.livez": Policy(OPEN, connection_data=False),
    "health.readyz": Policy(OPEN, connection_data=False),
    # counts and states per connection, for the operators' monitoring: not scoped per caller
    "metrics.show_metrics": Policy(METRICS, connection_data=False),
    "docs.openapi_document": Policy(DOCS, connection_data=False),
    "docs.swagger_ui": Policy(DOCS, connection_data=False),
    "docs.swagger_ui_asset": Policy(DOCS, connection_data=False),
    # Flask's own static route: the gateway has no static folder, so a known caller gets a 404
    "static": Policy(KNOWN, connection_data=False),
    # the console's pages check their session and the scope console themselves (gateway.console.views)
    "console.login_form": Policy(SESSION, connection_data=False),
    "console.log_in": Policy(SESSION, connection_data=False),
    "console.log_out": Policy(SESSION, connection_data=False),
    "console.static": Policy(SESSION, connection_data=False),
    "console.overview": Policy(SESSION, connection_data=True),
    "console.order_timeline": Policy(SESSION, connection_data=True),
    "console.redeliver": Policy(SESSION, connection_data=True),
}
#: the policy of an endpoint missing from POLICIES: closed to all but known callers, and assumed to touch data
UNLISTED = Policy(KNOWN, connection_data=True)


def policy_of(endpoint: str) -> Policy:
    """The endpoint's policy (UNLISTED when the table has none)."""
    return POLICIES.get(endpoint, UNLISTED)


def touches_connection_data(endpoint: str) -> bool:
    """Whether the endpoint's view reads or changes a connection's data, and so must keep to the caller's
    connections."""
    return policy_of(endpoint).connection_data


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
        self.allow_anonymous = settings.allow_anonymous
        self.opened = frozenset(policy.setting for policy in (DOCS, METRICS) if getattr(settings, policy.setting))
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


def _bearer_key() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def authenticate() -> None:
    """Establish the caller before any view runs; 429 while the throttle refuses the client, 401 without a known
    key, 403 without any of the scopes."""
    access = policy_of(request.endpoint).access if request.endpoint else OPEN  # no route: the 404 or 405 as usual
    authenticator: Authenticator = current_gateway().authenticator
    if isinstance(access, OpenWhen):
        if access.setting in authenticator.opened:
            return
        access = access.scopes or KNOWN
    if access in (OPEN, SESSION):
        return
    presented, key = request.headers.get("Authorization"), _bearer_key()
    if not presented and authenticator.allow_anonymous:
        caller: Caller | None = ANONYMOUS
    else:
        throttle: AuthThrottle = current_gateway().auth_throttle
        if presented:
            throttle.check(request.remote_addr, key)
        caller = authenticator.caller_for(key) if key is not None else None
        if caller is None and presented:
            throttle.note_failure(request.remote_addr, key)
    if caller is None:
        raise Unauthorized("Send a valid API key as Authorization: Bearer <key>." if key is None
                           else "The API key is not known.", challenge=CHALLENGE)
    g.caller = caller
    request.environ[ENVIRON_KEY] = caller.name
    logs.note(caller=caller.name)
    if isinstance(access, tuple):
        require_scope(*access)


def current_caller() -> Caller:
    """The caller of this request; NOBODY (no scope, no connection) when nothing established one."""
    return g.get("caller") or NOBODY


def scoped_connections() -> frozenset[str] | None:
    """The names of the connections whose data the caller of this request may see (for a store's list query), or
    None for every one."""
    return current_caller().connections


def require_scope(*scopes: str) -> None:
    """403 unless the caller has one of these scopes."""
    caller = current_caller()
    if not caller.scopes.intersection(scopes):
        raise Forbidden(f"Caller {caller.name!r} lacks the scope {' or '.join(scopes)}.", scope=scopes[0])


def require_connection(name: str) -> None:
    """403 unless the caller may use this connection."""
    caller = current_caller()
    if not caller.sees(name):
        raise Forbidden(f"Caller {caller.name!r} may not use connection {name!r}; it may use: "
                        f"{', '.join(sorted(caller.connections or ()))}.")


def init_app(app: Flask, settings: GatewaySettings) -> None:
    """Authenticate every request before its view; a gateway nobody could call refuses to start."""
    if not settings.callers and not settings.allow_anonymous:
        raise ConfigError(settings.source, "callers", "no [callers.<name>] is configured, so every request would be "
                                                      "refused: configure the services that call the gateway, or set "
                                                      "[gateway] allow_anonymous = true to serve anyone without a key")
    gateway_of(app).authenticator = Authenticator(settings)
    gateway_of(app).auth_throttle = AuthThrottle.for_settings(settings)
    app.before_request(authenticate)
