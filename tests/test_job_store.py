"""The update job store contract: SQLite and Redis stores behave alike, from one thread, many threads and two
instances on the same data."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.jobs import DEAD, DONE, FAILED, QUEUED, SENDING, JobStore, JobStoreError, NewJob, SqliteJobStore
from gateway.jobs.base import JOB_FIELDS, MAX_KEPT_ATTEMPTS
from gateway.jobs.redis_store import RedisJobStore
from tests.redis_server import redis_url_fixture
from tests.store_locations import StoreLocation, opened_stores, store_location

# Fractions of a second on purpose: both stores must give back exactly the float they were given.
T0 = 1_714_557_600.123456
LANE, OTHER_LANE = "ongoing-demo/DEMO", "ongoing-demo/OTHER"
CONNECTION, OTHER_CONNECTION = "ongoing-demo", "s4t-demo"
LEASE = 30.25


@pytest.fixture(scope="module")
def store_redis_url(tmp_path_factory):
    """One redis-server for this module's tests; each test gets its own key prefix."""
    yield from redis_url_fixture(tmp_path_factory)


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path) -> StoreLocation:
    """A fresh place for a store: a file in a folder that does not exist yet, or an unused Redis prefix."""
    return store_location(request, tmp_path, "jobs.sqlite3", (SqliteJobStore, RedisJobStore))


@pytest.fixture
def open_store(location):
    """Opens store instances on the test's data and closes them all afterwards."""
    yield from opened_stores(location)


@pytest.fixture
def store(open_store) -> JobStore:
    """A store on fresh data."""
    return open_store()


def new_job(job_id: str, *, lane: str = LANE, connection: str = CONNECTION, order_ids: tuple[str, ...] = ("1001",),
            request_id: str = "req-1", dedupe_key: str | None = None, kind: str = "single",
            items: tuple | None = None) -> NewJob:
    """A job as the REST layer would hand it over."""
    return NewJob(
        id=job_id, lane=lane, connection=connection, backend="ongoing", operation="update_order",
        order_ids=order_ids,
        items=items if items is not None else tuple(
            {"order_id": order_id, "document": {"note": "åäö ✓", "weight": 1.25, "lines": [1, 2]}}
            for order_id in order_ids),
        idempotent=True, kind=kind, caller="shop", request_id=request_id, dedupe_key=dedupe_key,
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})


def ids(jobs: list[dict]) -> list[str]:
    """The ids of the jobs, in order."""
    return [job["id"] for job in jobs]


def add(store: JobStore, *job_ids: str, now: float = T0, **fields) -> list[dict]:
    """Add one job per id (in one call), with the same fields."""
    return store.add_jobs([new_job(job_id, **fields) for job_id in job_ids], now=now)


def finish(store: JobStore, job_id: str, state: str = DONE, *, now: float = T0 + 10, result: dict | None = None,
           outcome: str = "done") -> None:
    """Claim the job and release it in a final state."""
    assert store.claim(job_id, "worker-1", lease_seconds=LEASE, now=now - 1) is not None
    assert store.release(job_id, "worker-1", state=state, attempt={"at": now, "outcome": outcome},
                         result=result or {"status": 200, "body": {"ok": True}}, now=now)


# --- adding and reading -------------------------------------------------------------------------------------------

