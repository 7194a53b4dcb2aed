"""Update jobs (Prefer: respond-async): accepted as the synchronous update is checked, kept, and sent by a JobSender
against the sandboxes over real HTTP, in order, through the connection's guards; what each failure becomes.

The sender runs in the test's process on a clock the test moves, so backoffs and ages pass at once; the end-to-end
tests with the real worker process are in tests/test_update_jobs_end_to_end.py.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import requests

from gateway.jobs import DEAD, DONE, FAILED, QUEUED
from gateway.rest.orders import JobReplies, job_sender
from gateway.runtime import gateway_of
from tests.conftest import (
    ONGOING_SERVICE_PATH,
    ongoing_connection,
    sellercenter_connection,
    speed4trade_connection,
)

ASYNC = {"Prefer": "respond-async"}
KEYS = {name: f"{name}-key-for-update-jobs-0000" for name in ("writer", "speed4trade-only", "no-read")}
WRITER = {"Authorization": f"Bearer {KEYS['writer']}"}


@pytest.fixture
def gateway_app(make_gateway, sandbox_url):
    """A gateway with the three sandbox backends, and callers: one with every scope, one limited to Speed4Trade,
    one that may write but not read jobs."""
    def make(ongoing=None, speed4trade=None, jobs=None):
        config = {
            "gateway": {"default_connection": "ongoing-demo"},
            "connections": {
                "ongoing-demo": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH, **(ongoing or {})),
                "speed4trade-demo": speed4trade_connection(sandbox_url + "/speed4trade/", **(speed4trade or {})),
                "sellercenter-demo": sellercenter_connection(sandbox_url + "/sellercenter/oms-api/"),
            },
            "callers": {
                "writer": {"key": KEYS["writer"], "connections": ["*"],
                           "scopes": ["orders:write", "orders:dry-run", "updates:read", "events:read",
                                      "exchanges:read"]},
                "speed4trade-only": {"key": KEYS["speed4trade-only"], "connections": ["speed4trade-demo"],
                                     "scopes": ["orders:write", "updates:read"]},
                "no-read": {"key": KEYS["no-read"], "connections": ["*"], "scopes": ["orders:write"]},
            },
            "jobs": {"backoff_base_seconds": 1, "backoff_max_seconds": 10, **(jobs or {})},
        }
        return make_gateway(config)

    return make


class Clock:
    """The sender's clock, which the test moves forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sender_for(app, clock: Clock):
    """A JobSender as the worker builds it, on the app's connections and stores, with no jitter."""
    return job_sender(app, clock=clock, jitter=lambda bound: bound)


def queue(client, order_id: str, document: dict, headers: dict | None = None) -> dict:
    reply = client.patch(f"/orders/{order_id}", json=document, headers={**WRITER, **ASYNC, **(headers or {})})
    assert reply.status_code == 202, reply.get_json()
    return reply.get_json()


def job(client, job_id: str) -> dict:
    reply = client.get(f"/updates/{job_id}", headers=WRITER)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def calls(sandbox_url: str, vendor: str) -> list[dict]:
    return requests.get(f"{sandbox_url}/{vendor}/_calls", timeout=5).json()["calls"]


def outage(sandbox_url: str, vendor: str, seconds: float, mode: str = "unavailable") -> None:
    reply = requests.post(f"{sandbox_url}/{vendor}/_outage", json={"seconds": seconds, "mode": mode}, timeout=5)
    assert reply.status_code == 200, reply.text


def end_outage(sandbox_url: str, vendor: str) -> None:
    """End the vendor's outage, and wait until the calls it held have been answered (so none answers during a later
    test)."""
    assert requests.delete(f"{sandbox_url}/{vendor}/_outage", timeout=5).status_code == 200
    deadline = time.monotonic() + 5
    while any(call["outcome"] is None for call in calls(sandbox_url, vendor)):
        assert time.monotonic() < deadline, "a held call never ended"
        time.sleep(0.02)


