"""Reading a backend's reply before any operation sees it: one place for what every backend's replies share.

HTTP status, media type, parseability and the SOAP envelope (fault or payload) are classified here, next to
the transport's error mapping (transport.py), and turned into BackendErrors; an operation's `parse` hook gets
only the payload it understands: the first element inside soap:Body, or a decoded JSON document (and the reply's
Retry-After as `valid_retry_after` passes it on, for a refusal of its own that says the backend is overloaded).

    a redirect (3xx), never followed                  BackendFailure  502, naming the status and where it
                                                      pointed (host and path: no credentials, query or fragment)
    refused credentials (401, 403, 407)               BackendFailure  502
    rate limited or overloaded (429, 503) without
      a usable payload                                BackendUnavailable 503, with the backend's Retry-After
    empty, wrong media type, unparseable              BackendFailure  502
    JSON nested deeper than max_reply_depth, numbers
      of too many digits, non-finite numbers          BackendFailure  502
    SOAP: not an envelope, empty Body, Fault          BackendFailure  502
    SOAP: any status but 200 without a fault          BackendFailure  502
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from gateway import ns
from gateway.errors import BackendError, BackendFailure, BackendUnavailable
from gateway.safejson import MalformedJSON, UnrepresentableJSON, load_untrusted_json, parse_ascii_int
from gateway.safexml import UnsafeXML, parse_untrusted_xml
from gateway.soap import child_element, read_fault
from gateway.transport import BackendReply

SOAP = "soap"
JSON = "json"
ENVELOPE_NAMESPACES = frozenset({ns.SOAP11_ENVELOPE, ns.SOAP12_ENVELOPE})
#: the tags (as lxml spells them) of the envelope and of a fault, in either SOAP version
ENVELOPE_TAGS = frozenset(f"{{{namespace}}}Envelope" for namespace in ENVELOPE_NAMESPACES)
FAULT_TAGS = frozenset(f"{{{namespace}}}Fault" for namespace in ENVELOPE_NAMESPACES)
XML_MEDIA_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
CREDENTIAL_REFUSALS = frozenset({401, 403, 407})
OVERLOADED = frozenset({429, 503})
#: the most of a redirect's host and of its path a detail repeats
MAX_REDIRECT_HOST, MAX_REDIRECT_PATH = 255, 200


def valid_retry_after(value: str | None) -> str | None:
    """A backend's Retry-After as passed on: delta-seconds (ASCII digits, at most a day) or an HTTP-date; else None."""
    if not value or len(value) > 64:
        return None
    seconds = parse_ascii_int(value, max_digits=6)
    if seconds is not None:
        return str(seconds) if 0 <= seconds <= 86400 else None
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return value.strip()


def redirect_target(location: str | None) -> str:
    """Where a Location header points, as a detail may say it: host (and port) and path, bounded, printable.

    Whatever identifies the caller or the call stays out: user information, query and fragment.
    """
    if not location:
        return "no Location"
    try:
        parts = urlsplit(location.strip())
    except ValueError:
        return "an unreadable Location"
    host = parts.netloc.rpartition("@")[2][:MAX_REDIRECT_HOST]
    path = parts.path[:MAX_REDIRECT_PATH]
    target = "".join(character for character in host + path if character.isprintable())
    return target or "an empty Location"


def _first_element(parent: etree._Element) -> etree._Element | None:
    """The first child that is an element (comments and processing instructions have no string tag)."""
    for child in parent:
        if isinstance(child.tag, str):
            return child
    return None


def _describe(reply: BackendReply) -> str:
    return f"HTTP {reply.status}, {reply.content_type or 'no content type'}"


