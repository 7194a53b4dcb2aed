"""The Postman collection (postman/): valid Collection v2.1 with the expected folders, a request for every
operation of the OpenAPI document, and assertions beyond the status code in every request.

Running it for real is `scripts/run-newman` (newman against a throwaway deployment)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection

ROOT = Path(__file__).resolve().parent.parent
COLLECTION_PATH = ROOT / "postman" / "order-gateway.postman_collection.json"
ENVIRONMENT_PATH = ROOT / "postman" / "order-gateway-sandbox.postman_environment.json"
SCHEMA_V2_1 = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
FOLDERS = ["Setup", "Ongoing WMS", "Speed4Trade CONNECT", "SellerCenter", "Bulk", "Webhooks and events", "Update jobs",
           "Errors"]
GATEWAY = "{{gateway_url}}"
SANDBOX = "{{sandbox_url}}"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# What a test script reads beyond the status code: the body or the headers.
BEYOND_STATUS = ("pm.response.json()", "pm.response.text()", "pm.response.headers")


def load_collection() -> dict:
    return json.loads(COLLECTION_PATH.read_text(encoding="utf-8"))


def requests_of(items: list[dict], folder: str = "") -> Iterator[tuple[str, dict]]:
    """Every request item of a collection (folders may nest), with its folder path."""
    for item in items:
        if "item" in item:
            yield from requests_of(item["item"], f"{folder}/{item['name']}" if folder else item["name"])
        else:
            yield folder, item


def raw_url(item: dict) -> str:
    url = item["request"]["url"]
    return url if isinstance(url, str) else url["raw"]


def script(item: dict, listen: str) -> str:
    return "\n".join("\n".join(event["script"]["exec"]) if isinstance(event["script"]["exec"], list)
                     else event["script"]["exec"]
                     for event in item.get("event", []) if event["listen"] == listen)


def gateway_path(url: str) -> str | None:
    """The path of a request to the gateway, without its query; None for any other URL."""
    if not url.startswith(GATEWAY):
        return None
    return url[len(GATEWAY):].split("?", 1)[0].split("#", 1)[0] or "/"


def template_pattern(template: str) -> re.Pattern:
    """An OpenAPI path template as a regular expression: every {param} is one path segment."""
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("".join("[^/]+" if re.fullmatch(r"\{[^}/]+\}", part) else re.escape(part)
                              for part in parts) + r"\Z")


def operations_without_request(document: dict, collection: dict) -> list[str]:
    """The `METHOD /template` of every operation of the OpenAPI document that no collection request exercises."""
    sent = [(item["request"]["method"].upper(), gateway_path(raw_url(item)))
            for _, item in requests_of(collection["item"])]
    missing = []
    for template, path_item in document["paths"].items():
        pattern = template_pattern(template)
        for method in path_item:
            if method.lower() not in HTTP_METHODS:
                continue  # path-level members: parameters, summary, servers, ...
            if not any(m == method.upper() and p is not None and pattern.match(p) for m, p in sent):
                missing.append(f"{method.upper()} {template}")
    return missing


# ------------------------------------------------------------------------------------------- structure


def test_the_collection_is_postman_v2_1_with_the_required_folders():
    collection = load_collection()
    assert collection["info"]["schema"] == SCHEMA_V2_1
    assert collection["info"]["name"]
    assert [folder["name"] for folder in collection["item"]] == FOLDERS
    assert all("item" in folder and folder["item"] for folder in collection["item"])

    names = []
    for folder, item in requests_of(collection["item"]):
        request = item["request"]
        assert request["method"] in {"GET", "POST", "PATCH", "PUT", "DELETE"}, item["name"]
        url = raw_url(item)
        assert url.startswith((GATEWAY, SANDBOX)), f"{folder}/{item['name']}: {url}"
        if isinstance(request["url"], dict):
            assert request["url"]["host"] == [url.split("}}", 1)[0] + "}}"], item["name"]
        body = request.get("body")
        if body is not None:
            assert body["mode"] == "raw", item["name"]
        names.append(item["name"])
    # The polling requests repeat themselves by name (setNextRequest): names must be unique.
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_setup_resets_every_sandbox_first():
    setup = load_collection()["item"][0]
    resets = [(item["request"]["method"], raw_url(item)) for _, item in requests_of(setup["item"])
              if raw_url(item).endswith("/_reset")]
    assert resets == [("POST", f"{SANDBOX}/{name}/_reset")
                      for name in ("ongoing", "speed4trade", "sellercenter", "subscriber")]


def test_the_environment_points_at_make_run():
    environment = json.loads(ENVIRONMENT_PATH.read_text(encoding="utf-8"))
    values = {value["key"]: value["value"] for value in environment["values"] if value.get("enabled", True)}
    assert values == {"gateway_url": "http://127.0.0.1:8000", "sandbox_url": "http://127.0.0.1:8001",
                      # the public demo keys of config/sandbox.toml's callers
                      "api_key": "demo-caller-key-0000", "readonly_api_key": "demo-readonly-key-0000",
                      "speed4trade_api_key": "demo-speed4trade-key-0000"}


def test_the_collection_authenticates_with_the_environments_bearer_key():
    collection = load_collection()
    assert collection["auth"] == {"type": "bearer", "bearer": [{"key": "token", "value": "{{api_key}}",
                                                                "type": "string"}]}
    names = {item["name"] for _, item in requests_of(collection["item"])}
    assert {"401 no API key", "401 unknown API key", "403 a dry-run key cannot send",
            "403 a connection the key may not use", "403 a bulk on a connection the key may not use"} <= names


def test_a_caller_of_one_connection_is_shown_another_connections_data_as_unknown():
    """The limited caller's requests: another connection's event, redelivery and exchange are 404, its lists leave
    them out, and updating its order is 403."""
    scoped = {(item["request"]["method"], gateway_path(raw_url(item)), item["name"])
              for _, item in requests_of(load_collection()["item"])
              if item["request"].get("auth", {}).get("bearer", [{}])[0].get("value") == "{{speed4trade_api_key}}"}
    assert {(method, path) for method, path, _ in scoped} >= {
        ("GET", "/events/{{picked_event_id}}"), ("POST", "/events/{{picked_event_id}}/redeliver"),
        ("GET", "/exchanges/{{exchange_id}}"), ("GET", "/events"), ("GET", "/exchanges"),
        ("PATCH", "/orders/SO-1001")}
    statuses = {name.split(" ", 1)[0] for _, _, name in scoped}
    assert {"404", "403"} <= statuses


def test_every_variable_used_is_defined():
    collection = load_collection()
    environment = json.loads(ENVIRONMENT_PATH.read_text(encoding="utf-8"))
    text = COLLECTION_PATH.read_text(encoding="utf-8")
    used = set(re.findall(r"\{\{([A-Za-z_][\w-]*)\}\}", text))
    defined = {v["key"] for v in collection.get("variable", [])} | {v["key"] for v in environment["values"]}
    # Variables a pre-request script sets for its own request only.
    for _, item in requests_of(collection["item"]):
        defined |= set(re.findall(r'pm\.variables\.set\("([\w-]+)"', script(item, "prerequest")))
    assert used <= defined, sorted(used - defined)


# ------------------------------------------------------------------------------------------- OpenAPI coverage


def test_every_openapi_operation_has_a_request_in_the_collection(make_gateway):
    app = make_gateway(gateway_config(**{
        "ongoing-demo": ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH),
    }))
    reply = app.test_client().get("/openapi.json")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    document = reply.get_json()
    assert document["paths"], "the OpenAPI document lists no operations"
    assert operations_without_request(document, load_collection()) == []


def test_the_six_gateway_operations_have_requests():
    """The operations the gateway serves, independent of the OpenAPI document."""
    document = {"paths": {
        "/orders/{order_id}": {"patch": {}},
        "/orders": {"patch": {}},
        "/webhooks/{backend}/{connection}": {"post": {}},
        "/events": {"get": {}},
        "/events/{event_id}": {"get": {}},
        "/events/{event_id}/redeliver": {"post": {}},
    }}
    assert operations_without_request(document, load_collection()) == []


def test_the_update_job_operations_have_requests():
    """The update jobs' loop: a PATCH with `Prefer: respond-async` that keeps the job's id, then the job, the list
    and the retry, each addressed with it."""
    collection = load_collection()
    document = {"paths": {
        "/updates": {"get": {}},
        "/updates/{job_id}": {"get": {}},
        "/updates/{job_id}/retry": {"post": {}},
    }}
    assert operations_without_request(document, collection) == []
    asynchronous = [item for _, item in requests_of(collection["item"])
                    if any(h["key"] == "Prefer" and h["value"] == "respond-async"
                           for h in item["request"].get("header", []))]
    assert [item["request"]["method"] for item in asynchronous] == ["PATCH"]
    tests = script(asynchronous[0], "test")
    assert 'pm.response.headers.get("Preference-Applied")' in tests
    assert 'pm.response.headers.get("Location")' in tests
    assert 'pm.collectionVariables.set("job_id"' in tests
    job_paths = {gateway_path(raw_url(item)) for _, item in requests_of(collection["item"])} & {
        "/updates/{{job_id}}", "/updates/{{job_id}}/retry"}
    assert job_paths == {"/updates/{{job_id}}", "/updates/{{job_id}}/retry"}


def _collection_of(*requests: tuple[str, str]) -> dict:
    return {"item": [{"name": "folder", "item": [
        {"name": f"{method} {url}", "request": {"method": method, "url": {"raw": url}}}
        for method, url in requests
    ]}]}


def test_operation_matching_follows_method_path_template_and_host():
    document = {"paths": {
        "/orders/{order_id}": {"parameters": [{"name": "order_id"}], "patch": {}},
        "/orders": {"patch": {}},
        "/events/{event_id}/redeliver": {"post": {}},
    }}
    # query strings are ignored, a parameter matches any one segment, variables included
    covered = _collection_of(("PATCH", GATEWAY + "/orders/SO-1001?dry_run=true"),
                             ("PATCH", GATEWAY + "/orders"),
                             ("POST", GATEWAY + "/events/{{event_id}}/redeliver"))
    assert operations_without_request(document, covered) == []
    # the wrong method, host, or number of segments does not count
    uncovered = _collection_of(("GET", GATEWAY + "/orders/SO-1001"),
                               ("PATCH", SANDBOX + "/orders"),
                               ("PATCH", GATEWAY + "/orders/a/b"),
                               ("PATCH", GATEWAY + "/orders/"),
                               ("POST", GATEWAY + "/events/x/redeliver/again"))
    assert operations_without_request(document, uncovered) == [
        "PATCH /orders/{order_id}", "PATCH /orders", "POST /events/{event_id}/redeliver"]


@pytest.mark.parametrize(("template", "path", "matches"), [
    ("/webhooks/{backend}/{connection}", "/webhooks/ongoing/ongoing-demo", True),
    ("/webhooks/{backend}/{connection}", "/webhooks/ongoing", False),
    ("/events", "/events/", False),
    ("/events/{event_id}", "/events/evt_1", True),
    ("/a.b/{x}", "/aXb/1", False),
])
def test_template_patterns(template, path, matches):
    assert bool(template_pattern(template).match(path)) is matches


# ------------------------------------------------------------------------------------------- assertions


def test_every_request_asserts_more_than_the_status_code():
    weak = []
    for folder, item in requests_of(load_collection()["item"]):
        tests = script(item, "test")
        if "pm.test(" not in tests or "pm.expect(" not in tests or not any(s in tests for s in BEYOND_STATUS):
            weak.append(f"{folder}/{item['name']}")
    assert weak == []


def test_every_request_checks_the_headers_it_should():
    """Content-Type everywhere; X-Request-ID on every reply of the gateway (the sandboxes send none)."""
    missing = []
    for folder, item in requests_of(load_collection()["item"]):
        tests = script(item, "test")
        expected = ["Content-Type"] + (["X-Request-ID"] if raw_url(item).startswith(GATEWAY) else [])
        missing += [f"{folder}/{item['name']}: {header}" for header in expected
                    if f'pm.response.headers.get("{header}")' not in tests]
    assert missing == []


def test_some_requests_send_a_request_id_and_expect_it_back():
    echoed = [item["name"] for _, item in requests_of(load_collection()["item"])
              if any(h["key"] == "X-Request-ID" and h["value"] == "{{request_id}}"
                     for h in item["request"].get("header", []))
              and 'pm.request.headers.get("X-Request-ID")' in script(item, "test")]
    assert len(echoed) >= 5, echoed
