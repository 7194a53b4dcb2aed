"""Update jobs end to end: PATCHes with `Prefer: respond-async` over real HTTP to a two-worker gunicorn gateway,
sent by the real event worker to the sandbox backends through outages, an open breaker, a worker killed mid-send,
a reply that never comes and a refusal; followed through GET /updates, the sandbox's call log and the demo
subscriber's inbox."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import running_stack, start_worker, stop, write_sandbox_config_copy

KEY = {"Authorization": "Bearer demo-caller-key-0000"}
ASYNC = {**KEY, "Prefer": "respond-async"}
S4T = "speed4trade-demo"
FINAL = ("done", "failed", "dead")
#: short waits everywhere, so that each fault takes seconds, not minutes
FAST_JOBS = {"backoff_base_seconds": 0.2, "backoff_max_seconds": 1}
FAST_EVENTS = {"resume_interval_seconds": 0.5, "backoff_base_seconds": 0.2, "backoff_max_seconds": 1}
FAST_ONGOING = {"breaker_reset_seconds": 1}


def with_settings(text: str, section: str, values: dict[str, Any]) -> str:
    """The TOML text with `values` set in the table `section` (replacing the keys it had), or in a new table at
    the end when it has none."""
    rendered = [f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"'
                for key, value in values.items()]
    lines = text.splitlines()
    header = f"[{section}]"
    if header not in lines:
        return "\n".join([*lines, "", header, *rendered, ""])
    start = lines.index(header) + 1
    end = next((index for index in range(start, len(lines)) if lines[index].startswith("[")), len(lines))
    kept = [line for line in lines[start:end] if line.split("=", 1)[0].strip() not in values]
    return "\n".join([*lines[:start], *rendered, *kept, *lines[end:]]) + "\n"


def stack_config(folder: Path, *, jobs: dict | None = None, ongoing: dict | None = None,
                 speed4trade: dict | None = None) -> str:
    """The sandbox configuration with its databases in `folder` and short waits: the jobs', the event worker's,
    the Ongoing breaker's; `jobs`, `ongoing` and `speed4trade` set more."""
    path = Path(write_sandbox_config_copy(folder))
    text = path.read_text()
    text = with_settings(text, "events", FAST_EVENTS)
    text = with_settings(text, "connections.ongoing-demo", {**FAST_ONGOING, **(ongoing or {})})
    if speed4trade:
        text = with_settings(text, f"connections.{S4T}", speed4trade)
    text = with_settings(text, "jobs", {**FAST_JOBS, **(jobs or {})})
    path.write_text(text)
    return str(path)