def test_added_jobs_are_queued_in_the_order_given_and_read_back_whole(store):
    bulk = [new_job("job-1", order_ids=("1001", "1002"), kind="bulk"), new_job("job-2"), new_job("job-3")]

    added = store.add_jobs(bulk, now=T0)

    assert ids(added) == ["job-1", "job-2", "job-3"]
    assert added[0]["seq"] < added[1]["seq"] < added[2]["seq"]
    assert set(added[0]) == set(JOB_FIELDS)
    assert {key: value for key, value in added[0].items() if key != "seq"} == {
        "id": "job-1", "lane": LANE, "connection": CONNECTION, "backend": "ongoing", "operation": "update_order",
        "order_ids": ["1001", "1002"], "items": [dict(item) for item in bulk[0].items], "idempotent": True,
        "kind": "bulk", "caller": "shop", "request_id": "req-1", "trace_context": dict(bulk[0].trace_context),
        "state": QUEUED, "accepted_at": T0, "updated_at": T0, "next_attempt_at": None, "lease_owner": None,
        "lease_until": None, "exchange_id": None, "attempts": [], "attempt_count": 0, "result": None,
        "finished_at": None, "finishes": 0, "announced": 0,
    }
    assert [store.get_job(job_id) for job_id in ("job-1", "job-2", "job-3")] == added
    assert store.get_job("job-unknown") is None
    assert store.add_jobs([], now=T0) == []


def test_a_known_dedupe_key_hands_back_the_job_stored_under_it(store):
    first = add(store, "job-1", dedupe_key="shop:key-1:fp:0")[0]

    again = store.add_jobs([new_job("job-2", dedupe_key="shop:key-1:fp:0"),
                            new_job("job-3", dedupe_key="shop:key-1:fp:1"),
                            new_job("job-4", dedupe_key="shop:key-1:fp:1"),
                            new_job("job-5")], now=T0 + 5)

    assert again[0] == first
    assert ids(again) == ["job-1", "job-3", "job-3", "job-5"]
    assert again[2] == again[1]
    assert store.get_job("job-2") is None and store.get_job("job-4") is None
    assert ids(store.list_jobs()) == ["job-5", "job-3", "job-1"]
    # The job stored under the key is handed back as it is now, not as it was accepted.
    finish(store, "job-1")
    assert add(store, "job-6", dedupe_key="shop:key-1:fp:0")[0] == store.get_job("job-1")


@pytest.mark.parametrize(("job", "problem"), [
    (new_job(""), "'id'"),
    (new_job("job-9", lane=""), "'lane'"),
    (new_job("job-9", connection=""), "'connection'"),
    (new_job("job-9", order_ids=()), "order id"),
    (new_job("job-9", kind="batch"), "kind"),
    (new_job("job-9", items=({"order_id": "1001", "document": {1, 2}},)), "JSON-able"),
    (new_job("job-9", items=({"order_id": "1001", "document": {"weight": float("nan")}},)), "JSON-able"),
])
def test_a_job_the_store_cannot_keep_is_refused_and_nothing_of_its_batch_is_stored(store, job, problem):
    with pytest.raises(JobStoreError, match=problem):
        store.add_jobs([new_job("job-1", dedupe_key="k"), job], now=T0)

    assert store.list_jobs() == []
    assert store.active_lanes() == []
    assert ids(add(store, "job-2", dedupe_key="k")) == ["job-2"]


def test_a_job_id_that_is_taken_is_refused_and_nothing_of_its_batch_is_stored(store):
    add(store, "job-1")

    with pytest.raises(JobStoreError, match="already stored"):
        store.add_jobs([new_job("job-2", dedupe_key="k"), new_job("job-1", lane=OTHER_LANE)], now=T0)
    with pytest.raises(JobStoreError, match="already stored"):
        store.add_jobs([new_job("job-3"), new_job("job-3")], now=T0)

    assert ids(store.list_jobs()) == ["job-1"]
    assert store.active_lanes() == [LANE]
    assert ids(add(store, "job-4", dedupe_key="k")) == ["job-4"]


# --- listing ------------------------------------------------------------------------------------------------------

