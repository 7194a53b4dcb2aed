"""The one scrubbing function: every credential the gateway holds, and the forms it travels in, masked.

A backend may echo what it was sent — a password in a fault code, the Authorization header in a fault string, an
API key in an error code — so whatever reaches a reply or a log line first passes through a Scrubber. Its forms
of each secret: the secret itself, URL-encoded (`quote` and `quote_plus`), JSON-escaped (as Flask writes
non-ASCII), HTML-escaped (as a page shows it), and for every user/password pair the base64 an HTTP Basic header
carries. Scrubbing happens before anything is truncated, so no cut can leave part of a secret in clear.

Where it applies: `gateway.rest.problems` scrubs every problem document, an `after_request` hook scrubs every JSON
reply as a last line, the console scrubs every page it serves, and a log record factory (`install_log_scrubbing`)
scrubs each record's message and traceback when the record is made, so every handler — gunicorn's, pytest's, a JSON
formatter — sees it clean; the gateway's log formatters scrub each finished line too.
Secrets shorter than MIN_SECRET_LENGTH are not scrubbed: masking every "a" in every text would make replies
unreadable and say which character the secret is.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from gateway.config import MASK, GatewaySettings, Secret

MIN_SECRET_LENGTH = 4


def _forms(secret: str) -> set[str]:
    """The secret and the encodings it may come back in."""
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1], html.escape(secret)}


def basic_credentials(username: str, password: str) -> str:
    """The base64 of `username:password`, as an HTTP Basic Authorization header carries it."""
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class Scrubber:
    """Masks a fixed set of secrets, in every form, in text, documents and bytes."""

    def __init__(self, secrets: Iterable[str] = (), basic_pairs: Iterable[tuple[str, str]] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                forms |= _forms(secret)
        for username, password in basic_pairs:
            if len(password) >= MIN_SECRET_LENGTH:
                forms.add(basic_credentials(username, password))
        # Longest first, so a form that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes_pattern = (re.compile(b"|".join(re.escape(form.encode()) for form in ordered))
                               if ordered else None)

    def scrub(self, text: str) -> str:
        """The text with every secret form replaced by the mask."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def scrub_document(self, document: Any) -> Any:
        """A JSON-ready document with every string (keys included) scrubbed."""
        if isinstance(document, str):
            return self.scrub(document)
        if isinstance(document, dict):
            return {self.scrub(key) if isinstance(key, str) else key: self.scrub_document(value)
                    for key, value in document.items()}
        if isinstance(document, list | tuple):
            return [self.scrub_document(value) for value in document]
        return document

    def scrub_bytes(self, data: bytes) -> bytes:
        """Serialized text (UTF-8) with every secret form replaced by the mask."""
        if self._bytes_pattern is None or not data:
            return data
        return self._bytes_pattern.sub(MASK.encode(), data)

    @classmethod
    def for_settings(cls, settings: GatewaySettings) -> Scrubber:
        """Every credential of the configuration: connections (their own settings and webhooks' included)
        and subscribers, with the Basic pairs of connections and webhooks, and the password of every proxy_url
        (as written and decoded, and in the Basic pair its Proxy-Authorization header carries)."""
        secrets: list[str] = []
        pairs: list[tuple[str, str]] = []
        for egress in (*settings.connections.values(), *settings.subscribers.values()):
            credentials = egress.proxy_credentials()
            if credentials is not None:
                secrets += [credentials[1], urlsplit(egress.proxy_url.reveal()).password or ""]
                pairs.append(credentials)
        for connection in settings.connections.values():
            webhooks = connection.webhooks or {}
            for value in (connection.password, *connection.options.values(), *webhooks.values()):
                if isinstance(value, Secret) and value.reveal():
                    secrets.append(value.reveal())
                    if value.reveal().startswith("whsec_"):
                        secrets.append(value.reveal().removeprefix("whsec_"))
            if connection.password is not None and connection.username:
                pairs.append((connection.username, connection.password.reveal()))
            if webhooks.get("password") is not None and webhooks.get("username"):
                pairs.append((webhooks["username"], webhooks["password"].reveal()))
        for caller in settings.callers.values():
            secrets += [key.reveal() for key in caller.keys]
        if settings.console.session_secret is not None:
            secrets.append(settings.console.session_secret.reveal())
        for subscriber in settings.subscribers.values():
            secret = subscriber.secret.reveal()
            secrets += [secret, secret.removeprefix("whsec_")]
        return cls(secrets, pairs)


#: every live Scrubber that log records pass through (one per app; tests build many), as weak references: a tuple
#: replaced whole when one is added or dies, so each record reads it without a lock (a WeakSet's iteration guard
#: cost each record several microseconds, twice)
_log_scrubbers: tuple[weakref.ref[Scrubber], ...] = ()
_make_record = logging.getLogRecordFactory()


def _live_scrubbers() -> list[Scrubber]:
    return [scrubber for reference in _log_scrubbers if (scrubber := reference()) is not None]


def _forget_scrubber(reference: weakref.ref[Scrubber]) -> None:
    global _log_scrubbers
    _log_scrubbers = tuple(kept for kept in _log_scrubbers if kept is not reference)


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """A log record whose message and traceback are scrubbed by every registered Scrubber."""
    record = _make_record(*args, **kwargs)
    scrubbers = _live_scrubbers()
    if not scrubbers:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a broken format string is logging's to report, and unscrubbable here
        return record
    traceback = logging.Formatter().formatException(record.exc_info) if record.exc_info else None
    for scrubber in scrubbers:
        message = scrubber.scrub(message)
        traceback = scrubber.scrub(traceback) if traceback else traceback
    record.msg, record.args = message, None
    if traceback:
        record.exc_text = traceback
    return record


def scrub_log_text(text: str) -> str:
    """A formatted log line scrubbed by every registered Scrubber (fields a record factory never sees included)."""
    for scrubber in _live_scrubbers():
        text = scrubber.scrub(text)
    return text


def install_log_scrubbing(scrubber: Scrubber) -> None:
    """Scrub every log record made in this process with `scrubber` (for as long as it lives)."""
    global _log_scrubbers
    if not any(reference() is scrubber for reference in _log_scrubbers):
        _log_scrubbers = (*_log_scrubbers, weakref.ref(scrubber, _forget_scrubber))
    if logging.getLogRecordFactory() is not _scrubbed_record:
        logging.setLogRecordFactory(_scrubbed_record)
