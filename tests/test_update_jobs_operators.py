"""Update jobs for operators: the console's timeline shows an order's jobs and retries a failed one (CSRF and
Idempotency-Key as the redeliver button has them, the API's rules and fingerprint), the overview counts queued jobs,
GET /metrics has the active jobs per connection, and /readyz warns while a job waits too long."""

from __future__ import annotations

import logging
import re
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.events.heartbeat import Heartbeat
from gateway.jobs import NewJob
from gateway.rest.orders import job_sender
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection

OPS_KEY = "ops-jobs-console-key-0001"
VIEWER_KEY = "viewer-jobs-console-key-01"
OTHER_KEY = "other-jobs-console-key-001"
API_KEY = "api-jobs-caller-key-000001"
OURS, OTHER = "ongoing-demo", "ongoing-other"
#: Ongoing's sandbox refuses to mark this order picked (a conflict): its job fails
REFUSING_ORDER = "SO-1003"


@pytest.fixture
def app(make_gateway, sandbox_url):
    url = sandbox_url + ONGOING_SERVICE_PATH
    config = gateway_config(**{OURS: ongoing_connection(url), OTHER: ongoing_connection(url)})
    config["gateway"]["open_metrics"] = True
    config["callers"] = {
        "ops": {"key": OPS_KEY, "scopes": ["console", "orders:write"]},
        "viewer": {"key": VIEWER_KEY, "scopes": ["console"]},
        "other": {"key": OTHER_KEY, "connections": [OTHER], "scopes": ["console", "orders:write"]},
        "api": {"key": API_KEY, "scopes": ["orders:write", "updates:read"]},
    }
    config["console"] = {"session_secret": "jobs-console-session-secret-000001"}
    config["jobs"] = {"warn_queued_age_seconds": 60}
    return make_gateway(config)


def api(key: str = API_KEY, **headers: str) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def console_of(app, key: str):
    client = app.test_client()
    token = csrf_of(client.get("/console/login").get_data(as_text=True))
    assert client.post("/console/login", data={"csrf_token": token, "key": key}).status_code == 303
    return client


def queue_update(app, order_id: str, status: str = "picked") -> dict:
    """Queue an update of the order on the default connection (ongoing-demo)."""
    reply = app.test_client().patch(f"/orders/{order_id}", json={"status": status},
                                    headers=api(Prefer="respond-async"))
    assert reply.status_code == 202, reply.get_json()
    return reply.get_json()


def drain(app, lane: str = OURS) -> None:
    assert job_sender(app).drain_lane(lane) is None


def failed_job(app) -> str:
    job = queue_update(app, REFUSING_ORDER)
    drain(app)
    assert gateway_of(app).events.jobs.get_job(job["id"])["state"] == "failed"
    return job["id"]


def timeline(client, order_id: str = REFUSING_ORDER) -> str:
    reply = client.get(f"/console/orders?order_id={order_id}")
    assert reply.status_code == 200
    return reply.get_data(as_text=True)


def job_item(html: str, job_id: str) -> str:
    return re.search(rf'<li class="job state-[a-z]+" data-job="{job_id}">(.*?)</li>\s*</?ol', html, re.S).group(0)


def retry_form(html: str, job_id: str) -> dict:
    form = re.search(rf'<form class="inline" method="post" action="/console/updates/{job_id}/retry">(.*?)</form>',
                     html, re.S).group(1)
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))


def retry_entries(app, job_id: str) -> list[dict]:
    return [attempt for attempt in gateway_of(app).events.jobs.get_job(job_id)["attempts"]
            if attempt["outcome"] == "retry"]


# -- the console -----------------------------------------------------------------------------------------------------

def test_the_timeline_lists_an_orders_queued_job_and_its_state(app):
    job = queue_update(app, "SO-1001")
    html = timeline(console_of(app, OPS_KEY), "SO-1001")
    item = job_item(html, job["id"])
    assert 'class="job-state">queued<' in item and "UpdateOrder" in item and f"on {OURS}" in item
    assert 'class="attempt-count">0<' in item
    assert "Retry" not in item  # a queued job is sent anyway


def test_a_failed_job_shows_its_refusal_the_exchange_and_a_retry_button_that_queues_it_again(app):
    job_id = failed_job(app)
    ops = console_of(app, OPS_KEY)
    html = timeline(ops)
    item = job_item(html, job_id)
    assert 'class="job-state">failed<' in item and 'class="last-outcome">refused<' in item
    assert "finished " in item and 'class="attempt-count">1<' in item
    exchange_id = re.search(r'href="#exchange-([^"]+)"', item).group(1)
    assert f'id="exchange-{exchange_id}"' in html  # the link leads to the call on the same page

    form = retry_form(html, job_id)
    assert form["csrf_token"] and form["idempotency_key"] and form["next"].startswith("/console/orders?")
    reply = ops.post(f"/console/updates/{job_id}/retry", data=form)
    assert reply.status_code == 303 and reply.headers["Location"] == form["next"]
    after = ops.get(reply.headers["Location"]).get_data(as_text=True)
    assert f"Update job {job_id} is queued again" in after
    assert 'class="job-state">queued<' in job_item(after, job_id)
    assert gateway_of(app).events.jobs.get_job(job_id)["state"] == "queued"
    assert [entry["requested_by"] for entry in retry_entries(app, job_id)] == ["ops"]
    assert "retry asked by ops" in job_item(after, job_id)