class Stack:
    """The running gateway, sandbox and worker, and what a test asks of them."""

    def __init__(self, gateway_url: str, sandbox_url: str, folder: Path, processes: dict) -> None:
        self.gateway_url, self.sandbox_url, self.folder, self.processes = gateway_url, sandbox_url, folder, processes

    def queue(self, order_id: str, change: dict, request_id: str) -> dict:
        """PATCH the order with Prefer: respond-async: the job of its 202."""
        reply = requests.patch(f"{self.gateway_url}/orders/{order_id}", json=change, timeout=10,
                               headers={**ASYNC, "X-Request-ID": request_id})
        assert reply.status_code == 202, reply.text
        assert reply.headers["Preference-Applied"] == "respond-async"
        job = reply.json()
        assert reply.headers["Location"] == f"/updates/{job['id']}"
        assert job["state"] == "queued" and job["request_id"] == request_id
        return job

    def job(self, job_id: str) -> dict:
        """GET /updates/<id>."""
        reply = requests.get(f"{self.gateway_url}/updates/{job_id}", headers=KEY, timeout=5)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def final(self, job_ids: list[str], seconds: float = 20.0) -> list[dict]:
        """The jobs, once every one is final."""
        def all_final() -> list[dict] | None:
            jobs = [self.job(job_id) for job_id in job_ids]
            return jobs if all(job["state"] in FINAL for job in jobs) else None

        return self.wait_for(all_final, seconds, f"jobs {job_ids} to end")

    def exchange(self, exchange_id: str) -> dict:
        """GET /exchanges/<id>, once the journal has it (the worker writes its journal in the background)."""
        def found() -> dict | None:
            reply = requests.get(f"{self.gateway_url}/exchanges/{exchange_id}", headers=KEY, timeout=5)
            return reply.json() if reply.status_code == 200 else None

        return self.wait_for(found, 5, f"exchange {exchange_id} in the journal")

    def calls(self, vendor: str) -> list[dict]:
        """The sandbox's log of the calls the vendor's service received."""
        return requests.get(f"{self.sandbox_url}/{vendor}/_calls", timeout=5).json()["calls"]

    def outage(self, vendor: str, seconds: float, mode: str = "unavailable") -> None:
        """Start an outage of the vendor's service (replacing any current one)."""
        reply = requests.post(f"{self.sandbox_url}/{vendor}/_outage", json={"seconds": seconds, "mode": mode},
                              timeout=5)
        assert reply.status_code == 200, reply.text

    def outage_over(self, vendor: str) -> bool:
        """Whether the vendor serves again."""
        return requests.get(f"{self.sandbox_url}/{vendor}/_outage", timeout=5).json()["outage"] is None

    def received(self) -> list[dict]:
        """What the demo subscriber received (signature checked)."""
        return requests.get(f"{self.sandbox_url}/subscriber/events", timeout=5).json()["received"]

    def wait_for(self, predicate: Callable[[], Any], seconds: float, what: str) -> Any:
        """The first true value of `predicate`, polled; past `seconds`, a failure showing the worker's log."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        worker_log = (self.folder / "worker.log").read_text(errors="replace")[-4000:]
        raise AssertionError(f"gave up waiting for {what} after {seconds} s; the worker's log ends with:\n"
                             f"{worker_log}")

    def replace_worker(self) -> None:
        """Kill the event worker as a crash would (SIGKILL) and start another."""
        stop(self.processes["worker"], signal.SIGKILL)
        self.processes["worker"] = start_worker(self.processes["env"], self.folder / "worker.log")


@pytest.fixture
def start_stack(tmp_path):
    """Start the stack with the configuration `stack_config` makes of the given settings."""
    with contextlib.ExitStack() as running:
        def start(**settings: dict) -> Stack:
            processes: dict = {}
            urls = running.enter_context(running_stack(stack_config(tmp_path, **settings), tmp_path, logs=True,
                                                       processes=processes))
            stack = Stack(*urls, tmp_path, processes)
            # the worker is up (its heartbeat is in) before any fault starts: one starting late would miss it
            stack.wait_for(lambda: requests.get(f"{stack.gateway_url}/readyz", timeout=5).json()["status"] == "pass",
                           20, "the event worker's first heartbeat")
            return stack
        yield start


def applied_calls(calls: list[dict], operation: str) -> list[dict]:
    """The calls of the operation that the vendor applied."""
    return [call for call in calls if call["operation"] == operation and call["outcome"] == "applied"]


def test_jobs_queued_in_an_outage_are_each_applied_once_in_the_order_accepted(start_stack):
    stack = start_stack()
    stack.outage("ongoing", 3)
    changes = [("SO-1001", "WB-1"), ("SO-1002", "WB-2"), ("SO-1001", "WB-3"), ("SO-1004", "WB-4"),
               ("SO-1001", "WB-5")]
    jobs = [stack.queue(order_id, {"waybill": waybill}, f"outage-{number}")
            for number, (order_id, waybill) in enumerate(changes)]

    finished = stack.final([job["id"] for job in jobs])
    assert [job["state"] for job in finished] == ["done"] * len(changes)
    for job in finished:
        assert [attempt["outcome"] for attempt in job["attempts"]].count("done") == 1, job["attempts"]
        assert job["result"]["status"] == 200
    assert any(attempt["outcome"] == "unavailable" for job in finished for attempt in job["attempts"])

    calls = stack.calls("ongoing")
    applied = applied_calls(calls, "UpdateOrder")
    assert [call["order_ids"] for call in applied] == [[order_id] for order_id, _ in changes]
    assert {call["outcome"] for call in calls} == {"unavailable", "applied"}
    first_applied = calls.index(applied[0])
    assert all(call["outcome"] == "unavailable" for call in calls[:first_applied])
    # each job's applied call is its own: the journal's request names its waybill
    for job, (_, waybill) in zip(finished, changes, strict=True):
        (done,) = [attempt for attempt in job["attempts"] if attempt["outcome"] == "done"]
        exchange = stack.exchange(done["exchange_id"])
        assert exchange["outcome"] == "ok" and waybill in exchange["request"]["body"]
    order = requests.get(f"{stack.sandbox_url}/ongoing/orders/1001", timeout=5).json()
    assert order["waybill"] == "WB-5"


def test_jobs_wait_out_a_breaker_the_outage_opened_and_all_end_done(start_stack):
    # the breaker stays open longer than the 1 to 2 s the worker's scheduled drains take to come round
    stack = start_stack(ongoing={"breaker_failures": 2, "breaker_reset_seconds": 4})
    orders = ["SO-1001", "SO-1002", "SO-1004", "SO-1005"]
    stack.outage("ongoing", 1)
    jobs = [stack.queue(order_id, {"waybill": f"BRK-{order_id}"}, f"breaker-{order_id}") for order_id in orders]
    # an outage of 4 s whose 503s each ask for a retry after 1 s (not after the whole outage), so that the lane's
    # head is tried, and the breaker opened, meanwhile
    ends = time.monotonic() + 4
    while time.monotonic() < ends:
        stack.outage("ongoing", 1)
        time.sleep(0.3)

    finished = stack.final([job["id"] for job in jobs])
    assert [job["state"] for job in finished] == ["done"] * len(orders)
    attempts = [attempt for job in finished for attempt in job["attempts"]]
    sent_in_vain = [attempt for attempt in attempts if attempt["outcome"] == "unavailable" and attempt["exchange_id"]]
    breaker_open = [attempt for attempt in attempts if attempt["outcome"] == "unavailable"
                    and "circuit breaker" in attempt["error"]]
    assert len(sent_in_vain) >= 2 and breaker_open, attempts
    for attempt in breaker_open:
        assert attempt["exchange_id"] is None and attempt["status"] == 503 and int(attempt["retry_after"]) >= 1
    calls = stack.calls("ongoing")
    assert len([call for call in calls if call["outcome"] == "unavailable"]) == len(sent_in_vain)
    assert [call["order_ids"] for call in applied_calls(calls, "UpdateOrder")] == [[order] for order in orders]


#: a killed worker's claim on its job lasts send_timeout + lease_margin_seconds: 5 s
SHORT_LEASE = {"send_timeout": 4, "lease_margin_seconds": 1}


def kill_the_worker_mid_send(stack: Stack, vendor: str, order_id: str, change: dict, request_id: str) -> dict:
    """Queue the update while the vendor holds every call without a reply, and SIGKILL the worker once the job
    is `sending` and its call has reached the vendor; another worker takes over. The job as queued."""
    stack.outage(vendor, 3, mode="no-reply")
    job = stack.queue(order_id, change, request_id)
    stack.wait_for(lambda: stack.job(job["id"])["state"] == "sending" and stack.calls(vendor), 5,
                   "the job's call to reach the vendor")
    stack.replace_worker()
    return job


def test_a_call_the_killed_worker_may_have_made_is_not_made_again_when_it_is_not_idempotent(start_stack):
    stack = start_stack(jobs=SHORT_LEASE)
    job = kill_the_worker_mid_send(stack, "speed4trade", "10001", {"connection": S4T, "status": "fetched"}, "kill-1")

    (failed,) = stack.final([job["id"]])
    assert failed["state"] == "failed" and not failed["idempotent"]
    assert failed["result"]["body"]["type"].endswith("outcome-unknown")
    (interrupted,) = [attempt for attempt in failed["attempts"] if attempt["outcome"] == "interrupted"]
    assert interrupted["exchange_id"] == failed["result"]["body"]["exchange_id"]
    assert interrupted["exchange_id"].startswith("exc_")

    stack.wait_for(lambda: stack.outage_over("speed4trade"), 10, "the outage to end")
    time.sleep(1)  # a resend would come now
    (call,) = stack.calls("speed4trade")
    assert (call["operation"], call["order_ids"], call["outcome"]) == ("updateOrderStatus", ["10001"], "no-reply")
    assert requests.get(f"{stack.sandbox_url}/speed4trade/orders/10001", timeout=5).json()["status"] == "NEW"


def test_a_call_the_killed_worker_may_have_made_is_made_again_when_it_is_idempotent(start_stack):
    stack = start_stack(jobs=SHORT_LEASE)
    job = kill_the_worker_mid_send(stack, "ongoing", "SO-1001", {"waybill": "KILL-1"}, "kill-2")

    (done,) = stack.final([job["id"]])
    assert done["state"] == "done" and done["idempotent"]
    assert [attempt["outcome"] for attempt in done["attempts"]][-2:] == ["interrupted", "done"]
    calls = stack.calls("ongoing")
    assert [call["outcome"] for call in calls] == ["no-reply", "applied"]
    assert requests.get(f"{stack.sandbox_url}/ongoing/orders/1001", timeout=5).json()["waybill"] == "KILL-1"


def test_a_speed4trade_call_whose_reply_never_comes_fails_as_outcome_unknown_and_is_not_sent_again(start_stack):
    stack = start_stack(speed4trade={"read_timeout": 1, "call_timeout": 2})
    stack.outage("speed4trade", 4, mode="no-reply")
    job = stack.queue("10002", {"connection": S4T, "status": "fetched"}, "no-reply-1")

    (failed,) = stack.final([job["id"]])
    assert failed["state"] == "failed", failed
    body = failed["result"]["body"]
    assert body["type"].endswith("outcome-unknown") and body["exchange_id"].startswith("exc_")
    assert failed["attempts"][-1]["outcome"] == "outcome-unknown"
    exchange = stack.exchange(body["exchange_id"])
    assert (exchange["operation"], exchange["request_id"]) == ("updateOrderStatus", "no-reply-1")

    stack.wait_for(lambda: stack.outage_over("speed4trade"), 10, "the outage to end")
    time.sleep(1.5)  # more than the jobs' longest backoff: a resend would have come now
    (call,) = stack.calls("speed4trade")
    assert (call["operation"], call["order_ids"], call["outcome"]) == ("updateOrderStatus", ["10002"], "no-reply")
    assert stack.job(job["id"])["state"] == "failed"


def test_a_refused_job_fails_with_its_problem_and_the_order_s_later_job_is_sent_all_the_same(start_stack):
    stack = start_stack()
    refused = stack.queue("SO-1003", {"status": "picked"}, "refused-1")
    later = stack.queue("SO-1003", {"waybill": "AFTER-REFUSAL"}, "refused-2")

    failed, done = stack.final([refused["id"], later["id"]])
    assert (failed["state"], done["state"]) == ("failed", "done")
    assert failed["result"]["status"] == 409
    problem = failed["result"]["body"]
    assert problem["status"] == 409 and problem["type"].startswith("urn:order-gateway:problem:")
    assert "not allowed if the order has allocated but not picked goods" in problem["detail"]
    assert [attempt["outcome"] for attempt in failed["attempts"]] == ["refused"]
    assert [call["outcome"] for call in stack.calls("ongoing")] == ["refused", "applied"]
    assert requests.get(f"{stack.sandbox_url}/ongoing/orders/1003", timeout=5).json()["waybill"] == "AFTER-REFUSAL"

    retried = requests.post(f"{stack.gateway_url}/updates/{refused['id']}/retry", headers=KEY, timeout=5)
    assert retried.status_code == 202, retried.text
    assert retried.json()["state"] == "queued" and retried.json()["result"] is None
    (again,) = stack.final([refused["id"]])
    assert again["state"] == "failed" and again["result"]["status"] == 409
    assert [attempt["outcome"] for attempt in again["attempts"]] == ["refused", "retry", "refused"]
    assert again["attempts"][1]["requested_by"] == "demo"
    assert [call["outcome"] for call in stack.calls("ongoing")] == ["refused", "applied", "refused"]
    done_again = requests.post(f"{stack.gateway_url}/updates/{later['id']}/retry", headers=KEY, timeout=5)
    assert done_again.status_code == 409 and done_again.json()["type"].endswith("job-not-retryable")


def test_the_demo_subscriber_receives_a_signed_completion_event_of_each_job(start_stack):
    stack = start_stack()
    done = stack.queue("SO-1002", {"waybill": "EVENT-1"}, "event-1")
    failed = stack.queue("SO-1003", {"status": "picked"}, "event-2")
    stack.final([done["id"], failed["id"]])

    def completion_events():
        found = {record["event"]["update"]["job_id"]: record for record in stack.received()
                 if record["event"]["type"].startswith("order.update_")}
        return found if len(found) == 2 else None

    events = stack.wait_for(completion_events, 10, "the completion events at the subscriber")
    succeeded, refused = events[done["id"]], events[failed["id"]]
    assert succeeded["verified"] is True and refused["verified"] is True
    assert succeeded["event"]["type"] == "order.update_succeeded"
    assert succeeded["event"]["update"]["state"] == "done" and succeeded["event"]["order"]["order_id"] == "SO-1002"
    assert succeeded["event"]["update"]["request_id"] == "event-1"
    assert refused["event"]["type"] == "order.update_failed"
    assert refused["event"]["update"]["state"] == "failed"
    assert refused["event"]["update"]["result"]["status"] == 409
    assert len([record for record in stack.received() if record["event"]["type"].startswith("order.update_")]) == 2
