"""The deadline watchdog: it calls what is due, not what was cancelled, and stays small under many calls."""

from __future__ import annotations

import threading
import time

from gateway.deadlines import Deadline, Watchdog


def test_a_due_call_runs_and_a_cancelled_one_does_not():
    watchdog, ran = Watchdog(), []
    fired = threading.Event()
    watchdog.call_at(time.monotonic() + 0.05, lambda: (ran.append("due"), fired.set()))
    cancelled = watchdog.call_at(time.monotonic() + 0.05, lambda: ran.append("cancelled"))
    watchdog.cancel(cancelled)
    assert fired.wait(2)
    time.sleep(0.1)
    assert ran == ["due"]


def test_many_cancelled_calls_leave_nothing_behind():
    watchdog = Watchdog()
    for _ in range(10_000):
        watchdog.cancel(watchdog.call_at(time.monotonic() + 30, lambda: None))
    assert watchdog.pending() == 0
    assert len(watchdog._due) < 200  # compacted: what waits is what is in flight, not what ever was


def test_deadlines_combine_to_the_earliest():
    call, budget = Deadline.after(30, "call_timeout 30 s"), Deadline.after(1, "request_timeout 1 s")
    assert call.earliest(budget) is budget and budget.earliest(call) is budget and call.earliest(None) is call
    assert 0 < budget.remaining() <= 1 and not budget.expired()
