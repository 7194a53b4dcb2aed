"""The operator's console: server-rendered pages (Flask's Jinja2; every asset is the gateway's own, no CDN, no
script) to see each connection's health, follow one order through its backend exchanges and events, and redeliver
dead deliveries.

Access is a login form: an API key of a caller with the scope `console` starts a session, Flask's signed cookie
(HttpOnly, SameSite=Strict, Secure unless `[console] secure_cookie = false`, path /console, `session_minutes`
long) holding the caller's name, when it began and a CSRF token every form carries back. Each request checks that
the caller is still configured with the scope. The cookie is signed with `[console] session_secret`, which every
process serving the console must share; without it each server makes one at start (its workers share it, as the
app is loaded before they fork), so a restart ends every session.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from flask import Flask, Request
from flask.sessions import SecureCookieSessionInterface, SessionMixin

from gateway.config import GatewaySettings
from gateway.console import views

COOKIE_NAME = "order_gateway_console"
PATH = "/console"


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions for the console's pages only: an API request has no session to open (nor any
    cookie it could be given), and skips the signing work."""

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        """The console's session; a null session everywhere else."""
        if request.path != PATH and not request.path.startswith(PATH + "/"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def init_app(app: Flask, settings: GatewaySettings) -> None:
    """Serve the console under /console with its session cookie."""
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
    app.register_blueprint(views.blueprint)
