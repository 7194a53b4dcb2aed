"""What the demo subscriber has received and rejected, and how it currently behaves, under one lock."""

import threading
from dataclasses import dataclass

MODE_UP = "up"
MODE_DOWN = "down"
MODE_SLOW = "slow"
MODE_ERROR = "error"
MODES = (MODE_UP, MODE_DOWN, MODE_SLOW, MODE_ERROR)


@dataclass(frozen=True)
class Behaviour:
    """How the subscriber answers: up, down (503), error (500) or slow (waits `delay` seconds, then as up)."""

    mode: str = MODE_UP
    delay: float = 0.0


class SubscriberInbox:
    """The deliveries the subscriber accepted and rejected, in arrival order, and its simulated behaviour."""

    def __init__(self):
        self._lock = threading.Lock()
        self._received: list[dict] = []
        self._rejected: list[dict] = []
        self._behaviour = Behaviour()

    @property
    def behaviour(self) -> Behaviour:
        """The current behaviour."""
        with self._lock:
            return self._behaviour

    def change_behaviour(self, behaviour: Behaviour) -> None:
        """Answer the next deliveries as `behaviour` says."""
        with self._lock:
            self._behaviour = behaviour

    def record_received(self, record: dict) -> None:
        """Keep a delivery whose signature was verified."""
        with self._lock:
            self._received.append(record)

    def record_rejected(self, record: dict) -> None:
        """Keep a delivery that was refused."""
        with self._lock:
            self._rejected.append(record)

    def records(self) -> dict[str, list[dict]]:
        """Copies of the received and rejected deliveries, each in arrival order."""
        with self._lock:
            return {"received": list(self._received), "rejected": list(self._rejected)}

    def reset(self) -> None:
        """Forget every delivery and be up again."""
        with self._lock:
            self._received.clear()
            self._rejected.clear()
            self._behaviour = Behaviour()