def test_pressing_retry_twice_with_the_same_key_queues_the_job_once(app):
    job_id = failed_job(app)
    ops = console_of(app, OPS_KEY)
    form = retry_form(timeline(ops), job_id)
    assert ops.post(f"/console/updates/{job_id}/retry", data=form).status_code == 303
    drain(app)  # refused again: failed, so a second retry would queue it again
    assert gateway_of(app).events.jobs.get_job(job_id)["state"] == "failed"
    reply = ops.post(f"/console/updates/{job_id}/retry", data=form)
    assert "was already queued again by this button" in ops.get(reply.headers["Location"]).get_data(as_text=True)
    assert len(retry_entries(app, job_id)) == 1
    assert gateway_of(app).events.jobs.get_job(job_id)["state"] == "failed"


def test_the_button_and_the_api_share_an_idempotency_key(app):
    job_id = failed_job(app)
    ops = console_of(app, OPS_KEY)
    form = retry_form(timeline(ops), job_id)
    ops.post(f"/console/updates/{job_id}/retry", data=form)
    drain(app)
    key = {"Idempotency-Key": f'"{form["idempotency_key"]}"'}
    replayed = app.test_client().post(f"/updates/{job_id}/retry", headers=api(OPS_KEY, **key))
    assert replayed.status_code == 202 and replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_json()["state"] == "queued"  # the button's reply, kept under the key
    assert len(retry_entries(app, job_id)) == 1
    assert gateway_of(app).events.jobs.get_job(job_id)["state"] == "failed"  # failed again, not queued a second time


def test_a_retry_without_the_csrf_token_or_the_scope_changes_nothing(app):
    job_id = failed_job(app)
    ops = console_of(app, OPS_KEY)
    form = retry_form(timeline(ops), job_id)
    refused = ops.post(f"/console/updates/{job_id}/retry", data={**form, "csrf_token": "forged"})
    assert refused.status_code == 403
    viewer = console_of(app, VIEWER_KEY)
    html = timeline(viewer)
    assert 'class="job-state">failed<' in job_item(html, job_id)
    assert f"/console/updates/{job_id}/retry" not in html
    reply = viewer.post(f"/console/updates/{job_id}/retry", data={**form, "csrf_token": csrf_of(html)})
    assert reply.status_code == 303
    assert "lacks the scope orders:write" in viewer.get(reply.headers["Location"]).get_data(as_text=True)
    assert retry_entries(app, job_id) == []
    assert gateway_of(app).events.jobs.get_job(job_id)["state"] == "failed"


def test_a_caller_of_another_connection_neither_sees_nor_retries_the_job(app):
    job_id = failed_job(app)
    other = console_of(app, OTHER_KEY)
    html = timeline(other)
    assert job_id not in html and 'id="nothing-found"' in html
    form = {"csrf_token": csrf_of(html), "idempotency_key": "other-key-1", "next": "/console"}
    reply = other.post(f"/console/updates/{job_id}/retry", data=form)
    assert f"No update job {job_id!r}." in other.get(reply.headers["Location"]).get_data(as_text=True) \
        .replace("&#39;", "'")
    assert retry_entries(app, job_id) == []
    assert OURS not in other.get("/console").get_data(as_text=True)


def test_the_overview_counts_each_connections_queued_jobs(app):
    queue_update(app, "SO-1001")
    queue_update(app, "SO-1002")
    ops = console_of(app, OPS_KEY).get("/console").get_data(as_text=True)
    card = re.search(rf'<article class="card" id="connection-{OURS}">(.*?)</article>', ops, re.S).group(1)
    assert re.search(r'class="queued-jobs"><strong>2</strong> update\s+jobs queued, the oldest accepted \d+ s', card)
    spare = re.search(rf'<article class="card" id="connection-{OTHER}">(.*?)</article>', ops, re.S).group(1)
    assert "queued-jobs" not in spare


def test_a_job_store_that_cannot_be_read_leaves_the_pages_saying_so(app, monkeypatch):
    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("redis://:pw@10.0.0.9 refused")

    ops = console_of(app, OPS_KEY)
    jobs = gateway_of(app).events.jobs
    monkeypatch.setattr(jobs, "list_jobs", unreachable)
    monkeypatch.setattr(jobs, "active_summary", unreachable)
    for page in (ops.get("/console"), ops.get(f"/console/orders?order_id={REFUSING_ORDER}")):
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "Could not be read just now: " in text and "the update jobs" in text and "10.0.0.9" not in text


# -- metrics ---------------------------------------------------------------------------------------------------------

def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(app) -> str:
    reply = app.test_client().get("/metrics")
    assert reply.status_code == 200
    return reply.get_data(as_text=True)


