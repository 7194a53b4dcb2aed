"""The console's pages and forms: log in and out, the overview, an order's timeline, redeliver, retry an update job.

Pages read what the gateway already keeps — the exchange journal, the event store, the update jobs, the breakers —
and never hold a secret: the journal's requests are masked as dry runs show them, and every page passes the
scrubber last. A store that cannot be read leaves its part of a page saying so, never the page failing.

A caller limited to some connections sees and acts on those only: the stores' queries filter by them (so a page's
limits count what it may see), a connection it may not use is an unknown one, and the redeliver and retry buttons
are the API's redelivery and retry, whose rules make another connection's event or job an unknown one.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from lxml import etree

from gateway import logs
from gateway.console import charts, sessions
from gateway.errors import GatewayError, TooManyFailedAttempts
from gateway.journal import Exchange
from gateway.rest import auth
from gateway.rest.endpoints import undocumented
from gateway.rest.events import queue_redelivery, redelivery_request
from gateway.rest.idempotency import request_fingerprint, run_idempotently
from gateway.rest.updates import queue_retry, retry_request
from gateway.runtime import current_gateway
from gateway.safexml import UnsafeXML, parse_untrusted_xml
from gateway.stores import is_store_failure

blueprint = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                      static_folder="static")
log = logging.getLogger("gateway.console")

SCOPE = "console"
REDELIVER_SCOPE = "events:redeliver"
#: the scope of the API's POST /updates/<id>/retry, which the retry button stands for
RETRY_SCOPE = "orders:write"
#: what a page lists at most: dead and pending deliveries, an order's exchanges, events and update jobs
LIST_LIMIT = 50
TIMELINE_LIMIT = 200
MAX_KEY_CHARS = 512
MAX_ORDER_ID_CHARS = 200
#: endpoints served without a session: the login form and the stylesheet
PUBLIC_ENDPOINTS = frozenset({"console.login_form", "console.log_in", "console.static"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: every page checks its session and the scope console itself (require_login, below); a page that shows or acts on
#: a connection's data keeps to the caller's connections
PAGE = auth.Policy(auth.SESSION, connection_data=False)
DATA_PAGE = auth.Policy(auth.SESSION, connection_data=True)
T = TypeVar("T")


# -- the session ---------------------------------------------------------------------------------------------------



def _sessions() -> sessions.ConsoleSessionStore:
    return current_gateway().console_sessions


def _login_token() -> str:
    """The login form's CSRF token: bound to the random id this browser's cookie holds before a login (one is made
    if it has none) and to the cookie's secret, so nothing of it is stored."""
    browser = session.get("sid")
    if not browser:
        browser = session["sid"] = secrets.token_urlsafe(32)
    return hmac.new(current_app.secret_key.encode(), b"console login\0" + browser.encode(), "sha256").hexdigest()


def _csrf_token() -> str:
    """The CSRF token the forms of this page carry: the session's own, or before a login the login form's."""
    current = g.get("console_session")
    return current.csrf_token if current is not None else _login_token()


def _form_is_ours() -> bool:
    sent, expected = request.form.get("csrf_token", ""), _csrf_token()
    return bool(sent) and hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), expected.encode())


def _session_caller() -> auth.Caller | None:
    """The caller of this request's session, if the session is live and its caller is still configured with the
    console scope and the key it logged in with; a session that is not is ended. Kept on `g` for the request."""
    if "console_session" in g:
        return g.caller if g.console_session is not None else None
    g.console_session = None
    session_id = session.get("sid")
    current = _sessions().get(session_id) if session_id else None
    if current is None:
        return None
    caller = current_gateway().authenticator.holding(current.caller, current.key_tag)
    if caller is None or SCOPE not in caller.scopes:
        _sessions().end(current.id)
        log.info("console session of caller %s ended: the caller, its scope console or the key it logged in with is "
                 "no longer configured", current.caller)
        return None
    g.console_session, g.caller = current, caller
    if current.notes:
        session["_flashes"] = [list(note) for note in current.notes]  # for get_flashed_messages()
    return caller


def _safe_next(target: str | None) -> str | None:
    """A place in the console to go back to: a path under /console, nothing else (no open redirect)."""
    if not target or len(target) > 2048:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console") or target.startswith("//") \
            or "\\" in target:
        return None
    return target


