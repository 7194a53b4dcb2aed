"""One declaration per endpoint (gateway/rest/endpoints.py): PATCH's scope rule said once and checked in today's
order, the query's dry_run and the parsed body used for the Idempotency-Key too (the body parsed once, its
fingerprint unchanged), and replies dumped through their schemas in the documented key order."""

from __future__ import annotations

import json

import pytest
from flask import Blueprint

from gateway.rest import endpoints, idempotency
from gateway.rest.auth import OPEN, Policy
from gateway.rest.endpoints import endpoint
from gateway.rest.queries import NoQuery
from gateway.rest.schemas import RedeliveryReplySchema
from tests.conftest import ONGOING_SERVICE_PATH, ongoing_connection

WRITER_KEY = "writer-key-for-endpoints-01"
DRY_RUN_KEY = "dry-run-key-for-endpoints-1"
READER_KEY = "reader-key-for-endpoints-01"


@pytest.fixture
def app(make_gateway, sandbox_url):
    return make_gateway({
        "gateway": {"default_connection": "ongoing"},
        "connections": {"ongoing": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH)},
        "callers": {
            "writer": {"key": WRITER_KEY, "scopes": ["orders:write"]},
            "tester": {"key": DRY_RUN_KEY, "scopes": ["orders:dry-run"]},
            "reader": {"key": READER_KEY, "scopes": ["events:read"]},
        },
    })


def bearer(key: str, **headers: str) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


def problem(reply) -> tuple[int, str]:
    return reply.status_code, reply.get_json()["type"].rsplit(":", 1)[-1]


# --- PATCH's scope rule: orders:write, or orders:dry-run for a dry run ------------------------------------------

@pytest.mark.parametrize(("key", "path", "body", "expected"), [
    # a caller with neither scope is refused before anything is read
    (READER_KEY, "/orders/SO-1001?dry_run=maybe", {"status": "released"}, (403, "forbidden")),
    (READER_KEY, "/orders/SO-1001", "not json", (403, "forbidden")),
    # a dry-run caller's non-dry-run: the query, the body and the connection are checked first, then the scope
    (DRY_RUN_KEY, "/orders/SO-1001?dry_run=maybe", {"status": "released"}, (422, "validation-failed")),
    (DRY_RUN_KEY, "/orders/SO-1001", "not json", (415, "unsupported-media-type")),
    (DRY_RUN_KEY, "/orders/SO-1001", {"waybill": 5}, (422, "validation-failed")),
    (DRY_RUN_KEY, "/orders/SO-1001", {"connection": "nowhere", "status": "released"}, (422, "validation-failed")),
    # what only the connection's backend can check comes after the scope
    (DRY_RUN_KEY, "/orders/SO-1001", {"status": "nonsense"}, (403, "forbidden")),
    (DRY_RUN_KEY, "/orders/SO-1001", {"status": "released"}, (403, "forbidden")),
    (DRY_RUN_KEY, "/orders", {"orders": [{"order_id": "SO-1001", "status": "released"}]}, (403, "forbidden")),
])
def test_refusals_come_in_their_order(app, key, path, body, expected):
    client = app.test_client()
    kwargs = {"data": body, "content_type": "text/plain"} if isinstance(body, str) else {"json": body}

    reply = client.patch(path, headers=bearer(key), **kwargs)

    assert problem(reply) == expected, reply.get_json()


def test_a_dry_run_caller_is_refused_a_send_naming_orders_write_and_served_a_dry_run(app):
    client = app.test_client()
    refused = client.patch("/orders/SO-1001", json={"status": "released"}, headers=bearer(DRY_RUN_KEY))
    served = client.patch("/orders/SO-1001?dry_run=yes", json={"status": "released"}, headers=bearer(DRY_RUN_KEY))

    assert "lacks the scope orders:write." in refused.get_json()["detail"]
    assert served.status_code == 200 and served.get_json()["dry_run"] is True


def test_a_refused_query_is_422_before_the_key_is_used(app):
    client = app.test_client()
    headers = bearer(WRITER_KEY, **{"Idempotency-Key": "query-first"})
    refused = client.patch("/orders/SO-1001?dry_run=maybe", json={"waybill": "Q-1"}, headers=headers)
    sent = client.patch("/orders/SO-1001", json={"waybill": "Q-1"}, headers=headers)

    assert problem(refused) == (422, "validation-failed")
    assert refused.get_json()["errors"] == {"dry_run": ["Not a valid boolean; use true or false."]}
    assert sent.status_code == 200 and "Idempotent-Replayed" not in sent.headers


# --- dry_run and the body, each read once --------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["true", "ON", "Yes", "1"])
def test_a_dry_run_with_a_key_is_never_kept_whatever_the_spelling_of_its_flag(app, flag):
    client = app.test_client()
    headers = bearer(DRY_RUN_KEY, **{"Idempotency-Key": f"dry-{flag}"})
    first = client.patch(f"/orders/SO-1001?dry_run={flag}", json={"waybill": "D-1"}, headers=headers)
    again = client.patch(f"/orders/SO-1001?dry_run={flag}", json={"waybill": "D-1"}, headers=headers)

    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers
    assert first.get_json()["request_id"] != again.get_json()["request_id"]


