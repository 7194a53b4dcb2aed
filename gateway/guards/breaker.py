"""The circuit breaker guard: consecutive failures that say the backend is unwell open it, and an open breaker
refuses calls at once (503 breaker-open with Retry-After) until one probe call may go."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gateway.coordination import ConcurrentCircuitBreaker
from gateway.coordination.breakers import BreakerOpen
from gateway.errors import BackendFailure, BackendTimeout, BackendUnavailable
from gateway.guards.base import CallGuard, GuardedCall

if TYPE_CHECKING:
    from gateway.guards.base import GuardedConnection

#: the failures that say a backend is unwell and count towards opening its breaker (refusals do not)
UNWELL = (BackendFailure, BackendUnavailable, BackendTimeout)


class BreakerGuard(CallGuard):
    """The circuit breaker, its state shared through the coordination stores on every transition and failure
    (gateway/coordination/breakers.py): this process's copy admits a call, without a round trip to the store; the
    outcome of a call that went out is counted (UNWELL errors as failures), one that never went out is not."""

    name = "breaker"
    settings = ("breaker_failures", "breaker_reset_seconds")
    refusal = BackendUnavailable
    code = "breaker-open"

    def __init__(self, connection: GuardedConnection) -> None:
        super().__init__(connection)
        coordination, settings = connection.coordination, connection.settings
        self.breaker = ConcurrentCircuitBreaker(
            fail_max=settings.breaker_failures, reset_timeout=settings.breaker_reset_seconds,
            state_storage=coordination.breaker_storage(settings.name) if coordination is not None else None,
            exclude=[lambda error: not isinstance(error, UNWELL)], name=settings.name,
            throw_new_error_on_trip=False,
        )

    def admit(self, call: GuardedCall) -> bool:
        """Whether the call is the probe of a half-open breaker; an open one (or a probe in flight) refuses."""
        try:
            return self.breaker.admit()
        except BreakerOpen as refusal:
            settings = self.connection.settings
            wait = settings.breaker_reset_seconds if refusal.retry_after is None else refusal.retry_after
            raise self.refuse(
                f"The circuit breaker of connection {self.connection.name!r} is open after "
                f"{settings.breaker_failures} consecutive failures; nothing was sent. One probe call goes through "
                f"in {math.ceil(wait)} s.", retry_after=str(max(math.ceil(wait), 1))) from None

    def release(self, call: GuardedCall, admission: bool) -> None:
        """Count the outcome."""
        if not call.sent:
            self.breaker.withdraw(admission)
        elif isinstance(call.error, UNWELL):
            self.breaker.record_failure(admission)
        else:
            self.breaker.record_success(admission)