def ongoing_order(sandbox_url: str, system_id: int) -> dict:
    return requests.get(f"{sandbox_url}/ongoing/orders/{system_id}", timeout=5).json()


# --- accepting -----------------------------------------------------------------------------------------------------

def test_an_async_patch_is_checked_kept_and_answered_202_without_a_call(gateway_app, sandbox_url):
    client = gateway_app().test_client()

    reply = client.patch("/orders/SO-1001", json={"waybill": "JOB-1"}, headers={**WRITER, "Prefer": "respond-async"})

    assert reply.status_code == 202
    assert reply.headers["Preference-Applied"] == "respond-async"
    body = reply.get_json()
    assert reply.headers["Location"] == f"/updates/{body['id']}" == body["links"]["self"]
    assert body["state"] == QUEUED and body["attempts"] == [] and body["result"] is None
    assert body["order_ids"] == ["SO-1001"] and body["operation"] == "UpdateOrder"
    assert body["connection"] == "ongoing-demo" and body["caller"] == "writer"
    assert calls(sandbox_url, "ongoing") == []
    assert job(client, body["id"]) == body


@pytest.mark.parametrize("prefer", ["respond-async", "RESPOND-ASYNC", "wait=10, respond-async", "respond-async; x=1"])
def test_the_preference_is_read_as_rfc_7240_writes_it(gateway_app, prefer):
    client = gateway_app().test_client()

    reply = client.patch("/orders/SO-1001", json={"waybill": "JOB-1"}, headers={**WRITER, "Prefer": prefer})

    assert reply.status_code == 202


def test_the_preference_may_come_in_a_prefer_header_of_its_own(gateway_app):
    client = gateway_app().test_client()

    reply = client.patch("/orders/SO-1001", json={"waybill": "JOB-1"},
                         headers=[*WRITER.items(), ("Prefer", "return=minimal"), ("Prefer", "respond-async")])
    other = client.patch("/orders/SO-1001", json={"waybill": "JOB-1"},
                         headers=[*WRITER.items(), ("Prefer", "return=minimal"), ("Prefer", "respond-asynchronously")])

    assert reply.status_code == 202 and other.status_code == 200


def test_an_invalid_update_is_refused_as_without_the_preference_and_nothing_is_queued(gateway_app):
    client = gateway_app().test_client()

    refused = client.patch("/orders/SO-1001", json={"status": "bogus"}, headers={**WRITER, **ASYNC})
    unknown = client.patch("/orders/SO-1001", json={"waybill": "X", "connection": "nowhere"},
                           headers={**WRITER, **ASYNC})

    assert refused.status_code == 422 and "status" in refused.get_json()["errors"]
    assert unknown.status_code == 422 and "connection" in unknown.get_json()["errors"]
    assert "Preference-Applied" not in refused.headers
    assert client.get("/updates", headers=WRITER).get_json()["count"] == 0


def test_a_dry_run_ignores_the_preference(gateway_app):
    client = gateway_app().test_client()

    reply = client.patch("/orders/SO-1001?dry_run=true", json={"waybill": "X"}, headers={**WRITER, **ASYNC})

    assert reply.status_code == 200 and reply.get_json()["dry_run"] is True
    assert "Preference-Applied" not in reply.headers
    assert client.get("/updates", headers=WRITER).get_json()["count"] == 0


def test_the_same_idempotency_key_gives_the_same_job(gateway_app):
    client = gateway_app().test_client()
    keyed = {**WRITER, **ASYNC, "Idempotency-Key": '"job-key-1"'}

    first = client.patch("/orders/SO-1001", json={"waybill": "KEYED"}, headers=keyed)
    again = client.patch("/orders/SO-1001", json={"waybill": "KEYED"}, headers=keyed)
    synchronous = client.patch("/orders/SO-1001", json={"waybill": "KEYED"},
                               headers={**WRITER, "Idempotency-Key": '"job-key-1"'})

    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert client.get("/updates", headers=WRITER).get_json()["count"] == 1
    # the synchronous request is another request: the key was used for the asynchronous one
    assert synchronous.status_code == 422


