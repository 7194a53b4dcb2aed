"""SellerCenter's request signature: HMAC-SHA256 over the sorted, RFC 3986-encoded query parameters."""

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import quote

SIGNATURE_PARAMETER = "Signature"
# RFC 3986 unreserved characters besides letters and digits; everything else is percent-encoded.
_UNRESERVED_PUNCTUATION = "-._~"


def encode_rfc3986(text: str) -> str:
    """Percent-encode the UTF-8 bytes of `text` except RFC 3986's unreserved characters (space is %20)."""
    return quote(text, safe=_UNRESERVED_PUNCTUATION)


def build_string_to_sign(parameters: Mapping[str, str]) -> str:
    """Every parameter but Signature, sorted by name, as encoded `name=value` pairs joined with `&`."""
    return "&".join(
        f"{encode_rfc3986(name)}={encode_rfc3986(parameters[name])}"
        for name in sorted(parameters)
        if name != SIGNATURE_PARAMETER
    )


def compute_signature(string_to_sign: str, api_key: str) -> str:
    """The lowercase hex HMAC-SHA256 of `string_to_sign`, keyed with the API key taken as a string."""
    return hmac.new(api_key.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def signature_matches(parameters: Mapping[str, str], api_keys: Iterable[str]) -> bool:
    """Whether the parameters' Signature is the one some API key gives them, compared in constant time."""
    given = parameters.get(SIGNATURE_PARAMETER, "").encode("utf-8")
    string_to_sign = build_string_to_sign(parameters)
    matched = False
    # Every key is tried, so the time taken does not tell which key (if any) came close.
    for api_key in api_keys:
        expected = compute_signature(string_to_sign, api_key).encode("ascii")
        matched |= hmac.compare_digest(given, expected)
    return matched