@blueprint.before_request
def require_login() -> Response | None:
    """Every console page but the login form needs a session; every form needs its CSRF token."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    caller = _session_caller()
    if caller is None:
        session.pop("sid", None)
        target = request.full_path if request.method == "GET" else None
        return redirect(url_for("console.login_form", next=target.rstrip("?") if target else None), 303)
    request.environ[auth.ENVIRON_KEY] = caller.name
    logs.note(caller=caller.name)
    if request.method == "POST" and not _form_is_ours():
        return _page("console/refused.html", 403, reason="This form has expired or did not come from this console. "
                                                         "Reload the page and try again.")
    return None


@blueprint.after_request
def keep_notes(response: Response) -> Response:
    """Messages flashed for the next page stay with the session on the server, never in the cookie. Keeping them is
    bookkeeping: a store that fails loses them (logged), never the reply."""
    notes = [tuple(note) for note in session.pop("_flashes", None) or []]
    current = g.get("console_session")
    if current is not None and tuple(notes) != current.notes:
        try:
            _sessions().set_notes(current.id, notes)
        except Exception as error:
            if not is_store_failure(error):
                raise
            log.warning("the console's messages for the next page were lost: the %s failed (%s)",
                        sessions.STORE_NAME, type(error).__name__)
    return response


@blueprint.after_request
def harden(response: Response) -> Response:
    """No framing, no caching, no outside resources; and no secret, ever, whatever a page shows."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.mimetype == "text/html" and not response.direct_passthrough:
        data = response.get_data()
        clean = current_gateway().scrubber.scrub_bytes(data)
        if clean != data:
            response.set_data(clean)
    return response


def _page(template: str, status: int = 200, **context: Any) -> Response:
    body = render_template(template, caller=g.get("caller"), csrf_token=_csrf_token(), **context)
    return Response(body, status=status, mimetype="text/html")


@blueprint.get("/login")
@undocumented(PAGE)
def login_form() -> Response:
    """The login form: an API key of a caller with the console scope."""
    if _session_caller() is not None:
        return redirect(_safe_next(request.args.get("next")) or url_for("console.overview"), 303)
    return _page("console/login.html", next=_safe_next(request.args.get("next")) or "")


@blueprint.post("/login")
@undocumented(PAGE)
def log_in() -> Response:
    """Start a session for the caller whose key this is; a client the authentication throttle refuses gets 429
    whatever the key, and an unknown key counts towards it."""
    target = _safe_next(request.form.get("next")) or ""
    if not _form_is_ours():
        return _page("console/login.html", 403, next=target,
                     error="The login form expired. Log in again.")
    key = request.form.get("key", "").strip()
    throttle = current_gateway().auth_throttle
    try:
        throttle.check(request.remote_addr, key or None)
    except TooManyFailedAttempts as refusal:
        reply = _page("console/login.html", 429, next=target, error=refusal.detail)
        reply.headers.update(refusal.reply_headers())
        return reply
    authenticator = current_gateway().authenticator
    found = authenticator.log_in(key) if 0 < len(key) <= MAX_KEY_CHARS else None
    if found is None:
        throttle.note_failure(request.remote_addr, key or None)
        log.warning("console login refused: an unknown key")
        return _page("console/login.html", 401, next=target, error="That key is not known.")
    caller, key_tag = found
    if SCOPE not in caller.scopes:
        log.warning("console login refused: caller %s lacks the scope console", caller.name)
        return _page("console/login.html", 403, next=target,
                     error=f"The caller {caller.name} lacks the scope {SCOPE}.")
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    started = _sessions().start(caller.name, key_tag, lifetime_seconds=lifetime)
    previous = session.get("sid")
    if previous:
        _sessions().end(previous)  # a login while one is open (in another tab, say) replaces it
    session.clear()  # a new id: nothing of what the cookie held before the login carries over
    session["sid"] = started.id
    session.ends_at = started.expires_at  # the cookie's Expires
    log.info("console session started by caller %s", caller.name)
    return redirect(target or url_for("console.overview"), 303)


@blueprint.post("/logout")
@undocumented(PAGE)
def log_out() -> Response:
    """End the session, on the server: a copy of the cookie opens nothing afterwards."""
    _sessions().end(g.console_session.id)
    g.console_session = None
    log.info("console session ended by caller %s", g.caller.name)
    session.clear()
    return redirect(url_for("console.login_form"), 303)