def test_a_job_store_that_cannot_be_used_is_a_503_and_nothing_is_sent(gateway_app, sandbox_url, monkeypatch):
    app = gateway_app()
    store = gateway_of(app).events.jobs

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "add_jobs", broken)
    reply = app.test_client().patch("/orders/SO-1001", json={"waybill": "X"}, headers={**WRITER, **ASYNC})

    assert reply.status_code == 503
    assert reply.get_json()["type"].endswith("store-unavailable")
    assert calls(sandbox_url, "ongoing") == []


def test_an_async_bulk_is_one_job_per_vendor_call_and_reports_invalid_items(gateway_app):
    client = gateway_app().test_client()

    speed4trade = client.patch("/orders", headers={**WRITER, **ASYNC}, json={"connection": "speed4trade-demo",
                               "orders": [{"order_id": "10001", "status": "fetched"},
                                          {"order_id": "10002", "status": "nonsense"},
                                          {"order_id": "10003", "status": "fetched"}]})
    ongoing = client.patch("/orders", headers={**WRITER, **ASYNC}, json={"orders": [
        {"order_id": "SO-1001", "waybill": "B-1"}, {"order_id": "SO-1002", "waybill": "B-2"}]})

    assert speed4trade.status_code == 202
    body = speed4trade.get_json()
    (one,) = body["jobs"]
    assert speed4trade.headers["Location"] == f"/updates/{one['id']}"
    assert one["order_ids"] == ["10001", "10003"] and one["kind"] == "bulk"
    assert [(item["position"], item["status"], item.get("job_id")) for item in body["results"]] == [
        (0, 202, one["id"]), (1, 422, None), (2, 202, one["id"])]
    assert body["queued"] == 2 and body["failed"] == 1
    assert ongoing.status_code == 202 and len(ongoing.get_json()["jobs"]) == 2  # Ongoing: one order per call
    listed = client.get(ongoing.headers["Location"], headers=WRITER).get_json()
    assert sorted(job["id"] for job in listed["updates"]) == sorted(job["id"] for job in ongoing.get_json()["jobs"])


def test_a_bulk_with_no_valid_item_queues_nothing(gateway_app):
    client = gateway_app().test_client()

    reply = client.patch("/orders", headers={**WRITER, **ASYNC}, json={"orders": [{"order_id": "SO-1", "status": "x"}]})

    assert reply.status_code == 207 and "Preference-Applied" not in reply.headers
    assert client.get("/updates", headers=WRITER).get_json()["count"] == 0


# --- scoping -------------------------------------------------------------------------------------------------------

def test_jobs_are_seen_only_by_callers_of_their_connection(gateway_app):
    client = gateway_app().test_client()
    queued = queue(client, "SO-1001", {"waybill": "SCOPED"})
    other = {"Authorization": f"Bearer {KEYS['speed4trade-only']}"}

    assert client.get(f"/updates/{queued['id']}", headers=other).status_code == 404
    assert client.post(f"/updates/{queued['id']}/retry", headers=other).status_code == 404
    assert client.get("/updates", headers=other).get_json()["count"] == 0
    assert client.get("/updates?connection=ongoing-demo", headers=other).get_json()["count"] == 0
    assert client.get("/updates/upd_unknown", headers=WRITER).status_code == 404


def test_reading_jobs_needs_its_own_scope(gateway_app):
    client = gateway_app().test_client()
    writer_only = {"Authorization": f"Bearer {KEYS['no-read']}"}

    assert client.patch("/orders/SO-1001", json={"waybill": "X"}, headers={**writer_only, **ASYNC}).status_code == 202
    reply = client.get("/updates", headers=writer_only)

    assert reply.status_code == 403 and "updates:read" in reply.get_json()["detail"]