def test_metrics_show_each_connections_active_jobs_and_the_drains_counters(app):
    empty = scrape(app)
    assert value(empty, "order_gateway_jobs_queued", connection=OURS) == 0
    assert value(empty, "order_gateway_job_oldest_queued_age_seconds", connection=OURS) == 0
    started = time.time()
    queue_update(app, "SO-1001")
    queue_update(app, REFUSING_ORDER)
    text = scrape(app)
    assert value(text, "order_gateway_jobs_queued", connection=OURS) == 2
    assert value(text, "order_gateway_jobs_queued", connection=OTHER) == 0
    age = value(text, "order_gateway_job_oldest_queued_age_seconds", connection=OURS)
    assert 0 < age <= time.time() - started
    assert value(text, "order_gateway_job_oldest_queued_age_seconds", connection=OTHER) == 0

    drain(app)
    after = scrape(app)
    assert value(after, "order_gateway_jobs_queued", connection=OURS) == 0
    assert value(after, "order_gateway_job_oldest_queued_age_seconds", connection=OURS) == 0
    for name, labels in [("order_gateway_job_attempts_total", {"outcome": "done"}),
                         ("order_gateway_job_attempts_total", {"outcome": "refused"}),
                         ("order_gateway_job_outcomes_total", {"state": "done"}),
                         ("order_gateway_job_outcomes_total", {"state": "failed"})]:
        assert (value(after, name, connection=OURS, **labels) or 0) == (value(text, name, connection=OURS,
                                                                              **labels) or 0) + 1, (name, labels)


def test_a_job_store_that_cannot_be_read_leaves_its_gauges_out_and_is_counted(app, monkeypatch, caplog):
    before = scrape(app)

    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to redis://:hunter2@10.0.0.7:6379/0.")

    monkeypatch.setattr(gateway_of(app).events.jobs, "active_summary", unreachable)
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        text = scrape(app)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "order_gateway_jobs_queued" not in names and "order_gateway_job_oldest_queued_age_seconds" not in names
    assert "order_gateway_breaker_state" in names
    for figure in ("jobs_queued", "job_oldest_queued_age_seconds"):
        assert value(text, "order_gateway_metrics_unreadable_total", figure=figure) == \
            (value(before, "order_gateway_metrics_unreadable_total", figure=figure) or 0) + 1
    logged = [record.getMessage() for record in caplog.records if record.name == "gateway.metrics"]
    assert len(logged) == 1 and "the job store could not be read (ConnectionError)" in logged[0]
    assert "hunter2" not in text + logged[0] and "10.0.0.7" not in text + logged[0]


# -- readiness -------------------------------------------------------------------------------------------------------

def stored_job(app, job_id: str, accepted_at: float) -> None:
    gateway_of(app).events.jobs.add_jobs([NewJob(
        id=job_id, lane=OURS, connection=OURS, backend="ongoing", operation="UpdateOrder", order_ids=("SO-1001",),
        items=({"order_id": "SO-1001", "document": {"status": "picked"}},), idempotent=True)], now=accepted_at)


def readiness(app) -> tuple[int, dict]:
    Heartbeat(app.config["GATEWAY_SETTINGS"]).beat()
    reply = app.test_client().get("/readyz")
    return reply.status_code, reply.get_json()


def test_readiness_passes_without_jobs_and_while_the_oldest_is_young(app):
    status, health = readiness(app)
    assert (status, health["status"]) == (200, "pass"), health
    assert health["checks"]["updateJobs:oldestQueuedAge"][0]["status"] == "pass"
    stored_job(app, "upd_young", time.time() - 5)
    status, health = readiness(app)
    assert (status, health["status"]) == (200, "pass"), health
    entry, = health["checks"]["updateJobs:oldestQueuedAge"]
    assert (entry["componentId"], entry["status"], entry["observedUnit"]) == (OURS, "pass", "s")
    assert 5 <= entry["observedValue"] < 60


def test_readiness_warns_while_a_job_waits_longer_than_warn_queued_age_seconds(app):
    stored_job(app, "upd_old", time.time() - 600)
    status, health = readiness(app)
    assert (status, health["status"]) == (200, "warn"), health
    entry, = health["checks"]["updateJobs:oldestQueuedAge"]
    assert (entry["componentId"], entry["status"], entry["componentType"]) == (OURS, "warn", "component")
    assert entry["observedValue"] >= 600
    assert f"connection {OURS}" in entry["output"] and "accepted 600 s ago" in entry["output"]
    assert "warn_queued_age_seconds (60 s)" in entry["output"]
    assert all(entries[0]["status"] == "pass" for name, entries in health["checks"].items()
               if name != "updateJobs:oldestQueuedAge")


def test_a_job_store_that_cannot_be_read_fails_readiness_as_other_stores_do(app, monkeypatch):
    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("redis://:pw@10.0.0.1 refused")

    monkeypatch.setattr(gateway_of(app).events.jobs, "active_summary", unreachable)
    status, health = readiness(app)
    assert (status, health["status"]) == (503, "fail")
    assert health["checks"]["updateJobs:oldestQueuedAge"][0]["output"] == "unreachable (ConnectionError)"
