"""The API contract: the OpenAPI document covers every route, carries examples per backend, holds up under
schemathesis (no 5xx, every reply as documented), and Swagger UI renders it offline in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import (
    ONGOING_SERVICE_PATH,
    SELLERCENTER_SERVICE_PATH,
    SPEED4TRADE_SERVICE_PATH,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)
from tests.servers import serve_wsgi

UNDOCUMENTED = {"/openapi.json", "/docs", "/docs/", "/docs/<path:filename>", "/static/<path:filename>"}


@pytest.fixture
def all_backends_app(make_gateway, sandbox_url):
    webhooks = {"auth": "basic", "username": "ongoing-webhooks", "password": "webhook-demo-password"}
    return make_gateway({"gateway": {"default_connection": "ongoing-demo"}, "connections": {
        "ongoing-demo": {**ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH), "webhooks": webhooks},
        "speed4trade-demo": speed4trade_connection(sandbox_url + SPEED4TRADE_SERVICE_PATH),
        "sellercenter-demo": sellercenter_connection(sandbox_url + SELLERCENTER_SERVICE_PATH),
    }})


@pytest.fixture
def document(all_backends_app):
    reply = all_backends_app.test_client().get("/openapi.json")
    assert reply.status_code == 200
    return reply.get_json()


def test_every_route_is_documented(all_backends_app, document):
    documented = {(re.sub(r"\{(\w+)\}", r"<\1>", path), method.upper())
                  for path, operations in document["paths"].items() for method in operations}
    routes = set()
    for rule in all_backends_app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED or rule.rule.startswith("/console"):  # the console's pages are not the API
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule).replace("<kind>", "<backend>")
        routes |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented


def test_requests_and_replies_come_from_the_marshmallow_schemas(document):
    schemas = document["components"]["schemas"]
    update = schemas["OrderUpdate"]
    assert update["additionalProperties"] is False
    assert update["properties"]["waybill"]["maxLength"] == 50
    assert set(schemas["Address"]["properties"]) >= {"first_name", "postcode", "country"}
    operation = document["paths"]["/orders/{order_id}"]["patch"]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/OrderUpdate"}
    assert operation["responses"]["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"}
    assert document["openapi"].startswith("3.")


def single_examples(document) -> dict:
    return document["paths"]["/orders/{order_id}"]["patch"]["requestBody"]["content"]["application/json"]["examples"]


def test_examples_for_each_backend(document):
    examples = single_examples(document)
    connections = {example["value"]["connection"] for example in examples.values()}
    assert connections == {"ongoing-demo", "speed4trade-demo", "sellercenter-demo"}
    cancels = {example["value"]["connection"] for example in examples.values()
               if example["value"].get("status") == "canceled"}
    assert cancels == {"ongoing-demo", "speed4trade-demo"}  # SellerCenter cannot cancel: its 422 is documented
    description = document["paths"]["/orders/{order_id}"]["patch"]["description"]
    assert "ProcessOrder" in description and "SellerCenter" in description
    bulk = document["paths"]["/orders"]["patch"]["requestBody"]["content"]["application/json"]["examples"]
    assert len(bulk) == 3


def test_documented_examples_are_valid_requests(all_backends_app, document):
    client = all_backends_app.test_client()
    examples = single_examples(document)
    for name, example in examples.items():
        reply = client.patch("/orders/1001?dry_run=true", json=example["value"])
        assert reply.status_code in (200, 422), name
        if reply.status_code == 422:  # only an id that does not fit the backend may be refused
            assert set(reply.get_json()["errors"]) == {"id"}, (name, reply.get_json())


OPERATIONS = ["PATCH /orders/{order_id}", "PATCH /orders", "POST /webhooks/{backend}/{connection}", "GET /events",
              "GET /events/{event_id}", "POST /events/{event_id}/redeliver", "GET /livez", "GET /readyz",
              "GET /exchanges", "GET /exchanges/{exchange_id}", "GET /metrics", "GET /updates",
              "GET /updates/{job_id}", "POST /updates/{job_id}/retry"]


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_error_and_every_reply_as_documented(all_backends_app, label):
    api = schemathesis.openapi.from_wsgi("/openapi.json", all_backends_app)
    operations = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in api.get_all_operations())}
    assert set(operations) == set(OPERATIONS)

    @given(case=operations[label].as_strategy())
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call_and_check(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])

    call_and_check()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000", "--dump-dom"]


def test_swagger_ui_renders_offline_in_headless_chromium(all_backends_app, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (make test installs it)"
    with serve_wsgi(all_backends_app) as url:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"{url}/docs"],
            capture_output=True, timeout=120, check=False,
        )
    html = result.stdout.decode("utf-8", errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    listed = set(re.findall(r'data-path="([^"]+)"', html))
    assert listed >= {"/orders/{order_id}", "/orders", "/events", "/events/{event_id}",
                      "/events/{event_id}/redeliver", "/webhooks/{backend}/{connection}"}, html[:2000]
    assert "Order gateway" in html