@pytest.fixture
def listed(store) -> JobStore:
    """Six jobs of two connections, several orders and requests, in four states."""
    add(store, "job-1", order_ids=("1001",), request_id="req-a")
    add(store, "job-2", "job-3", order_ids=("1002", "1001"), request_id="req-b", kind="bulk")
    add(store, "job-4", lane=OTHER_LANE, connection=OTHER_CONNECTION, order_ids=("1001",), request_id="req-c")
    add(store, "job-5", lane=OTHER_LANE, connection=OTHER_CONNECTION, order_ids=("2001",), request_id="req-c")
    add(store, "job-6", order_ids=("1003",), request_id="req-d")
    finish(store, "job-1")                                        # done; job-2 now heads LANE
    store.claim("job-2", "worker-1", lease_seconds=LEASE, now=T0)  # sending
    finish(store, "job-4", FAILED, outcome="refused", result={"status": 422, "body": {}})
    return store


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["job-6", "job-5", "job-4", "job-3", "job-2", "job-1"]),
    ({"connection": CONNECTION}, ["job-6", "job-3", "job-2", "job-1"]),
    ({"connections": [OTHER_CONNECTION]}, ["job-5", "job-4"]),
    ({"connections": {CONNECTION, OTHER_CONNECTION}}, ["job-6", "job-5", "job-4", "job-3", "job-2", "job-1"]),
    ({"connections": ["unknown"]}, []),
    ({"connections": []}, []),
    ({"connections": (), "state": QUEUED}, []),
    ({"order_id": "1001"}, ["job-4", "job-3", "job-2", "job-1"]),
    ({"order_id": "1002"}, ["job-3", "job-2"]),
    ({"order_id": "9999"}, []),
    ({"state": QUEUED}, ["job-6", "job-5", "job-3"]),
    ({"state": SENDING}, ["job-2"]),
    ({"state": DONE}, ["job-1"]),
    ({"state": FAILED}, ["job-4"]),
    ({"state": DEAD}, []),
    ({"request_id": "req-b"}, ["job-3", "job-2"]),
    ({"request_id": "req-c", "state": QUEUED}, ["job-5"]),
    ({"order_id": "1001", "connection": CONNECTION}, ["job-3", "job-2", "job-1"]),
    ({"order_id": "1001", "connections": [OTHER_CONNECTION]}, ["job-4"]),
    ({"order_id": "1001", "state": QUEUED}, ["job-3"]),
    ({"connection": CONNECTION, "state": QUEUED}, ["job-6", "job-3"]),
    ({"connection": CONNECTION, "connections": [OTHER_CONNECTION]}, []),
    ({"connections": [CONNECTION, OTHER_CONNECTION], "state": DONE}, ["job-1"]),
    ({"connections": [CONNECTION, OTHER_CONNECTION], "limit": 3}, ["job-6", "job-5", "job-4"]),
    ({"limit": 2}, ["job-6", "job-5"]),
    ({"limit": 0}, []),
    ({"before": "job-4"}, ["job-3", "job-2", "job-1"]),
    ({"before": "job-4", "limit": 2}, ["job-3", "job-2"]),
    ({"before": "job-6", "connections": [OTHER_CONNECTION]}, []),
    ({"before": "job-5", "connections": [OTHER_CONNECTION]}, ["job-4"]),
    ({"before": "job-5", "state": QUEUED}, ["job-3"]),
    ({"before": "job-unknown"}, []),
    ({"before": "job-1"}, []),
])
def test_jobs_are_listed_newest_first_matching_every_filter(listed, filters, expected):
    found = listed.list_jobs(**filters)

    assert ids(found) == expected
    assert found == [listed.get_job(job_id) for job_id in expected]


def test_pages_of_the_list_follow_each_other_through_the_before_cursor(store):
    for number in range(1, 8):
        add(store, f"job-{number}", connection=CONNECTION if number % 2 else OTHER_CONNECTION)

    pages, before = [], None
    while page := store.list_jobs(connections=[CONNECTION], limit=2, before=before):
        pages.append(ids(page))
        before = page[-1]["id"]

    assert pages == [["job-7", "job-5"], ["job-3", "job-1"]]


def test_an_unknown_state_is_refused_in_a_listing(store):
    with pytest.raises(JobStoreError, match="unknown"):
        store.list_jobs(state="lost")


