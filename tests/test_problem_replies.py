"""Every error class as the client sees it: one application/problem+json shape, no traceback, no credential."""

from __future__ import annotations

import pytest
from marshmallow import Schema, fields

from gateway.runtime import gateway_of
from tests.conftest import gateway_config, ongoing_connection
from tests.refusals import refusal
from tests.servers import ScriptedBackend, closed_port, serve_wsgi

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "request_id"}

SOAP_FAULT = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>
<faultcode>soap:Server</faultcode><faultstring>Server was unable to process request. ---&gt; Boom</faultstring>
</soap:Fault></soap:Body></soap:Envelope>"""

UNPREFIXED_SOAP12_FAULT = b"""<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope"><Body><Fault>
<Code><Value>Receiver</Value></Code><Reason><Text xml:lang="en">Database offline</Text></Reason>
</Fault></Body></Envelope>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<UpdateOrderResponse xmlns="http://ongoingsystems.se/WSI"><UpdateOrderResult><Success>true</Success>
<Message>&lol9;</Message><OrderId>1</OrderId></UpdateOrderResult></UpdateOrderResponse></soap:Body></soap:Envelope>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<UpdateOrderResponse xmlns="http://ongoingsystems.se/WSI"><UpdateOrderResult><Success>true</Success>
<Message>&xxe;</Message><OrderId>1</OrderId></UpdateOrderResult></UpdateOrderResponse></soap:Body></soap:Envelope>"""

ECHOING_FAULT = SOAP_FAULT.replace(b"Boom", b"login demo/demo-password rejected")

WRONG_PAYLOAD = b"""<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<GetOrderResponse xmlns="http://ongoingsystems.se/WSI"/></soap:Body></soap:Envelope>"""


def assert_problem(reply, status: int, slug: str) -> dict:
    assert reply.status_code == status, reply.get_data(as_text=True)
    assert reply.mimetype == "application/problem+json"
    problem = reply.get_json()
    assert problem.keys() >= PROBLEM_MEMBERS
    assert problem["status"] == status
    assert problem["type"] == f"urn:order-gateway:problem:{slug}"
    assert problem["request_id"] == reply.headers["X-Request-ID"]
    text = reply.get_data(as_text=True)
    assert "Traceback" not in text and "demo-password" not in text and 'File "' not in text
    return problem


# --- the client's own mistakes ---------------------------------------------------------------------------

def test_malformed_json_is_400(client):
    reply = client.patch("/orders/SO-1001", data=b'{"status": ', content_type="application/json")
    problem = assert_problem(reply, 400, "malformed-request")
    assert "line 1 column" in problem["detail"]


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"picking_priority": NaN}', b""])
def test_undecodable_bodies_are_400(client, body):
    assert_problem(client.patch("/orders/SO-1001", data=body, content_type="application/json"),
                   400, "malformed-request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_not_json_is_415(client, content_type):
    reply = client.patch("/orders/SO-1001", data=b'{"status": "open"}', content_type=content_type)
    assert_problem(reply, 415, "unsupported-media-type")


def test_json_suffix_media_types_are_accepted(client):
    reply = client.patch("/orders/SO-1001", data=b'{"status": "open"}', content_type="application/merge-patch+json")
    assert reply.status_code == 200


def test_schema_errors_are_422_with_field_paths(client):
    reply = client.patch("/orders/SO-1001", json={"waybill": 5, "way_of_delivery": {"name": "x"}, "extra": 1})
    problem = assert_problem(reply, 422, "validation-failed")
    # each field with what marshmallow's check that refused it says (tests.refusals), not marshmallow's wording
    assert problem["errors"] == {
        "waybill": [refusal(fields.String(), 5)],
        "way_of_delivery.code": [refusal(fields.String(required=True))],
        "extra": [refusal(Schema(), {"extra": 1})],
    }


def test_a_bad_dry_run_flag_is_422(client):
    problem = assert_problem(client.patch("/orders/SO-1001?dry_run=perhaps", json={"status": "open"}),
                             422, "validation-failed")
    assert "dry_run" in problem["errors"]


def test_too_large_bodies_are_413(make_gateway, sandbox_url):
    config = gateway_config(o=ongoing_connection(sandbox_url + "/ongoing/Service.asmx"))
    config["gateway"]["max_body_bytes"] = 1024
    client = make_gateway(config).test_client()
    reply = client.patch("/orders/SO-1001", json={"warehouse_instruction": "x" * 2000})
    problem = assert_problem(reply, 413, "payload-too-large")
    assert "1024 bytes" in problem["detail"]


def test_unknown_routes_and_methods_are_problems_too(client):
    assert_problem(client.get("/nowhere"), 404, "not-found")
    reply = client.get("/orders/SO-1001")
    assert_problem(reply, 405, "method-not-allowed")
    assert "PATCH" in reply.headers["Allow"]


@pytest.mark.expected_traceback
def test_an_unexpected_exception_is_a_bare_500(client, app, monkeypatch):
    def explode(planned):
        raise RuntimeError("secret internals: demo-password")

    connection = gateway_of(app).connections.resolve(None)
    monkeypatch.setattr(connection, "send", explode)
    problem = assert_problem(client.patch("/orders/SO-1001", json={"status": "open"}), 500, "internal-error")
    assert "secret internals" not in problem["detail"]


def test_a_rendering_that_fails_the_xsd_is_a_500_and_nothing_is_sent(make_gateway):
    fake = ScriptedBackend(b"")
    with serve_wsgi(fake) as url:
        app = make_gateway(gateway_config(o=ongoing_connection(url)))
        # The settings check refuses such a code at start-up; bypass it to provoke the XSD gate.
        gateway_of(app).connections.resolve("o").backend.status_map["overflow"] = 2**40
        reply = app.test_client().patch("/orders/SO-1", json={"status": "overflow"})
    assert_problem(reply, 500, "translation-error")
    assert fake.requests == []


# --- the backend's failures ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("script", "status", "slug", "fragment"),
    [
        (ScriptedBackend(SOAP_FAULT, status=500), 502, "backend-failure", "SOAP fault: Server was unable"),
        (ScriptedBackend(UNPREFIXED_SOAP12_FAULT, status=500, content_type="application/soap+xml"),
         502, "backend-failure", "SOAP fault: Database offline"),
        (ScriptedBackend(b"<html><body><h1>502 Bad Gateway</h1></body></html>", status=502,
                         content_type="text/html"), 502, "backend-failure", "not XML (HTTP 502, text/html)"),
        (ScriptedBackend(b"<html><body>Maintenance</body></html>", status=200, content_type="text/xml"),
         502, "backend-failure", "not a SOAP envelope"),
        (ScriptedBackend(b"", status=200), 502, "backend-failure", "empty reply"),
        (ScriptedBackend(b"<soap:Envelope", status=200), 502, "backend-failure", "not well-formed"),
        (ScriptedBackend(BILLION_LAUGHS), 502, "backend-failure", "DOCTYPE"),
        (ScriptedBackend(EXTERNAL_ENTITY), 502, "backend-failure", "DOCTYPE"),
        (ScriptedBackend(WRONG_PAYLOAD), 502, "backend-failure", "has no UpdateOrderResponse"),
        (ScriptedBackend(b"Unauthorized", status=401, content_type="text/plain"), 502, "backend-failure",
         "refused the gateway's credentials"),
        (ScriptedBackend(b"x" * 5000, status=200), 502, "backend-failure", "larger than 2048 bytes"),
        (ScriptedBackend(b"", status=503, content_type=""), 503, "backend-unavailable", "overloaded (HTTP 503)"),
    ],
    ids=["fault", "soap12-fault", "html", "html-as-xml", "empty", "truncated", "billion-laughs",
         "external-entity", "wrong-payload", "http-401", "oversized", "empty-503"],
)
def test_backend_failures_are_mapped(make_gateway, script, status, slug, fragment):
    with serve_wsgi(script) as url:
        app = make_gateway(gateway_config(o=ongoing_connection(url, max_reply_bytes=2048)))
        reply = app.test_client().patch("/orders/SO-1001", json={"status": "open"})
    problem = assert_problem(reply, status, slug)
    assert fragment in problem["detail"]
    assert problem["backend"]["connection"] == "o"
    assert len(script.requests) == 1


def test_a_backend_echoing_the_password_is_masked(make_gateway):
    with serve_wsgi(ScriptedBackend(ECHOING_FAULT, status=500)) as url:
        app = make_gateway(gateway_config(o=ongoing_connection(url)))
        reply = app.test_client().patch("/orders/SO-1001", json={"status": "open"})
    problem = assert_problem(reply, 502, "backend-failure")
    assert "demo/********" in problem["backend"]["message"]


def test_bad_credentials_at_the_sandbox_are_a_502(make_gateway, sandbox_url):
    connection = ongoing_connection(sandbox_url + "/ongoing/Service.asmx", password="wrong-password")
    reply = make_gateway(gateway_config(o=connection)).test_client().patch("/orders/SO-1001", json={"status": "open"})
    problem = assert_problem(reply, 502, "backend-failure")
    assert problem["backend"]["code"].endswith("Client")
    assert "wrong-password" not in reply.get_data(as_text=True)


def test_a_refused_connection_is_503(make_gateway):
    app = make_gateway(gateway_config(o=ongoing_connection(f"http://127.0.0.1:{closed_port()}/Service.asmx")))
    problem = assert_problem(app.test_client().patch("/orders/SO-1001", json={"status": "open"}),
                             503, "backend-unavailable")
    assert "could not be reached" in problem["detail"]


def test_a_slow_backend_is_504(make_gateway):
    with serve_wsgi(ScriptedBackend(b"", delay=1.0)) as url:
        app = make_gateway(gateway_config(o=ongoing_connection(url, read_timeout=0.2)))
        reply = app.test_client().patch("/orders/SO-1001", json={"status": "open"})
    problem = assert_problem(reply, 504, "backend-timeout")
    assert "timeout" in problem["detail"]