class _ReplyReader:
    """Turns what is wrong with one reply into the right BackendError for its connection."""

    def __init__(self, reply: BackendReply, connection: str, max_depth: int) -> None:
        self.reply = reply
        self.connection = connection
        self.max_depth = max_depth

    def failure(self, detail: str) -> BackendError:
        """A BackendFailure, or BackendUnavailable (with Retry-After) when the backend said it is overloaded."""
        status = self.reply.status
        if status in OVERLOADED:
            return BackendUnavailable(f"The backend is rate limiting or overloaded (HTTP {status}).",
                                      connection=self.connection, code=f"HTTP {status}",
                                      retry_after=valid_retry_after(self.reply.headers.get("Retry-After")))
        return BackendFailure(detail, connection=self.connection, code=f"HTTP {status}")

    def check_status(self) -> None:
        """A redirect or refused credentials end the reading whatever the body says."""
        if 300 <= self.reply.status < 400:
            target = redirect_target(self.reply.headers.get("Location"))
            raise self.failure(f"The backend answered with a redirect (HTTP {self.reply.status} to {target}), "
                               "which the gateway does not follow: check the connection's url.")
        if self.reply.status in CREDENTIAL_REFUSALS:
            raise self.failure(f"The backend refused the gateway's credentials (HTTP {self.reply.status}).")
        if not self.reply.body or self.reply.body.isspace():  # (no stripped copy of a large body)
            raise self.failure(f"The backend sent an empty reply ({_describe(self.reply)}).")

    def soap_payload(self) -> etree._Element:
        """The first element inside soap:Body of a successful SOAP 1.1 or 1.2 reply."""
        self.check_status()
        media_type = self.reply.content_type
        if media_type and media_type not in XML_MEDIA_TYPES and not media_type.endswith("+xml"):
            raise self.failure(f"The backend sent a reply that is not XML ({_describe(self.reply)}).")
        try:
            root = parse_untrusted_xml(self.reply.body)
        except UnsafeXML as error:
            raise self.failure(f"The backend sent an unusable reply ({_describe(self.reply)}): {error}.") from None
        if root.tag not in ENVELOPE_TAGS:
            raise self.failure(f"The backend's reply is not a SOAP envelope ({_describe(self.reply)}).")
        body = child_element(root, "Body")
        payload = _first_element(body) if body is not None else None
        if payload is None:
            raise self.failure(f"The backend's SOAP reply has an empty Body ({_describe(self.reply)}).")
        if payload.tag in FAULT_TAGS:
            code, reason = read_fault(payload)
            # Not cut here: the problem document bounds it after scrubbing, so no cut can split a secret.
            raise BackendFailure(f"The backend answered with a SOAP fault: {reason}",
                                 connection=self.connection, code=code, message=reason)
        if self.reply.status != 200:
            raise self.failure(f"The backend answered HTTP {self.reply.status}.")
        return payload

    def json_document(self) -> Any:
        """The decoded JSON document of a reply (of any status: JSON APIs explain errors in the body)."""
        self.check_status()
        try:
            return load_untrusted_json(self.reply.body, max_depth=self.max_depth)
        except MalformedJSON as error:
            if error.description.startswith("is not valid JSON"):
                raise self.failure(f"The backend sent a reply that is not JSON ({_describe(self.reply)}).") from None
            raise self.failure(f"The backend's JSON reply {error.description} ({_describe(self.reply)}).") from None
        except UnrepresentableJSON as error:
            raise self.failure(f"The backend's JSON reply holds values that cannot be used, at "
                               f"{', '.join(list(error.errors)[:5])} ({_describe(self.reply)}).") from None


READERS: dict[str, Callable[[_ReplyReader], Any]] = {
    SOAP: _ReplyReader.soap_payload,
    JSON: _ReplyReader.json_document,
}


def read_reply(reply: BackendReply, reply_format: str, connection: str, *, max_depth: int = 32) -> Any:
    """The payload of `reply` in `reply_format` ("soap" or "json"); raises the BackendError of a bad reply.

    `max_depth` bounds JSON nesting; XML depth is bounded by the hardened parser (no huge trees).
    """
    return READERS[reply_format](_ReplyReader(reply, connection, max_depth))