# --- lanes and claims ---------------------------------------------------------------------------------------------

def test_the_lanes_with_active_jobs_are_listed_sorted_and_a_lane_s_head_is_its_oldest_active_job(store):
    assert store.active_lanes() == [] and store.lane_head(LANE) is None
    add(store, "job-1", "job-2", lane=OTHER_LANE)
    add(store, "job-3", "job-4")

    assert store.active_lanes() == [LANE, OTHER_LANE]
    assert store.lane_head(LANE) == store.get_job("job-3")
    assert store.lane_head(OTHER_LANE) == store.get_job("job-1")

    finish(store, "job-3")
    assert store.lane_head(LANE) == store.get_job("job-4")
    finish(store, "job-4", DEAD, outcome="expired")
    assert store.lane_head(LANE) is None
    assert store.active_lanes() == [OTHER_LANE]
    # A head waiting for its next attempt is still the head.
    assert store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    store.release("job-1", "worker-1", state=QUEUED, next_attempt_at=T0 + 60.5, now=T0)
    assert store.lane_head(OTHER_LANE)["id"] == "job-1"


def test_a_claim_takes_only_the_queued_head_of_a_lane_and_hands_back_the_job_as_it_was(store):
    add(store, "job-1", "job-2")
    queued = store.get_job("job-1")

    assert store.claim("job-2", "worker-1", lease_seconds=LEASE, now=T0 + 1) is None
    assert store.claim("job-unknown", "worker-1", lease_seconds=LEASE, now=T0 + 1) is None
    assert store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0 + 1) == queued

    claimed = store.get_job("job-1")
    assert (claimed["state"], claimed["lease_owner"], claimed["lease_until"], claimed["exchange_id"],
            claimed["updated_at"]) == (SENDING, "worker-1", T0 + 1 + LEASE, None, T0 + 1)
    assert store.get_job("job-2")["state"] == QUEUED
    assert store.claim("job-2", "worker-1", lease_seconds=LEASE, now=T0 + 1) is None
    assert store.lane_head(LANE) == claimed


def test_a_live_lease_keeps_others_out_and_a_run_out_one_hands_the_crashed_send_to_the_next_claim(store):
    add(store, "job-1")
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    assert store.note_exchange("job-1", "worker-1", "exc-1", now=T0 + 1)
    crashed = store.get_job("job-1")

    assert store.claim("job-1", "worker-2", lease_seconds=LEASE, now=T0 + LEASE - 0.5) is None
    assert store.get_job("job-1") == crashed

    before = store.claim("job-1", "worker-2", lease_seconds=LEASE, now=T0 + LEASE + 0.5)
    assert before == crashed
    assert (before["state"], before["lease_owner"], before["exchange_id"]) == (SENDING, "worker-1", "exc-1")
    taken = store.get_job("job-1")
    assert (taken["lease_owner"], taken["lease_until"], taken["exchange_id"]) == (
        "worker-2", T0 + LEASE + 0.5 + LEASE, None)
    # Its owner may claim it again while its lease runs.
    assert store.claim("job-1", "worker-2", lease_seconds=LEASE, now=T0 + LEASE + 1)["lease_owner"] == "worker-2"
    assert store.get_job("job-1")["lease_until"] == T0 + LEASE + 1 + LEASE


def test_only_the_owner_of_a_sending_job_notes_its_exchange(store):
    add(store, "job-1", "job-2")
    assert not store.note_exchange("job-1", "worker-1", "exc-1", now=T0)
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)

    assert not store.note_exchange("job-1", "worker-2", "exc-2", now=T0 + 1)
    assert not store.note_exchange("job-unknown", "worker-1", "exc-2", now=T0 + 1)
    assert store.get_job("job-1")["exchange_id"] is None

    assert store.note_exchange("job-1", "worker-1", "exc-1", now=T0 + 1.5)
    noted = store.get_job("job-1")
    assert (noted["exchange_id"], noted["updated_at"], noted["state"]) == ("exc-1", T0 + 1.5, SENDING)


