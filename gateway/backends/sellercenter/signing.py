"""SellerCenter request signing, as a requests AuthBase: the query string is signed, the body is not.

The rule (reference/sellercenter/NOTES.md): all query parameters except Signature, sorted by name, names and
values encoded per RFC 3986 (space %20, `~` kept), joined `name=value` with `&`; Signature is the lowercase hex
HMAC-SHA256 of that string keyed with the API key as a string. The Timestamp is set when the request is sent.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit, urlunsplit

from requests import PreparedRequest
from requests.auth import AuthBase

SIGNATURE = "Signature"
TIMESTAMP = "Timestamp"


def encode_rfc3986(text: str) -> str:
    """Percent-encode everything but RFC 3986's unreserved characters (letters, digits, - . _ ~)."""
    return quote(text, safe="-._~")


def string_to_sign(parameters: Iterable[tuple[str, str]]) -> str:
    """The sorted, RFC 3986-encoded `name=value&...` string of every parameter except Signature."""
    pairs = sorted((name, value) for name, value in parameters if name != SIGNATURE)
    return "&".join(f"{encode_rfc3986(name)}={encode_rfc3986(value)}" for name, value in pairs)


def signature_of(parameters: Iterable[tuple[str, str]], api_key: str) -> str:
    """The lowercase hex HMAC-SHA256 of the string to sign, keyed with the API key."""
    return hmac.new(api_key.encode("utf-8"), string_to_sign(parameters).encode("utf-8"), hashlib.sha256).hexdigest()


def utc_timestamp() -> str:
    """Now, as ISO 8601 with the +00:00 offset."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=64)
def _split_unsigned(url: str) -> tuple[SplitResult, tuple[tuple[str, str], ...]]:
    """A connection's URL and its constant parameters, parsed once (every request of a connection shares them)."""
    parts = urlsplit(url)
    constant = tuple((name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
                     if name not in (SIGNATURE, TIMESTAMP, "UserID"))
    return parts, constant


class SellerCenterSignature(AuthBase):
    """Adds Timestamp (and UserID when configured) to the query and signs it."""

    def __init__(self, api_key: str, *, user_id: str | None = None,
                 clock: Callable[[], str] = utc_timestamp) -> None:
        self.api_key = api_key
        self.user_id = user_id
        self.clock = clock

    def signed_url(self, url: str, *, signature: str | None = None) -> str:
        """The URL with a fresh Timestamp and its Signature (or the given stand-in, e.g. a mask)."""
        parts, constant = _split_unsigned(url)
        parameters = list(constant)
        parameters.append((TIMESTAMP, self.clock()))
        if self.user_id:
            parameters.append(("UserID", self.user_id))
        query = string_to_sign(parameters)
        query += f"&{SIGNATURE}={signature or signature_of(parameters, self.api_key)}"
        return urlunsplit(parts._replace(query=query))

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        """Sign the request as it is sent, so its Timestamp is fresh."""
        request.url = self.signed_url(request.url)
        return request
