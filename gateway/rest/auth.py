"""Callers: every request but the webhook receiver's and the docs' carries `Authorization: Bearer <key>`, and what
it asks for is checked against the caller's scopes and connections.

Keys are compared in constant time against every configured key (never looked up by value), and never logged or
answered: the scrubber masks them. What each endpoint needs is its Policy, part of its view's one declaration
(gateway/rest/endpoints.py: `@endpoint(..., policy=...)`, or `@undocumented(policy)` for a page): who may call it,
and whether it touches a connection's data (orders, events, exchanges) — then its view keeps to the caller's
connections, through `Caller.sees()`, `scoped_connections()`, `require_connection()` or `authorize()`. A route
without a declaration needs a known caller, so a new endpoint is closed until it says otherwise;
tests/test_route_policies.py fails for a route without one, and for a connection-data route whose view never reads
the caller's connections. The caller's name is on
`g.caller`, in the WSGI environ for the access log (`gateway.caller`), and in what operators see of its actions.
Nothing else establishes a caller: without one, current_caller() is NOBODY, with no scope and no connection; only
`[gateway] allow_anonymous = true` serves a request without a key, as ANONYMOUS, with every scope.

A request that presents credentials is checked against the authentication throttle first (gateway/throttle.py): an
address or key prefix with too many failures is refused with 429, whatever the key, and every unknown key counts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, request

from gateway import logs
from gateway.callers import ANONYMOUS, NOBODY, Authenticator, Caller
from gateway.config import GatewaySettings
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
    """Who may call an endpoint. `access`: OPEN, SESSION, KNOWN, an OpenWhen, or the scopes of which the caller
    needs one; `dry_run_scopes`: scopes that serve it too when its query's dry_run is true (so a caller with none of
    these nor of `access` is refused before anything is read); `connection_data`: whether it reads or changes a
    connection's data (orders, events, exchanges), so that its view must keep to the caller's connections."""

    access: str | OpenWhen | tuple[str, ...]
    connection_data: bool = field(kw_only=True)
    dry_run_scopes: tuple[str, ...] = field(default=(), kw_only=True)


DOCS = OpenWhen("open_docs")
METRICS = OpenWhen("open_metrics", ("metrics:read",))
CHALLENGE = 'Bearer realm="order gateway"'
ENVIRON_KEY = "gateway.caller"

#: the attribute of a view function that holds its declaration (gateway/rest/endpoints.py), its policy among it
DECLARATION_ATTRIBUTE = "declaration"
#: the policy of a route without a declaration: closed to all but known callers, and assumed to touch data
UNDECLARED = Policy(KNOWN, connection_data=True)
#: a request no route serves: answered 404 or 405 as usual
OPEN_ROUTE = Policy(OPEN, connection_data=False)


def policy_of_view(view: Callable | None) -> Policy:
    """The policy a view function declares (UNDECLARED when it declares none)."""
    declaration = getattr(view, DECLARATION_ATTRIBUTE, None)
    return UNDECLARED if declaration is None else declaration.policy


def _bearer_key() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def authenticate() -> None:
    """Establish the caller before any view runs; 429 while the throttle refuses the client, 401 without a known
    key, 403 without any of the scopes."""
    # no route: the 404 or 405 as usual
    policy = policy_of_view(current_app.view_functions.get(request.endpoint)) if request.endpoint else OPEN_ROUTE
    access = policy.access
    authenticator: Authenticator = current_gateway().authenticator
    if isinstance(access, OpenWhen):
        if getattr(authenticator.settings, access.setting):
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
    if isinstance(access, tuple):  # a dry run's scopes are enough for now: the view's authorize() knows the query
        require_scope(*access, *policy.dry_run_scopes)


def current_caller() -> Caller:
    """The caller of this request; NOBODY (no scope, no connection) when nothing established one."""
    return g.get("caller") or NOBODY


def scoped_connections() -> frozenset[str] | None:
    """The names of the connections whose data the caller of this request may see (for a store's list query), or
    None for every one."""
    return current_caller().connections


def listed_connections(connection: str | None) -> Collection[str] | None:
    """The connections whose data a list shows the caller (events, update jobs): its own (None: every one), narrowed
    to `connection` when given (to none when that is not one of its own)."""
    if connection is None:
        return scoped_connections()
    return {connection} if current_caller().sees(connection) else set()


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


def authorize(connection: str, query: Mapping[str, Any]) -> None:
    """403 unless the caller has the scope its endpoint's policy asks of a request with this query (a dry run's
    may be fewer), and may use `connection`."""
    policy = policy_of_view(current_app.view_functions.get(request.endpoint))
    require_scope(*policy.access, *(policy.dry_run_scopes if query.get("dry_run") else ()))
    require_connection(connection)


def init_app(app: Flask, settings: GatewaySettings) -> None:
    """Authenticate every request before its view; a gateway nobody could call refuses to start."""
    if not settings.callers and not settings.allow_anonymous:
        raise ConfigError(settings.source, "callers", "no [callers.<name>] is configured, so every request would be "
                                                      "refused: configure the services that call the gateway, or set "
                                                      "[gateway] allow_anonymous = true to serve anyone without a key")
    gateway_of(app).authenticator = Authenticator(settings)
    gateway_of(app).auth_throttle = AuthThrottle.for_settings(settings)
    app.before_request(authenticate)