def test_a_release_to_queued_keeps_the_job_at_the_head_with_its_attempt_and_next_attempt_time(store):
    add(store, "job-1", "job-2")
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    store.note_exchange("job-1", "worker-1", "exc-1", now=T0)
    attempt = {"at": T0 + 2.5, "outcome": "unavailable", "status": 503, "error": "busy", "exchange_id": "exc-1",
               "retry_after": 12.75}

    assert store.release("job-1", "worker-1", state=QUEUED, attempt=attempt, next_attempt_at=T0 + 14.25,
                         now=T0 + 2.5)

    released = store.get_job("job-1")
    assert {key: released[key] for key in ("state", "lease_owner", "lease_until", "exchange_id", "next_attempt_at",
                                           "attempts", "attempt_count", "result", "finished_at", "finishes",
                                           "updated_at")} == {
        "state": QUEUED, "lease_owner": None, "lease_until": None, "exchange_id": None,
        "next_attempt_at": T0 + 14.25, "attempts": [attempt], "attempt_count": 1, "result": None,
        "finished_at": None, "finishes": 0, "updated_at": T0 + 2.5}
    assert store.lane_head(LANE) == released
    assert store.unannounced(finished_by=T0 + 100) == []
    # Released without a next attempt time (and without an attempt): due now, history unchanged.
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0 + 15)
    assert store.release("job-1", "worker-1", state=QUEUED, now=T0 + 16)
    again = store.get_job("job-1")
    assert (again["next_attempt_at"], again["attempt_count"], again["attempts"]) == (None, 1, [attempt])


@pytest.mark.parametrize("state", [DONE, FAILED, DEAD])
def test_a_final_release_sets_the_result_and_finish_and_frees_the_lane(store, state):
    add(store, "job-1", "job-2")
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    result = {"status": 200 if state == DONE else 502, "body": {"order": {"id": "1001", "weight": 0.1}}}

    assert store.release("job-1", "worker-1", state=state, attempt={"at": T0 + 3.5, "outcome": "done"},
                         result=result, next_attempt_at=T0 + 99, now=T0 + 3.5)

    final = store.get_job("job-1")
    assert {key: final[key] for key in ("state", "result", "finished_at", "finishes", "announced",
                                        "next_attempt_at", "lease_owner", "attempt_count")} == {
        "state": state, "result": result, "finished_at": T0 + 3.5, "finishes": 1, "announced": 0,
        "next_attempt_at": None, "lease_owner": None, "attempt_count": 1}
    assert store.lane_head(LANE)["id"] == "job-2"
    assert store.claim("job-2", "worker-2", lease_seconds=LEASE, now=T0 + 4) is not None
    assert store.claim("job-1", "worker-2", lease_seconds=LEASE, now=T0 + 4) is None


def test_a_release_by_anyone_but_the_owner_of_a_sending_job_changes_nothing(store):
    add(store, "job-1", "job-2")
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    sending, queued = store.get_job("job-1"), store.get_job("job-2")

    assert not store.release("job-1", "worker-2", state=DONE, attempt={"at": T0, "outcome": "done"},
                             result={"status": 200, "body": {}}, now=T0 + 1)
    assert not store.release("job-2", "worker-1", state=DONE, result={"status": 200, "body": {}}, now=T0 + 1)
    assert not store.release("job-unknown", "worker-1", state=DONE, now=T0 + 1)

    assert store.get_job("job-1") == sending
    assert store.get_job("job-2") == queued
    assert store.unannounced(finished_by=T0 + 100) == []


def test_a_release_to_an_unknown_state_or_with_an_unknown_outcome_is_refused(store):
    add(store, "job-1")
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    sending = store.get_job("job-1")

    with pytest.raises(JobStoreError):
        store.release("job-1", "worker-1", state=SENDING, now=T0)
    with pytest.raises(JobStoreError):
        store.release("job-1", "worker-1", state="lost", now=T0)
    with pytest.raises(JobStoreError, match="outcome"):
        store.release("job-1", "worker-1", state=QUEUED, attempt={"at": T0, "outcome": "shrug"}, now=T0)

    assert store.get_job("job-1") == sending