# -- reading what the gateway keeps --------------------------------------------------------------------------------

def _read(what: str, read: Callable[[], T], unavailable: list[str]) -> T | None:
    """`read()`, or None with `what` noted as unavailable (named by its kind only: an error's text may hold a URL)."""
    try:
        return read()
    except Exception as error:
        log.warning("the console could not read %s (%s)", what, type(error).__name__)
        unavailable.append(what)
        return None


def _visible_connections() -> dict:
    caller: auth.Caller = g.caller
    return {name: connection for name, connection in current_gateway().connections.by_name.items()
            if caller.sees(name)}


def _at(seconds: float | None) -> str:
    return "never" if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _connection_summary(name: str, connection: Any, now: float, unavailable: list[str]) -> dict:
    journal = current_gateway().recorder.flushed_journal()
    timings = _read(f"the journal of {name}", lambda: journal.timings(name, since=now - 3600), unavailable) or []
    per_minute = charts.minutes(timings, now)
    breaker = _read(f"the breaker of {name}", connection.breaker_state, unavailable)
    return {
        "name": name,
        "backend": connection.kind,
        "breaker": breaker["state"] if breaker else "unknown",
        "failures_in_a_row": breaker["failures"] if breaker else None,
        "calls": sum(minute.calls for minute in per_minute),
        "failed": sum(minute.failures for minute in per_minute),
        "last_success": _at(_read(f"the journal of {name}", lambda: journal.last_at(name, ["ok"]), unavailable)),
        "last_failure": _at(_read(f"the journal of {name}",
                                  lambda: journal.last_at(name, sorted(charts.FAILED_OUTCOMES)), unavailable)),
        "chart": charts.latency_chart(per_minute, label=f"{name}: latency over the last hour"),
    }


def _age(seconds: float) -> str:
    """A duration as people say it: seconds, minutes, hours or days."""
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _queued_jobs(visible: dict, now: float, unavailable: list[str]) -> dict[str, dict]:
    """Per connection the caller may see that has update jobs queued or sending: how many, and the oldest's age."""
    summary = _read("the update jobs", current_gateway().events.jobs.active_summary, unavailable) or {}
    return {name: {"count": count, "oldest_age": _age(now - oldest)}
            for name, (count, oldest) in summary.items() if name in visible}


def _delivery_rows(events: list[dict], states: set[str]) -> list[dict]:
    rows = []
    for stored in events:
        for delivery in stored["deliveries"]:
            if delivery["state"] in states:
                rows.append({"event": stored["event"], "received_at": _at(stored["received_at"]),
                             "subscriber": delivery["subscriber"], "state": delivery["state"],
                             "attempts": delivery["attempts"], "last_error": delivery["last_error"],
                             "next_attempt_at": _at(delivery["next_attempt_at"]) if delivery["next_attempt_at"]
                             else None})
    return rows


@blueprint.get("")
@undocumented(DATA_PAGE)
def overview() -> Response:
    """Connections (state, calls, latency, queued update jobs), the order search, and the deliveries that need a
    look."""
    now, unavailable = time.time(), []
    visible = _visible_connections()
    summaries = [_connection_summary(name, connection, now, unavailable) for name, connection in visible.items()]
    queued_jobs = _queued_jobs(visible, now, unavailable)
    for summary in summaries:
        summary["queued_jobs"] = queued_jobs.get(summary["name"])
    store, scope = current_gateway().events.store, auth.scoped_connections()
    dead = _read("the dead deliveries", lambda: store.list_events(state="dead", limit=LIST_LIMIT, connections=scope),
                 unavailable)
    pending = _read("the pending deliveries",
                    lambda: store.list_events(state="pending", limit=LIST_LIMIT, connections=scope), unavailable)
    return _page("console/overview.html", connections=summaries,
                 dead=_delivery_rows(dead or [], {"dead"}),
                 pending=_delivery_rows(pending or [], {"pending"}),
                 unavailable=sorted(set(unavailable)), can_redeliver=REDELIVER_SCOPE in g.caller.scopes,
                 new_key=lambda: secrets.token_urlsafe(16), here=url_for("console.overview"),
                 connection_names=list(visible))


