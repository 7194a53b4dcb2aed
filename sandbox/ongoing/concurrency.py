"""Ongoing's one-call-at-a-time rule: each goods owner's calls are served one after another, never in parallel.

Integrators report that Ongoing times out a call for a goods owner while another call for the same goods owner is
in progress. The sandbox does the same: a call counts as in progress from the moment it is authenticated until its
reply is built, and one that arrives while another is in progress waits the overlap delay and is then refused
without being applied. Every authenticated call first takes the configured call time, slept outside every lock, so
that overlapping callers are caught even when the work itself would take no time at all.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CALL_OVERLAPS = (
    "Server was unable to process request. ---> Timeout expired. Another call for goods owner '{code}' was in "
    "progress; Ongoing processes one goods owner's calls one after another."
)


class CallOverlaps(Exception):
    """The call arrived while another call for its goods owner was in progress, and was refused."""


@dataclass
class _GoodsOwnerCalls:
    """One goods owner's calls: those in progress now, and what happened since the last reset."""

    # Survives a reset: a call in progress during a reset still keeps the next one out.
    in_progress: int = 0
    received: bool = False
    completed: int = 0
    overlaps: int = 0
    max_in_progress: int = 0

    def describe(self) -> dict:
        """The record of this goods owner as GET /ongoing/concurrency shows it."""
        return {"calls": self.completed, "overlaps": self.overlaps, "max_in_progress": self.max_in_progress}


class CallTracker:
    """Tracks the calls in progress per goods owner and refuses a call that overlaps another of its goods owner."""

    def __init__(self, call_seconds: float, overlap_delay_seconds: float, refuse_overlaps: bool = True):
        self._call_seconds = call_seconds
        self._overlap_delay_seconds = overlap_delay_seconds
        # Off only for tests of the store's own locking, which send one goods owner's calls in parallel on purpose.
        self._refuse_overlaps = refuse_overlaps
        self._lock = threading.Lock()
        self._goods_owners: dict[str, _GoodsOwnerCalls] = {}
        # Raised by each reset, so that a call that began before it is not counted after it.
        self._generation = 0

    @contextmanager
    def call(self, goods_owner_code: str) -> Iterator[None]:
        """Hold one authenticated call in progress; CallOverlaps, after the overlap delay, if another one is."""
        with self._lock:
            calls = self._goods_owners.setdefault(goods_owner_code, _GoodsOwnerCalls())
            calls.in_progress += 1
            calls.received = True
            calls.max_in_progress = max(calls.max_in_progress, calls.in_progress)
            overlapping = calls.in_progress > 1 and self._refuse_overlaps
            generation = self._generation
        try:
            if overlapping:
                time.sleep(self._overlap_delay_seconds)
                self._count(calls, generation, overlap=True)
                raise CallOverlaps(CALL_OVERLAPS.format(code=goods_owner_code))
            if self._call_seconds > 0:
                time.sleep(self._call_seconds)
            yield
            self._count(calls, generation, overlap=False)
        finally:
            with self._lock:
                calls.in_progress -= 1

    def records(self) -> dict[str, dict]:
        """Each goods owner that received a call since the start or the last reset, by code."""
        with self._lock:
            return {code: calls.describe() for code, calls in self._goods_owners.items() if calls.received}

    def reset(self) -> None:
        """Forget the counts; calls still in progress stay in progress, but their outcome is not counted."""
        with self._lock:
            self._generation += 1
            for code, calls in list(self._goods_owners.items()):
                if not calls.in_progress:
                    del self._goods_owners[code]
                    continue
                # Changed in place: the calls in progress hold this record and take themselves off it.
                calls.received = False
                calls.completed = calls.overlaps = calls.max_in_progress = 0

    def _count(self, calls: _GoodsOwnerCalls, generation: int, overlap: bool) -> None:
        """Count a completed or refused call, unless a reset came after it began."""
        with self._lock:
            if generation != self._generation:
                return
            if overlap:
                calls.overlaps += 1
            else:
                calls.completed += 1