def test_a_job_keeps_its_newest_attempts_and_counts_them_all(store):
    add(store, "job-1")
    for number in range(MAX_KEPT_ATTEMPTS + 3):
        store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0 + number)
        store.release("job-1", "worker-1", state=QUEUED, now=T0 + number + 0.5,
                      attempt={"at": T0 + number + 0.5, "outcome": "unavailable", "error": f"try {number}\n"})

    job = store.get_job("job-1")
    assert job["attempt_count"] == MAX_KEPT_ATTEMPTS + 3
    assert [attempt["error"] for attempt in job["attempts"]] == [
        f"try {number}\n" for number in range(3, MAX_KEPT_ATTEMPTS + 3)]
    assert job["attempts"][-1]["at"] == T0 + MAX_KEPT_ATTEMPTS + 2.5


# --- retry --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [FAILED, DEAD])
def test_a_retried_job_goes_to_the_back_of_its_lane_queued_with_a_retry_entry(store, state):
    add(store, "job-1", "job-2")
    add(store, "job-3", lane=OTHER_LANE)
    finish(store, "job-1", state, outcome="refused", result={"status": 422, "body": {"detail": "no"}}, now=T0 + 5)

    job, retried = store.retry("job-1", requested_by="ops@example.com", now=T0 + 7.5)

    assert retried
    assert job == store.get_job("job-1")
    assert job["seq"] > max(store.get_job(job_id)["seq"] for job_id in ("job-2", "job-3"))
    assert {key: job[key] for key in ("state", "result", "finished_at", "next_attempt_at", "attempt_count",
                                      "finishes", "updated_at", "accepted_at")} == {
        "state": QUEUED, "result": None, "finished_at": None, "next_attempt_at": None, "attempt_count": 2,
        "finishes": 1, "updated_at": T0 + 7.5, "accepted_at": T0}
    assert job["attempts"][-1] == {"at": T0 + 7.5, "outcome": "retry", "requested_by": "ops@example.com"}
    assert store.lane_head(LANE)["id"] == "job-2"
    assert ids(store.list_jobs()) == ["job-1", "job-3", "job-2"]
    assert ids(store.list_jobs(order_id="1001", state=QUEUED)) == ["job-1", "job-3", "job-2"]
    assert ids(store.list_jobs(before="job-1")) == ["job-3", "job-2"]
    assert ids(store.list_jobs(connection=CONNECTION, before="job-3")) == ["job-2"]
    # Behind the job that was queued before it, and ahead of a job added after it.
    add(store, "job-4")
    finish(store, "job-2", now=T0 + 8)
    assert store.lane_head(LANE)["id"] == "job-1"
    assert store.active_lanes() == [LANE, OTHER_LANE]


def test_a_lane_emptied_by_a_final_job_is_active_again_after_its_retry(store):
    add(store, "job-1")
    finish(store, "job-1", DEAD, outcome="expired")
    assert store.active_lanes() == []
    assert store.active_summary() == {}

    store.retry("job-1", now=T0 + 20)

    assert store.active_lanes() == [LANE]
    assert store.lane_head(LANE)["id"] == "job-1"
    assert store.active_summary() == {CONNECTION: (1, T0)}
    assert store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0 + 21) is not None


def test_a_retried_job_gets_a_sequence_never_used_before_even_by_a_purged_job(store):
    add(store, "job-1")
    purged = add(store, "job-2", lane=OTHER_LANE)[0]
    finish(store, "job-1", FAILED, outcome="refused", now=T0 + 5)
    finish(store, "job-2", now=T0 + 4)
    assert store.purge_finished(finished_by=T0 + 4, limit=10) == 1

    retried, _ = store.retry("job-1", now=T0 + 8)
    later = add(store, "job-3")[0]

    assert purged["seq"] < retried["seq"] < later["seq"]


