"""A simulated rate limit of the OMS API: at most N admitted calls in any sliding minute."""

import threading
from collections import deque
from datetime import datetime, timedelta

WINDOW = timedelta(minutes=1)


class CallsPerMinuteLimit:
    """Admits at most `calls_per_minute` calls in any 60 seconds; 0 admits every call."""

    def __init__(self, calls_per_minute: int):
        if calls_per_minute < 0:
            raise ValueError(f"A rate limit of {calls_per_minute} calls per minute makes no sense.")
        self._calls_per_minute = calls_per_minute
        self._admitted: deque[datetime] = deque()
        self._lock = threading.Lock()

    def admit(self, now: datetime) -> bool:
        """Whether a call at `now` is within the limit; an admitted call counts, a refused one does not."""
        if self._calls_per_minute == 0:
            return True
        with self._lock:
            while self._admitted and self._admitted[0] <= now - WINDOW:
                self._admitted.popleft()
            if len(self._admitted) >= self._calls_per_minute:
                return False
            self._admitted.append(now)
            return True

    def forget(self) -> None:
        """Forget every admitted call, as after a restart."""
        with self._lock:
            self._admitted.clear()
