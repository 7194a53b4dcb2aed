"""Deadlines: a request's whole budget and each backend call's, and the watchdog that enforces them on sockets.

Per-read socket timeouts bound each wait, not a call: a backend that drips its reply a byte at a time, or its
headers, would never trip them. So every call runs under a Deadline, and the one Watchdog thread shuts the call's
socket down when the deadline passes; the blocked read returns at once and the transport reports a timeout that
names the deadline. Deadlines are monotonic times; `Deadline.earliest` combines a call's own with the request's.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("gateway.deadlines")


@dataclass(frozen=True, slots=True)
class Deadline:
    """A monotonic point in time and what it stands for ("call_timeout 30 s", "the request's time budget")."""

    at: float
    reason: str

    @classmethod
    def after(cls, seconds: float, reason: str) -> Deadline:
        """The deadline `seconds` from now."""
        return cls(time.monotonic() + seconds, reason)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        """Whether it has passed."""
        return time.monotonic() >= self.at

    def earliest(self, other: Deadline | None) -> Deadline:
        """Whichever of the two comes first."""
        return self if other is None or self.at <= other.at else other


class Watchdog:
    """One daemon thread that calls each registered function when its time comes, unless cancelled first."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._numbers = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_at(self, at: float, function: Callable[[], None]) -> int:
        """Call `function` at monotonic time `at`; the handle cancels it."""
        with self._condition:
            handle = next(self._numbers)
            earliest = not self._due or at < self._due[0][0]
            heapq.heappush(self._due, (at, handle, function))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="gateway-deadline-watchdog", daemon=True)
                self._thread.start()
            # Woken only for a new earliest deadline: otherwise it wakes for an earlier one anyway, and a wake-up
            # per call would make every call wait for a thread switch.
            if earliest:
                self._condition.notify()
        return handle

    def cancel(self, handle: int) -> None:
        """Forget a registered call (a no-op once it ran)."""
        with self._condition:
            self._cancelled.add(handle)
            # Cancelled calls wait in the heap until their time; most calls are cancelled long before it, so
            # the heap is compacted once they are the greater part, and stays as small as the calls in flight.
            if len(self._cancelled) > 64 and 2 * len(self._cancelled) > len(self._due):
                self._due = [entry for entry in self._due if entry[1] not in self._cancelled]
                heapq.heapify(self._due)
                self._cancelled.clear()

    def pending(self) -> int:
        """How many calls are registered and not yet run or cancelled (for tests and health views)."""
        with self._condition:
            return sum(1 for entry in self._due if entry[1] not in self._cancelled)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._due:
                    self._condition.wait()
                at, handle, function = self._due[0]
                if handle in self._cancelled:
                    heapq.heappop(self._due)
                    self._cancelled.discard(handle)
                    continue
                wait = at - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                heapq.heappop(self._due)
            try:
                function()
            except Exception:  # an abort that fails leaves the call to its own socket timeouts
                log.exception("the deadline watchdog could not abort a call")


WATCHDOG = Watchdog()