@pytest.mark.parametrize("state", [QUEUED, SENDING, DONE])
def test_a_job_that_is_not_failed_or_dead_is_not_retried(store, state):
    add(store, "job-1")
    if state == SENDING:
        store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0)
    elif state == DONE:
        finish(store, "job-1")
    as_it_was = store.get_job("job-1")

    assert store.retry("job-1", requested_by="ops", now=T0 + 30) == (as_it_was, False)
    assert store.get_job("job-1") == as_it_was
    assert store.retry("job-unknown", now=T0 + 30) is None


# --- announcements ------------------------------------------------------------------------------------------------

def test_final_jobs_are_due_for_announcement_until_marked_and_again_after_a_retry_and_a_new_finish(store):
    add(store, "job-1", "job-2", "job-3")
    add(store, "job-4", lane=OTHER_LANE)
    finish(store, "job-1", now=T0 + 10)
    finish(store, "job-4", FAILED, outcome="refused", now=T0 + 5)
    finish(store, "job-2", DEAD, outcome="expired", now=T0 + 20)

    assert ids(store.unannounced(finished_by=T0 + 20)) == ["job-4", "job-1", "job-2"]
    assert ids(store.unannounced(finished_by=T0 + 19.5)) == ["job-4", "job-1"]
    assert ids(store.unannounced(finished_by=T0 + 20, limit=1)) == ["job-4"]
    assert store.unannounced(finished_by=T0 + 20, limit=0) == []

    store.mark_announced("job-4", 1)
    store.mark_announced("job-unknown", 1)
    assert ids(store.unannounced(finished_by=T0 + 20)) == ["job-1", "job-2"]
    assert store.get_job("job-4")["announced"] == 1

    store.retry("job-4", now=T0 + 30)
    assert ids(store.unannounced(finished_by=T0 + 100)) == ["job-1", "job-2"]
    finish(store, "job-4", now=T0 + 40)
    assert ids(store.unannounced(finished_by=T0 + 100)) == ["job-1", "job-2", "job-4"]
    assert store.get_job("job-4")["finishes"] == 2
    # A late mark of the earlier finish does not cover the later one.
    store.mark_announced("job-4", 1)
    assert store.get_job("job-4")["announced"] == 1
    assert ids(store.unannounced(finished_by=T0 + 100)) == ["job-1", "job-2", "job-4"]
    store.mark_announced("job-4", 2)
    assert ids(store.unannounced(finished_by=T0 + 100)) == ["job-1", "job-2"]


def test_a_job_retried_before_its_finish_was_announced_is_no_longer_due(store):
    add(store, "job-1")
    add(store, "job-2", lane=OTHER_LANE)
    finish(store, "job-1", FAILED, outcome="refused", now=T0 + 5)
    finish(store, "job-2", now=T0 + 6)

    store.retry("job-1", now=T0 + 7)

    assert ids(store.unannounced(finished_by=T0 + 100, limit=1)) == ["job-2"]
    assert (store.get_job("job-1")["finishes"], store.get_job("job-1")["announced"]) == (1, 0)


# --- summary and retention ----------------------------------------------------------------------------------------

def test_the_active_summary_counts_active_jobs_per_connection_with_the_oldest_acceptance(store):
    add(store, "job-1", now=T0 + 1.5)
    add(store, "job-2", "job-3", now=T0 + 2.5)
    add(store, "job-4", "job-5", lane=OTHER_LANE, connection=OTHER_CONNECTION, now=T0 + 3.5)
    store.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0 + 4)

    assert store.active_summary() == {CONNECTION: (3, T0 + 1.5), OTHER_CONNECTION: (2, T0 + 3.5)}
    assert store.active_summary(limit=2) == {CONNECTION: (2, T0 + 1.5), OTHER_CONNECTION: (2, T0 + 3.5)}

    store.release("job-1", "worker-1", state=DONE, result={"status": 200, "body": {}}, now=T0 + 5)
    finish(store, "job-4")
    finish(store, "job-5")

    assert store.active_summary() == {CONNECTION: (2, T0 + 2.5)}


