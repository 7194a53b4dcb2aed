"""The operator's console: server-rendered pages (Flask's Jinja2; every asset is the gateway's own, no CDN, no
script) to see each connection's health, follow one order through its backend exchanges and events, and redeliver
dead deliveries.

Access is a login form: an API key of a caller with the scope `console` starts a session, kept on the server
(gateway/console/sessions.py: SQLite beside the events database, or Redis) with its caller, the tag of the key it
logged in with, its CSRF token and its end, `[console] session_minutes` after the login whatever happens in
between. The browser's cookie (HttpOnly, SameSite=Strict, Secure unless `[console] secure_cookie = false`, path
/console) holds only the session's random id, signed with `[console] session_secret`, which every process serving
the console must share; without it each server makes one at start (its workers share it, as the app is loaded
before they fork), so a restart ends every session. Logging out ends the session on the server, for every copy of
the cookie. Each request checks that the caller is still configured with the scope and the key it logged in with,
and the start of a gateway ends the sessions its configuration no longer allows. Failed logins count towards the
authentication throttle (gateway/throttle.py) as failed API keys do.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin

from gateway.config import GatewaySettings
from gateway.console import views
from gateway.console.sessions import open_console_session_store
from gateway.rest.endpoints import declare_route
from gateway.runtime import gateway_of
from gateway.stores import is_store_failure

COOKIE_NAME = "order_gateway_console"
PATH = "/console"
#: what the cookie holds: the session's random id (before a login, a random id the login form's token is bound to)
SESSION_ID = "sid"
log = logging.getLogger("gateway.console")


class ConsoleCookie(SecureCookieSession):
    """The console's Flask session: one member, the id. `opened_id` is the id the request came with; `ends_at`,
    set by a login, the session's end (UNIX seconds), which the cookie's Expires repeats."""

    opened_id: str | None = None
    ends_at: float | None = None


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie for the console's pages only, holding nothing but an id: an API request has no session
    to open (nor any cookie it could be given), and skips the signing work."""

    session_class = ConsoleCookie

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        """The console's cookie (anything in it but the id is dropped unread); a null session everywhere else."""
        if request.path != PATH and not request.path.startswith(PATH + "/"):
            return self.make_null_session(app)
        opened = super().open_session(app, request)
        session_id = opened.get(SESSION_ID) if opened is not None else None
        if not isinstance(session_id, str) or not session_id:
            session_id = None
        cookie = ConsoleCookie({SESSION_ID: session_id} if session_id else {})
        cookie.opened_id = session_id
        return cookie

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Only when the id changed (a login, a new login form): the cookie's end stays the login's."""
        return session.get(SESSION_ID) != getattr(session, "opened_id", None)

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        """A logged-in session's end; before a login, none (the browser forgets the cookie when it closes)."""
        ends_at = getattr(session, "ends_at", None)
        return datetime.fromtimestamp(ends_at, UTC) if ends_at else None

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write the id alone: whatever else a request put in the session (flashed messages, which
        views.keep_notes() keeps on the server) never reaches the cookie."""
        for name in [name for name in session if name != SESSION_ID]:
            dict.pop(session, name)  # quietly: the cookie is rewritten for a new id only
        super().save_session(app, session, response)


def _sweep(app: Flask, settings: GatewaySettings) -> None:
    """End the sessions whose caller, scope console or key this configuration no longer has."""
    authenticator = gateway_of(app).authenticator

    def allowed(caller: str, key_tag: str) -> bool:
        found = authenticator.holding(caller, key_tag)
        return found is not None and views.SCOPE in found.scopes

    try:
        ended = gateway_of(app).console_sessions.end_unless(allowed)
    except Exception as error:
        if not is_store_failure(error):
            raise
        # Each request checks its session against the configuration too: nothing is let in meanwhile.
        log.warning("the console's sessions could not be checked against the configuration at start (%s)",
                    type(error).__name__)
        return
    if ended:
        log.info("%d console sessions ended: their caller, its scope console or its key is no longer configured",
                 ended)


def init_app(app: Flask, settings: GatewaySettings) -> None:
    """Serve the console under /console with its sessions."""
    console = settings.console
    app.secret_key = console.session_secret.reveal() if console.session_secret else secrets.token_urlsafe(48)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH=PATH,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=console.secure_cookie,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=console.session_minutes),
    )
    app.session_interface = ConsoleSessionInterface()
    gateway_of(app).console_sessions = open_console_session_store(settings)
    _sweep(app, settings)
    app.register_blueprint(views.blueprint)
    declare_route(app, "console.static", views.PAGE)  # the stylesheet, served to the login form too
