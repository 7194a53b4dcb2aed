"""The one scrubber: every credential of a configuration, in every form it travels in, in text, documents,
bytes and log records (messages and tracebacks)."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from gateway.backends import BACKENDS
from gateway.config import load_settings
from gateway.scrubbing import MIN_SECRET_LENGTH, Scrubber, install_log_scrubbing
from tests.conftest import ongoing_connection, sellercenter_connection, speed4trade_connection

SUBSCRIBER_KEY = base64.b64encode(b"subscriber-signing-key").decode()
CONFIG = {
    "connections": {
        "o": {**ongoing_connection("http://127.0.0.1:9/", password="p@ss w/rd+ü1"),
              "webhooks": {"auth": "basic", "username": "hooks", "password": "hook-password-1"}},
        "t": {**ongoing_connection("http://127.0.0.1:9/", password="other-password"),
              "webhooks": {"auth": "token", "token": "token-value-42"}},
        "s": speed4trade_connection("http://127.0.0.1:9/", password="connect-secret"),
        "c": sellercenter_connection("http://127.0.0.1:9/", api_key="sellercenter-api-key-9"),
    },
    "subscribers": {"demo": {"url": "http://127.0.0.1:9/", "secret": f"whsec_{SUBSCRIBER_KEY}"}},
}


@pytest.fixture(scope="module")
def scrubber():
    return Scrubber.for_settings(load_settings(CONFIG, "<test>", BACKENDS))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


FORMS = [
    "p@ss w/rd+ü1", quote("p@ss w/rd+ü1", safe=""), quote_plus("p@ss w/rd+ü1"), json.dumps("p@ss w/rd+ü1")[1:-1],
    basic("demo", "p@ss w/rd+ü1"), "hook-password-1", basic("hooks", "hook-password-1"), "token-value-42",
    "other-password", "connect-secret", basic("connect-demo", "connect-secret"), "sellercenter-api-key-9",
    f"whsec_{SUBSCRIBER_KEY}", SUBSCRIBER_KEY,
]


@pytest.mark.parametrize("form", FORMS)
def test_every_secret_of_the_configuration_is_masked_in_every_form(scrubber, form):
    text = f"the backend said: <{form}> twice <{form}>"
    assert scrubber.scrub(text) == "the backend said: <********> twice <********>"
    assert form.encode() not in scrubber.scrub_bytes(text.encode())
    assert scrubber.scrub_document({"a": [text, {form: 1}]}) == {"a": [scrubber.scrub(text), {"********": 1}]}


def test_text_without_secrets_is_left_alone(scrubber):
    assert scrubber.scrub("nothing to hide here, password") == "nothing to hide here, password"


def test_secrets_too_short_to_mask_meaningfully_are_not():
    short = "x" * (MIN_SECRET_LENGTH - 1)
    assert Scrubber([short]).scrub(f"x{short}y") == f"x{short}y"
    assert Scrubber(["x" * MIN_SECRET_LENGTH]).scrub("axxxxb") == "a********b"


@pytest.mark.expected_traceback
def test_log_records_are_scrubbed_in_message_args_and_traceback(scrubber, caplog):
    install_log_scrubbing(scrubber)
    logger = logging.getLogger("gateway.test-scrubbing")
    with caplog.at_level(logging.INFO, logger="gateway.test-scrubbing"):
        logger.info("sent %s to %s", "connect-secret", basic("connect-demo", "connect-secret"))
        try:
            raise RuntimeError("token-value-42 echoed")
        except RuntimeError:
            logger.warning("failed", exc_info=True)
    assert "connect-secret" not in caplog.text and "token-value-42" not in caplog.text
    assert basic("connect-demo", "connect-secret") not in caplog.text
    # two arguments, the traceback's source line and the exception's message
    assert caplog.text.count("********") == 4
    assert "RuntimeError: ******** echoed" in caplog.text


def test_log_records_are_scrubbed_by_every_live_scrubber_and_no_longer_by_one_that_is_gone(caplog):
    import gc

    kept, dropped = Scrubber(["kept-secret-1"]), Scrubber(["dropped-secret-2"])
    install_log_scrubbing(kept)
    install_log_scrubbing(kept)  # installed twice, used once
    install_log_scrubbing(dropped)
    logger = logging.getLogger("gateway.test-scrubbing")
    with caplog.at_level(logging.INFO, logger="gateway.test-scrubbing"):
        logger.info("%s and %s", "kept-secret-1", "dropped-secret-2")
        del dropped
        gc.collect()
        logger.info("%s and %s", "kept-secret-1", "dropped-secret-2")
    # (a server thread of an earlier test may log meanwhile: only this test's logger counts)
    first, second = (record.getMessage() for record in caplog.records if record.name == "gateway.test-scrubbing")
    assert first == "******** and ********"
    assert second == "******** and dropped-secret-2"