# -- an order's timeline -------------------------------------------------------------------------------------------

def pretty_body(text: str | None) -> str:
    """A body as people read it: XML and JSON indented; anything else (a body cut short, say) as it is."""
    if not text:
        return ""
    stripped = text.lstrip()
    if stripped.startswith("<"):
        try:
            return etree.tostring(parse_untrusted_xml(stripped.encode("utf-8")), pretty_print=True,
                                  encoding="unicode")
        except (UnsafeXML, etree.XMLSyntaxError, ValueError):
            return text
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            return text
    return text


def _job_entry(job: dict) -> dict:
    """An update job as the timeline shows it: its attempts oldest first, the last one's outcome on top."""
    attempts = [{**attempt, "when": _at(attempt["at"])} for attempt in job["attempts"]]
    last = attempts[-1] if attempts else None
    detail = _result_detail(job["result"])
    return {"kind": "job", "at": job["accepted_at"], "when": _at(job["accepted_at"]), "job": job,
            "finished": _at(job["finished_at"]) if job["finished_at"] is not None else None,
            "attempts": attempts, "last_attempt": last,
            # the result's problem, unless the last attempt's error already says it
            "detail": detail if last is None or detail != last.get("error") else None}


def _result_detail(result: dict | None) -> str | None:
    """What a final job's problem document says went wrong (its detail, else its title), if it has one."""
    body = result.get("body") if isinstance(result, dict) else None
    if not isinstance(body, dict):
        return None
    detail = body.get("detail") or body.get("title")
    return str(detail) if detail else None


def _exchange_entry(exchange: Exchange) -> dict:
    request_part, reply = exchange.request, exchange.reply
    return {
        "kind": "exchange", "at": exchange.at, "when": _at(exchange.at), "exchange": exchange,
        "request_head": f"{request_part.get('method', '')} {request_part.get('url', '')}",
        "request_headers": request_part.get("headers") or {},
        "request_body": pretty_body(request_part.get("body")),
        "reply_status": reply.get("status") if reply else None,
        "reply_headers": (reply.get("headers") or {}) if reply else {},
        "reply_body": pretty_body(reply.get("body")) if reply else "",
    }


@blueprint.get("/orders")
@undocumented(DATA_PAGE)
def order_timeline() -> Response:
    """Every exchange with a backend, every event and every update job of one order, in the order they
    happened."""
    order_id = request.args.get("order_id", "").strip()
    connection = request.args.get("connection", "").strip() or None
    visible = _visible_connections()
    problems = []
    if not order_id:
        return redirect(url_for("console.overview"), 303)
    if len(order_id) > MAX_ORDER_ID_CHARS:
        problems.append(f"An order id has at most {MAX_ORDER_ID_CHARS} characters.")
    if connection is not None and connection not in visible:
        problems.append(f"Unknown connection {connection!r}; one of: {', '.join(visible)}.")
    if problems:
        return _page("console/order.html", 422, order_id=order_id[:MAX_ORDER_ID_CHARS], connection=connection,
                     entries=[], problems=problems, unavailable=[], connection_names=list(visible),
                     can_redeliver=False, can_retry=False, new_key=lambda: "", here="")
    unavailable: list[str] = []
    # The stores filter by the caller's connections (the one searched for, when given: one of them, see above).
    scope = auth.scoped_connections() if connection is None else {connection}
    journal = current_gateway().recorder.flushed_journal()
    exchanges = _read("the exchange journal", lambda: journal.list(order_id=order_id, connections=scope,
                                                                   limit=TIMELINE_LIMIT), unavailable) or []
    store = current_gateway().events.store
    events = _read("the event store", lambda: store.list_events(order_id=order_id, connections=scope,
                                                                limit=TIMELINE_LIMIT), unavailable) or []
    jobs = current_gateway().events.jobs
    updates = _read("the update jobs", lambda: jobs.list_jobs(order_id=order_id, connections=scope,
                                                              limit=TIMELINE_LIMIT), unavailable) or []
    entries = [_exchange_entry(exchange) for exchange in exchanges]
    entries += [_job_entry(job) for job in updates]
    entries += [{"kind": "event", "at": stored["received_at"], "when": _at(stored["received_at"]),
                 "event": stored["event"],
                 "deliveries": [{**delivery, "history": [{**item, "when": _at(item["at"])}
                                                         for item in delivery["history"]]}
                                for delivery in stored["deliveries"]]}
                for stored in events]
    entries.sort(key=lambda entry: entry["at"])
    return _page("console/order.html", order_id=order_id, connection=connection, entries=entries, problems=[],
                 unavailable=unavailable, connection_names=list(visible),
                 can_redeliver=REDELIVER_SCOPE in g.caller.scopes, can_retry=RETRY_SCOPE in g.caller.scopes,
                 new_key=lambda: secrets.token_urlsafe(16), here=request.full_path)