def test_the_list_filters_and_pages(gateway_app):
    client = gateway_app().test_client()
    ids = [queue(client, order, {"waybill": f"L-{n}"})["id"] for n, order in enumerate(["SO-1001", "SO-1002",
                                                                                           "SO-1001"])]

    first = client.get("/updates?limit=2", headers=WRITER).get_json()
    rest = client.get(first["next"], headers=WRITER).get_json()
    by_order = client.get("/updates?order_id=SO-1001", headers=WRITER).get_json()

    assert [item["id"] for item in first["updates"] + rest["updates"]] == ids[::-1]
    assert rest["next"] is None
    assert [item["id"] for item in by_order["updates"]] == [ids[2], ids[0]]
    assert client.get("/updates?state=done", headers=WRITER).get_json()["count"] == 0
    assert client.get("/updates?state=nope", headers=WRITER).status_code == 422


# --- sending -------------------------------------------------------------------------------------------------------

def test_a_sent_job_is_done_with_the_synchronous_reply_and_announced(gateway_app, sandbox_url):
    app = gateway_app()
    client = app.test_client()
    queued = queue(client, "SO-1001", {"status": "picked"})
    synchronous = client.patch("/orders/SO-1002", json={"status": "picked"}, headers=WRITER).get_json()

    assert sender_for(app, Clock()).drain_lane("ongoing-demo") is None

    done = job(client, queued["id"])
    assert done["state"] == DONE and done["finished_at"] is not None
    assert [attempt["outcome"] for attempt in done["attempts"]] == ["done"]
    result = done["result"]
    assert result["status"] == 200
    assert set(result["body"]) == set(synchronous)
    assert result["body"]["order_id"] == "SO-1001" and result["body"]["updated"] == {"status": "picked"}
    assert result["body"]["request_id"] == queued["request_id"]
    assert ongoing_order(sandbox_url, 1001)["status"] == 400
    exchange = client.get(f"/exchanges/{done['attempts'][0]['exchange_id']}", headers=WRITER)
    assert exchange.status_code == 200 and exchange.get_json()["request_id"] == queued["request_id"]
    events = client.get("/events?type=order.update_succeeded", headers=WRITER).get_json()["events"]
    assert [event["event"]["update"]["job_id"] for event in events] == [queued["id"]]
    assert events[0]["event"]["update"]["result"] == result


def test_a_lane_waits_out_an_outage_and_sends_in_the_order_accepted(gateway_app, sandbox_url):
    app = gateway_app()
    client = app.test_client()
    clock = Clock()
    sender = sender_for(app, clock)
    outage(sandbox_url, "ongoing", 30)
    accepted = [queue(client, order, {"waybill": waybill})["id"]
                for order, waybill in (("SO-1001", "FIRST"), ("SO-1002", "OTHER"), ("SO-1001", "LAST"))]

    wait = sender.drain_lane("ongoing-demo")

    head = job(client, accepted[0])
    assert head["state"] == QUEUED
    (attempt,) = head["attempts"]
    assert attempt["outcome"] == "unavailable" and attempt["status"] == 503 and int(attempt["retry_after"]) >= 29
    assert wait >= 29  # the backend's Retry-After, longer than the backoff
    assert [job(client, job_id)["attempt_count"] for job_id in accepted[1:]] == [0, 0]  # behind the head
    end_outage(sandbox_url, "ongoing")
    clock.advance(wait)

    assert sender.drain_lane("ongoing-demo") is None

    assert [job(client, job_id)["state"] for job_id in accepted] == [DONE, DONE, DONE]
    applied = [(call["order_ids"], call["outcome"]) for call in calls(sandbox_url, "ongoing")]
    assert applied == [(["SO-1001"], "unavailable"), (["SO-1001"], "applied"), (["SO-1002"], "applied"),
                       (["SO-1001"], "applied")]
    assert ongoing_order(sandbox_url, 1001)["waybill"] == "LAST"


