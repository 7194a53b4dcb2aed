"""Backends echoing the gateway's own credentials back, raw or in a derived form (URL-encoded, a Basic header's
base64), in any reply field: neither the gateway's reply nor anything it logs carries them."""

from __future__ import annotations

import base64
import logging
from urllib.parse import quote, quote_plus

import pytest

from tests.hostile.conftest import (
    assert_problem,
    ongoing_update_result,
    sellercenter_item_errors,
    sellercenter_whole_call_error,
    send_valid_update,
    soap11_fault,
    speed4trade_reports,
)

MASK = "********"
PASSWORD = "p@ss w/rd+1"
API_KEY = "k3y@sc w/x+1"
SPEED4TRADE_USER = "connect-demo"
XML = "text/xml; charset=utf-8"
JSON = "application/json"


def credentials(kind: str, secret: str) -> dict:
    """The connection settings that make `secret` the connection's password or API key."""
    return {"api_key": secret} if kind == "sellercenter" else {"password": secret}


def secret_forms(kind: str, secret: str) -> dict[str, str]:
    """The forms a backend may echo the connection's secret in."""
    forms = {"raw": secret, "percent-encoded": quote(secret, safe=""), "form-encoded": quote_plus(secret)}
    if kind == "speed4trade":
        forms["basic"] = base64.b64encode(f"{SPEED4TRADE_USER}:{secret}".encode()).decode("ascii")
    return forms


# (kind, where the echo is) -> (the reply carrying `echo`: body, HTTP status, media type), and the gateway's answer
ECHOES = {
    ("ongoing", "faultcode"): (lambda echo: (soap11_fault(f"soap:Client.{echo}", "Login failed"), 500, XML),
                               502, "backend-failure"),
    ("ongoing", "faultstring"): (lambda echo: (soap11_fault("soap:Client", f"Login demo/{echo} was rejected"), 500,
                                               XML), 502, "backend-failure"),
    ("ongoing", "result-message"): (lambda echo: (ongoing_update_result(
        False, f"User demo with password {echo} may not update orders"), 200, XML), 422, "backend-rejected"),
    ("speed4trade", "faultstring"): (lambda echo: (soap11_fault(
        "soap:Client", f"Refused header Authorization: Basic {echo}"), 500, XML), 502, "backend-failure"),
    ("speed4trade", "report"): (lambda echo: (speed4trade_reports(
        ("-7", f"User connect-demo ({echo}) may not change orders")), 200, XML), 422, "backend-rejected"),
    ("sellercenter", "error-code"): (lambda echo: (sellercenter_whole_call_error(echo, "Access denied"), 200, JSON),
                                     502, "backend-failure"),
    ("sellercenter", "error-message"): (lambda echo: (sellercenter_whole_call_error(
        "7", f"E7: the signature made with {echo} is wrong"), 200, JSON), 502, "backend-failure"),
    ("sellercenter", "item-error-message"): (lambda echo: (sellercenter_item_errors(
        {"Position": 0, "ErrorCode": 11, "ErrorMessage": f"Key {echo} may not change order 300001"}), 200, JSON),
        422, "backend-rejected"),
}
CASES = [(kind, place, form) for (kind, place) in ECHOES for form in secret_forms(kind, "x")]


def secret_of(kind: str) -> str:
    """The secret the connection of `kind` is configured with here."""
    return API_KEY if kind == "sellercenter" else PASSWORD


@pytest.mark.parametrize(("kind", "place", "form"), CASES, ids=[f"{k}-{p}-{f}" for k, p, f in CASES])
def test_an_echoed_secret_is_masked_in_the_reply_and_never_logged(gateway_to_fake, caplog, kind, place, form):
    secret = secret_of(kind)
    forms = secret_forms(kind, secret)
    build, status, slug = ECHOES[(kind, place)]
    client, fake = gateway_to_fake(kind, **credentials(kind, secret))
    body, http_status, content_type = build(forms[form])
    fake.answer(body, status=http_status, content_type=content_type)
    caplog.set_level(logging.DEBUG)

    reply = send_valid_update(client, kind)

    assert len(fake.requests) == 1
    assert_problem(reply, status, slug)
    text = reply.get_data(as_text=True)
    leaked = {name: value for name, value in forms.items() if value in text}
    assert not leaked, f"reply carries {leaked}: {text}"
    logged = {name: value for name, value in forms.items() if value in caplog.text}
    assert not logged, f"log carries {logged}"
    assert MASK in text


FRAGILE_PASSWORD = "Zq#7Wv!k2Pm$9"
REASON = "A" * 190 + FRAGILE_PASSWORD + "B" * 197


@pytest.mark.parametrize("kind", ["ongoing", "speed4trade"])
def test_a_secret_straddling_the_cut_of_a_long_reason_leaves_no_fragment(gateway_to_fake, caplog, kind):
    assert (len(FRAGILE_PASSWORD), len(REASON), REASON.index(FRAGILE_PASSWORD)) == (13, 400, 190)
    client, fake = gateway_to_fake(kind, password=FRAGILE_PASSWORD)
    fake.answer(soap11_fault("soap:Client", REASON), status=500, content_type=XML)
    caplog.set_level(logging.DEBUG)

    reply = send_valid_update(client, kind, headers={"X-Request-ID": "straddle"})

    assert_problem(reply, 502, "backend-failure")
    text = reply.get_data(as_text=True)
    fragments = {FRAGILE_PASSWORD[start:start + 4] for start in range(len(FRAGILE_PASSWORD) - 3)}
    assert not [fragment for fragment in fragments if fragment in text], text
    assert not [fragment for fragment in fragments if fragment in caplog.text]
    assert MASK in text