def test_a_purge_deletes_the_oldest_final_jobs_with_their_indexes_and_dedupe_keys(store):
    add(store, "job-1", dedupe_key="d-1", order_ids=("1001",))
    add(store, "job-2", dedupe_key="d-2", order_ids=("1001", "1002"))
    add(store, "job-3", dedupe_key="d-3", order_ids=("1001",))
    add(store, "job-4", dedupe_key="d-4", order_ids=("1001",), lane=OTHER_LANE)
    finish(store, "job-1", now=T0 + 30)
    finish(store, "job-2", FAILED, outcome="refused", now=T0 + 10)
    finish(store, "job-3", DEAD, outcome="expired", now=T0 + 20)
    # job-4 stays active, however old.

    assert store.purge_finished(finished_by=T0 + 30, limit=0) == 0
    assert store.purge_finished(finished_by=T0 + 30, limit=2) == 2
    assert ids(store.list_jobs()) == ["job-4", "job-1"]
    assert store.get_job("job-2") is None and store.get_job("job-3") is None
    assert ids(store.list_jobs(order_id="1001")) == ["job-4", "job-1"]
    assert store.list_jobs(order_id="1002") == []
    assert ids(store.list_jobs(state=DONE)) == ["job-1"]
    assert store.list_jobs(state=FAILED) == [] and store.list_jobs(request_id="req-1", state=DEAD) == []
    assert ids(store.unannounced(finished_by=T0 + 100)) == ["job-1"]

    assert store.purge_finished(finished_by=T0 + 29.5, limit=10) == 0
    assert store.purge_finished(finished_by=T0 + 30, limit=10) == 1
    assert store.purge_finished(finished_by=T0 + 1000, limit=10) == 0
    assert ids(store.list_jobs()) == ["job-4"]
    assert store.unannounced(finished_by=T0 + 100) == []

    # The purged jobs' dedupe keys are free again; the active one's is not.
    assert ids(add(store, "job-5", dedupe_key="d-2")) == ["job-5"]
    assert ids(add(store, "job-6", dedupe_key="d-4")) == ["job-4"]


# --- several threads and instances --------------------------------------------------------------------------------

def test_of_many_threads_racing_to_claim_a_lane_s_head_exactly_one_wins(open_store):
    add(open_store(), "job-1", "job-2")
    stores = [open_store() for _ in range(2)]
    start = threading.Barrier(8)

    def claim(number: int) -> dict | None:
        start.wait()
        return stores[number % 2].claim("job-1", f"worker-{number}", lease_seconds=LEASE, now=T0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(claim, range(8)))

    winners = [number for number, claimed in enumerate(claims) if claimed is not None]
    assert len(winners) == 1
    assert stores[0].get_job("job-1")["lease_owner"] == f"worker-{winners[0]}"


def test_two_instances_on_the_same_data_see_each_other_s_jobs_and_claims(open_store):
    first, second = open_store(), open_store()
    add(first, "job-1", "job-2", dedupe_key=None)

    assert ids(second.list_jobs()) == ["job-2", "job-1"]
    assert second.claim("job-1", "worker-2", lease_seconds=LEASE, now=T0) is not None
    assert first.claim("job-1", "worker-1", lease_seconds=LEASE, now=T0 + 1) is None
    assert first.get_job("job-1")["lease_owner"] == "worker-2"
    assert second.release("job-1", "worker-2", state=DONE, result={"status": 200, "body": {}}, now=T0 + 2)
    assert first.lane_head(LANE)["id"] == "job-2"
    assert ids(first.unannounced(finished_by=T0 + 2)) == ["job-1"]