def test_an_open_breaker_makes_a_job_wait_not_fail(gateway_app, sandbox_url):
    app = gateway_app(ongoing={"breaker_failures": 1, "breaker_reset_seconds": 60, "retry_attempts": 1})
    client = app.test_client()
    clock = Clock()
    sender = sender_for(app, clock)
    outage(sandbox_url, "ongoing", 1)
    queued = queue(client, "SO-1001", {"waybill": "BREAKER"})

    clock.advance(sender.drain_lane("ongoing-demo"))
    second_wait = sender.drain_lane("ongoing-demo")

    attempts = job(client, queued["id"])["attempts"]
    assert [attempt["outcome"] for attempt in attempts] == ["unavailable", "unavailable"]
    assert "breaker" in attempts[1]["error"].lower() and attempts[1]["code"] == "breaker-open"
    assert attempts[0]["code"] == "HTTP 503"
    assert second_wait >= 50  # the breaker's Retry-After: until its probe
    assert len(calls(sandbox_url, "ongoing")) == 1  # the breaker let nothing through


def test_a_job_the_backend_cannot_take_within_max_age_is_dead(gateway_app, sandbox_url):
    app = gateway_app(jobs={"max_age_seconds": 60})
    client = app.test_client()
    clock = Clock()
    outage(sandbox_url, "ongoing", 120)
    queued = queue(client, "SO-1001", {"waybill": "TOO-LATE"})

    assert sender_for(app, clock).drain_lane("ongoing-demo") is None  # its Retry-After is past its max age

    dead = job(client, queued["id"])
    assert dead["state"] == DEAD
    assert dead["attempts"][-1]["outcome"] == "expired" and dead["result"]["status"] == 503
    events = client.get("/events?type=order.update_failed", headers=WRITER).get_json()["events"]
    assert [event["event"]["update"]["state"] for event in events] == [DEAD]


def test_a_refusal_fails_the_job_and_the_lane_goes_on(gateway_app, sandbox_url):
    app = gateway_app()
    client = app.test_client()
    refused = queue(client, "SO-1003", {"status": "picked"})  # allocated but unpicked goods: a conflict
    later = queue(client, "SO-1003", {"waybill": "AFTER-REFUSAL"})

    assert sender_for(app, Clock()).drain_lane("ongoing-demo") is None

    failed = job(client, refused["id"])
    assert failed["state"] == FAILED
    assert failed["result"]["status"] == 409
    assert failed["result"]["body"]["type"].endswith("order-state-conflict")
    assert [attempt["outcome"] for attempt in failed["attempts"]] == ["refused"]
    assert job(client, later["id"])["state"] == DONE
    assert ongoing_order(sandbox_url, 1003)["waybill"] == "AFTER-REFUSAL"


def test_a_failed_job_is_retried_at_the_back_of_its_lane_and_a_done_one_is_not(gateway_app):
    app = gateway_app()
    client = app.test_client()
    refused = queue(client, "SO-1003", {"status": "picked"})
    done = queue(client, "SO-1001", {"waybill": "DONE"})
    sender = sender_for(app, Clock())
    sender.drain_lane("ongoing-demo")

    retried = client.post(f"/updates/{refused['id']}/retry", headers=WRITER)
    again = client.post(f"/updates/{refused['id']}/retry", headers=WRITER)
    not_again = client.post(f"/updates/{done['id']}/retry", headers=WRITER)

    assert retried.status_code == 202 and retried.get_json()["state"] == QUEUED
    assert retried.headers["Location"] == f"/updates/{refused['id']}"
    assert again.status_code == 202
    history = job(client, refused["id"])["attempts"]
    assert [(attempt["outcome"], attempt.get("requested_by")) for attempt in history] == [
        ("refused", None), ("retry", "writer")]  # asking twice queued it once
    assert not_again.status_code == 409 and not_again.get_json()["type"].endswith("job-not-retryable")
    sender.drain_lane("ongoing-demo")
    assert job(client, refused["id"])["state"] == FAILED
    assert [attempt["outcome"] for attempt in job(client, refused["id"])["attempts"]] == [
        "refused", "retry", "refused"]