def test_the_body_is_parsed_once_with_a_key_and_fingerprinted_as_parsed(app, monkeypatch):
    reads, prints = [], []
    read_json_body, body_fingerprint = endpoints.read_json_body, endpoints.body_fingerprint

    def counted_read():
        reads.append(1)
        return read_json_body()

    def kept_print(document):
        prints.append(document)
        return body_fingerprint(document)

    monkeypatch.setattr(endpoints, "read_json_body", counted_read)
    monkeypatch.setattr(endpoints, "body_fingerprint", kept_print)
    monkeypatch.setattr(idempotency, "request_fingerprint", lambda *args: pytest.fail("the raw body was parsed"))
    client = app.test_client()
    headers = bearer(WRITER_KEY, **{"Idempotency-Key": "parsed-once"})
    first = client.patch("/orders/SO-1002", json={"waybill": "ONCE-1"}, headers=headers)
    again = client.patch("/orders/SO-1002", json={"waybill": "ONCE-1"}, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_data() == first.get_data()
    assert len(reads) == 2 and prints == [{"waybill": "ONCE-1"}, {"waybill": "ONCE-1"}]


@pytest.mark.parametrize("raw", [
    b'{"waybill": "W-1", "status": "released"}',
    b'{"status":"released","waybill":"W-1"}',
    '{"name": "Åsa Ünal - 東京", "n": [1, 2.5, -0.0, 1e3, {"b": null, "a": true}]}'.encode(),
    b'{"x": "\\u00e9\\n\\"q\\""}',
    b'[1, "two"]',
])
def test_the_fingerprint_of_the_parsed_body_is_that_of_the_raw_body(app, raw):
    with app.test_request_context("/orders/SO-1?a=1&dry_run=true", method="PATCH", data=raw,
                                  content_type="application/json"):
        assert idempotency.body_fingerprint(json.loads(raw)) == idempotency.fingerprint()


# --- replies dumped through their schemas --------------------------------------------------------------------------

def test_order_replies_keep_their_documented_key_order(app):
    client = app.test_client()
    sent = client.patch("/orders/SO-1003", json={"waybill": "K-1"}, headers=bearer(WRITER_KEY))
    dry = client.patch("/orders/SO-1003?dry_run=true", json={"waybill": "K-2"}, headers=bearer(DRY_RUN_KEY))
    bulk = client.patch("/orders?dry_run=true", json={"orders": [{"order_id": "SO-1003", "waybill": "K-3"}]},
                        headers=bearer(DRY_RUN_KEY))

    assert list(json.loads(sent.get_data())) == ["order_id", "connection", "backend", "operation", "updated",
                                                 "backend_order_id", "message", "request_id"]
    assert list(json.loads(dry.get_data())) == ["order_id", "connection", "backend", "operation", "dry_run",
                                                "updated", "request", "request_id"]
    assert list(json.loads(dry.get_data())["request"]) == ["method", "url", "headers", "body"]
    reply = json.loads(bulk.get_data())
    assert list(reply) == ["connection", "backend", "dry_run", "requests", "succeeded", "failed", "results",
                           "request_id"]
    assert list(reply["results"][0]["body"]) == ["order_id", "connection", "backend", "operation", "dry_run",
                                                 "updated", "request_id"]
    assert json.loads(sent.get_data())["updated"] == {"waybill": "K-1"}


def test_a_declared_view_gets_its_loaded_query_and_its_result_is_dumped(app):
    blueprint = Blueprint("declared_for_test", __name__)

    @blueprint.get("/declared/<thing>")
    @endpoint("get", "/declared/{thing}", "A test endpoint", tags=["test"], policy=Policy(OPEN, connection_data=False),
              query=NoQuery, reply=RedeliveryReplySchema, replies={202: "queued"})
    def declared(thing: str, query: dict):
        """A redelivery's reply of its own."""
        return {"id": thing, "redelivering_to": ["b", "a"], "requested_by": "x", "dropped": 1}, 202

    try:
        app.register_blueprint(blueprint)
        client = app.test_client()
        served = client.get("/declared/evt-1")
        refused = client.get("/declared/evt-1?extra=1")
    finally:
        endpoints.OPERATIONS.remove(declared.declaration.operation)

    assert served.status_code == 202 and served.get_data() == \
        b'{"id":"evt-1","redelivering_to":["b","a"],"requested_by":"x"}\n'
    assert problem(refused) == (422, "validation-failed")
    assert refused.get_json()["errors"] == {"extra": ["Unknown query parameter."]}


def test_an_idempotent_endpoint_cannot_defer_its_body():
    with pytest.raises(TypeError):
        endpoint("post", "/x", "x", tags=[], policy=Policy(OPEN, connection_data=False), query=NoQuery,
                 replies={200: "x"}, idempotent=True, deferred=True)
