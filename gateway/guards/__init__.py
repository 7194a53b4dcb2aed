"""The policies around every backend call (Connection.send), one class each, applied in the order of GUARDS.

    guard       settings it reads                       refuses with (503, nothing sent)       backend.code
    breaker     breaker_failures, breaker_reset_seconds BackendUnavailable, Retry-After          breaker-open
    bulkhead    max_concurrent_calls, queue_timeout     ConnectionBusy, Retry-After: 1           bulkhead-full
    call_lock   lock_timeout (backends with a lock)     ConnectionBusy, Retry-After: 1           lock-timeout
                                                        StoreUnavailable (its store unusable)    -
    rate_limit  max_calls_per_second, call_timeout      RateLimited, Retry-After: the wait       rate-limited
                                                        StoreUnavailable (its store unusable)    -

A guard is a CallGuard subclass (gateway/guards/base.py): its name, the settings it reads, its refusal and code,
whether a connection needs it (`applies`), admit() and release(). Adding one is that class, its entry here and its
setting in gateway/config.py (docs/adding-a-guard.md). Each connection builds its own guards from GUARDS when it is
made (`Connection.guards`, a plain list a test or benchmark may change); every refusal is counted in
`order_gateway_guard_refusals_total` by connection and guard name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.guards.base import CallGuard, GuardedCall
from gateway.guards.breaker import UNWELL, BreakerGuard
from gateway.guards.bulkhead import BulkheadGuard
from gateway.guards.call_lock import CallLockGuard
from gateway.guards.rate_limit import RateLimitGuard

if TYPE_CHECKING:
    from gateway.guards.base import GuardedConnection

__all__ = ["GUARDS", "UNWELL", "BreakerGuard", "BulkheadGuard", "CallGuard", "CallLockGuard", "GuardedCall",
           "RateLimitGuard", "build_guards"]

#: every guard, in the order it admits a call (and the reverse order it learns the outcome): the breaker first,
#: so an open one refuses before anything waits; the rate limit last, so only a call about to go spends a token
GUARDS: tuple[type[CallGuard], ...] = (BreakerGuard, BulkheadGuard, CallLockGuard, RateLimitGuard)


def build_guards(connection: GuardedConnection) -> list[CallGuard]:
    """The guards `connection` needs, in GUARDS' order."""
    return [guard(connection) for guard in GUARDS if guard.applies(connection)]