def test_an_unanswered_call_that_must_not_be_repeated_fails_with_outcome_unknown(gateway_app, sandbox_url):
    app = gateway_app(speed4trade={"read_timeout": 0.3, "call_timeout": 1})
    client = app.test_client()
    clock = Clock()
    sender = sender_for(app, clock)
    outage(sandbox_url, "speed4trade", 3, mode="no-reply")
    queued = queue(client, "10001", {"status": "fetched", "connection": "speed4trade-demo"})

    try:
        assert sender.drain_lane("speed4trade-demo") is None
        clock.advance(60)
        assert sender.drain_lane("speed4trade-demo") is None
    finally:
        end_outage(sandbox_url, "speed4trade")

    failed = job(client, queued["id"])
    assert failed["state"] == FAILED and not failed["idempotent"]
    body = failed["result"]["body"]
    assert body["type"].endswith("outcome-unknown")
    assert body["exchange_id"] == failed["attempts"][-1]["exchange_id"]
    assert client.get(f"/exchanges/{body['exchange_id']}", headers=WRITER).status_code == 200
    assert [call["outcome"] for call in calls(sandbox_url, "speed4trade")] == ["no-reply"]  # sent once


def test_an_unanswered_call_that_may_be_repeated_is_sent_again(gateway_app, sandbox_url):
    app = gateway_app(ongoing={"read_timeout": 0.3, "call_timeout": 1, "retry_attempts": 1})
    client = app.test_client()
    clock = Clock()
    sender = sender_for(app, clock)
    outage(sandbox_url, "ongoing", 3, mode="no-reply")
    queued = queue(client, "SO-1001", {"waybill": "AGAIN"})

    wait = sender.drain_lane("ongoing-demo")
    end_outage(sandbox_url, "ongoing")
    clock.advance(wait)
    sender.drain_lane("ongoing-demo")

    done = job(client, queued["id"])
    assert done["state"] == DONE
    assert [attempt["outcome"] for attempt in done["attempts"]] == ["outcome-unknown", "done"]


@pytest.mark.parametrize(("connection", "order_id", "document", "noted", "state", "sandbox_calls"), [
    ("speed4trade-demo", "10001", {"status": "fetched"}, True, FAILED, 0),  # may have gone out: not again
    ("speed4trade-demo", "10001", {"status": "fetched"}, False, DONE, 1),  # never went out: sent
    ("ongoing-demo", "SO-1001", {"waybill": "RESENT"}, True, DONE, 1),  # may have gone out, harmless: again
], ids=["noted-not-idempotent", "not-noted", "noted-idempotent"])
def test_a_job_whose_worker_died_mid_send(gateway_app, sandbox_url, connection, order_id, document, noted, state,
                                          sandbox_calls):
    app = gateway_app()
    client = app.test_client()
    clock = Clock()
    store = gateway_of(app).events.jobs
    queued = queue(client, order_id, {**document, "connection": connection})
    assert store.claim(queued["id"], "a-worker-killed-later", lease_seconds=10) is not None
    if noted:
        assert store.note_exchange(queued["id"], "a-worker-killed-later", "exc_lost")

    assert sender_for(app, clock).drain_lane(connection) <= 10  # its claim is still live: wait
    clock.advance(11)
    sender_for(app, clock).drain_lane(connection)

    ended = job(client, queued["id"])
    assert ended["state"] == state
    assert len(calls(sandbox_url, connection.split("-")[0])) == sandbox_calls
    if noted:
        assert ended["attempts"][0]["outcome"] == "interrupted"
        assert ended["attempts"][0]["exchange_id"] == "exc_lost"
    if state == FAILED:
        assert ended["result"]["body"]["type"].endswith("outcome-unknown")
        assert ended["result"]["body"]["exchange_id"] == "exc_lost"


def test_a_bulk_job_ends_with_the_bulk_reply_of_its_items(gateway_app):
    app = gateway_app()
    client = app.test_client()
    body = client.patch("/orders", headers={**WRITER, **ASYNC}, json={"connection": "speed4trade-demo", "orders": [
        {"order_id": "10001", "status": "fetched"}, {"order_id": "bad", "status": "fetched"},
        {"order_id": "10002", "status": "fetched"}]}).get_json()

    sender_for(app, Clock()).drain_lane("speed4trade-demo")

    (queued,) = body["jobs"]
    result = job(client, queued["id"])["result"]
    assert [(item["position"], item["status"]) for item in result["body"]["results"]] == [(0, 200), (2, 200)]
    assert result["status"] == 200 and result["body"]["succeeded"] == 2