# -- redelivery ------------------------------------------------------------------------------------------------------

def _as_the_api(scope: str, refused: str, api_request: tuple[str, str],
                produce: Callable[[], Response]) -> Response | None:
    """What a console button shares with the API action it stands for: the action's scope, the form's
    Idempotency-Key with the API request's fingerprint (so a key means the same whichever sent it), and the API's
    reply; None, with a note saying why, when nothing was done (`refused`: what the note says was not done)."""
    if scope not in g.caller.scopes:
        flash(f"The caller {g.caller.name} lacks the scope {scope}: {refused}.", "error")
        return None
    key = _form_key()
    if key is None:
        flash("This form has no usable Idempotency-Key; reload the page and try again.", "error")
        return None
    method, path = api_request
    try:
        reply = run_idempotently(key, request_fingerprint(method, path, [], b""), lambda listener: produce())
    except GatewayError as error:
        flash(error.detail, "error")
        return None
    if reply.status_code != 202:
        flash(_reply_detail(reply), "error")
        return None
    return reply


@blueprint.post("/events/<event_id>/redeliver")
@undocumented(DATA_PAGE)
def redeliver(event_id: str) -> Response:
    """The API's POST /events/<id>/redeliver, from a button: the same rules (an event of a connection the caller
    may not use is unknown), its Idempotency-Key the form's."""
    back = _safe_next(request.form.get("next")) or url_for("console.overview")
    reply = _as_the_api(REDELIVER_SCOPE, "nothing was redelivered", redelivery_request(event_id),
                        lambda: queue_redelivery(event_id))
    if reply is not None and reply.headers.get("Idempotent-Replayed") == "true":
        flash(f"Event {event_id} was already queued again by this button; it was not queued a second time.", "info")
    elif reply is not None:
        subscribers = ", ".join(json.loads(reply.get_data())["redelivering_to"]) or "no subscriber"
        flash(f"Event {event_id} is queued again for {subscribers}.", "info")
    return redirect(back, 303)


def _reply_detail(reply: Response) -> str:
    try:
        return str(json.loads(reply.get_data()).get("detail") or f"HTTP {reply.status_code}")
    except ValueError:
        return f"HTTP {reply.status_code}"


def _form_key() -> str | None:
    """The form's Idempotency-Key, if it is one the API would take (1 to 255 printable ASCII characters)."""
    key = request.form.get("idempotency_key", "")
    return key if 1 <= len(key) <= 255 and key.isascii() and key.isprintable() else None


# -- retrying an update job ------------------------------------------------------------------------------------------

@blueprint.post("/updates/<job_id>/retry")
@undocumented(DATA_PAGE)
def retry_update(job_id: str) -> Response:
    """The API's POST /updates/<id>/retry, from a button: the same rules (a job of a connection the caller may not
    use is unknown, a done one is not sent again), its Idempotency-Key the form's."""
    back = _safe_next(request.form.get("next")) or url_for("console.overview")
    queued_again: list[bool] = []

    def retry() -> Response:
        reply, changed = queue_retry(job_id)
        queued_again.append(changed)
        return reply

    reply = _as_the_api(RETRY_SCOPE, "nothing was queued again", retry_request(job_id), retry)
    if reply is not None and reply.headers.get("Idempotent-Replayed") == "true":
        flash(f"Update job {job_id} was already queued again by this button; it was not queued a second time.",
              "info")
    elif reply is not None and queued_again[0]:
        flash(f"Update job {job_id} is queued again, behind the jobs of its connection accepted before.", "info")
    elif reply is not None:
        state = json.loads(reply.get_data())["state"]
        flash(f"Update job {job_id} is {state} already: nothing changed.", "info")
    return redirect(back, 303)