def test_jobs_kept_in_redis_are_sent_as_those_kept_in_sqlite(sandbox_url, redis_url, make_gateway):
    config = {"gateway": {"default_connection": "ongoing-demo"},
              "connections": {"ongoing-demo": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH)},
              "callers": {"writer": {"key": KEYS["writer"], "connections": ["*"],
                                     "scopes": ["orders:write", "updates:read", "events:read"]}},
              "events": {"redis_url": redis_url}}
    app = make_gateway(config)
    client = app.test_client()
    queued = queue(client, "SO-1001", {"waybill": "IN-REDIS"})

    assert sender_for(app, Clock()).drain_lane("ongoing-demo") is None

    assert job(client, queued["id"])["state"] == DONE
    assert ongoing_order(sandbox_url, 1001)["waybill"] == "IN-REDIS"
    events = client.get("/events?type=order.update_succeeded", headers=WRITER).get_json()["events"]
    assert [event["event"]["update"]["job_id"] for event in events] == [queued["id"]]


def test_the_outcome_of_a_sent_call_is_recorded_through_a_store_hiccup(gateway_app, sandbox_url, monkeypatch):
    app = gateway_app(jobs={"lease_margin_seconds": 4})
    client = app.test_client()
    store = gateway_of(app).events.jobs
    queued = queue(client, "SO-1001", {"waybill": "HICCUP"})
    release, failures = store.release, []

    def hiccup(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return release(*args, **kwargs)

    monkeypatch.setattr(store, "release", hiccup)
    sender_for(app, Clock()).drain_lane("ongoing-demo")

    assert len(failures) == 2
    assert job(client, queued["id"])["state"] == DONE  # not left sending, to be taken for an unknown outcome
    assert [call["outcome"] for call in calls(sandbox_url, "ongoing")] == ["applied"]


def test_what_a_job_keeps_of_a_backend_echoing_the_password_is_masked(make_gateway):
    from tests.servers import ScriptedBackend, serve_wsgi
    from tests.test_problem_replies import ECHOING_FAULT

    with serve_wsgi(ScriptedBackend(ECHOING_FAULT, status=500)) as url:
        app = make_gateway({"gateway": {"default_connection": "o"}, "connections": {"o": ongoing_connection(url)},
                            "callers": {"writer": {"key": KEYS["writer"], "connections": ["*"],
                                                   "scopes": ["orders:write", "updates:read", "events:read"]}}})
        client = app.test_client()
        queued = queue(client, "SO-1001", {"status": "open"})
        sender_for(app, Clock()).drain_lane("o")

    failed = gateway_of(app).events.jobs.get_job(queued["id"])  # as kept, before any reply's last scrub
    assert failed["state"] == FAILED
    kept = json.dumps([failed["attempts"], failed["result"]])
    assert "demo-password" not in kept and "demo/********" in kept
    event = client.get("/events?type=order.update_failed", headers=WRITER).get_data(as_text=True)
    assert "demo-password" not in event


@pytest.mark.expected_traceback
def test_a_result_that_cannot_be_rendered_does_not_change_what_the_job_ended_in(gateway_app, sandbox_url,
                                                                                 monkeypatch):
    app = gateway_app()
    client = app.test_client()
    queued = queue(client, "SO-1001", {"waybill": "APPLIED"})

    def broken(*args, **kwargs):
        raise KeyError("a rendering bug")

    monkeypatch.setattr(JobReplies, "applied", broken)
    sender_for(app, Clock()).drain_lane("ongoing-demo")

    done = job(client, queued["id"])
    assert done["state"] == DONE and done["result"] == {"status": 200, "body": {}}
    assert ongoing_order(sandbox_url, 1001)["waybill"] == "APPLIED"
