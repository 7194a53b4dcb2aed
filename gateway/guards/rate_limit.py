"""The outbound rate limit guard: at most max_calls_per_second calls to a connection's backend, across every
gateway process that shares the coordination stores.

The limit is a token bucket (pyrate-limiter's TokenBucket, which is its GCRA: one number of state per connection)
holding at most one second's worth of calls (and at least one), so calls within the rate go at once and a burst
beyond it is spread out. Its state is in the coordination stores: an SQLite file under var/ shared by the processes
of one machine, or Redis, shared by every machine (gateway/coordination/rate_limits.py).

A call that finds no token waits for one, within its wait allowance: call_timeout, within what is left of the
request's budget. When the wait would be longer it is refused at once, unsent: 503 `rate-limited` with Retry-After
(whole seconds until the next token, at least 1). The token is the last thing a call takes (this guard comes last
in the registry), so a call the bulkhead or the call lock refuses spends none.

A store that cannot be used refuses the call (503 store-unavailable), as the call locks do: the limit is a promise
to the vendor, which a gateway that could not check it would break without knowing, in every process at once.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from pyrate_limiter import InMemoryStateStore, Rate, StateStore, TokenBucket, WallClock

from gateway.bookkeeping import STORE_ERRORS
from gateway.errors import RateLimited, StoreUnavailable
from gateway.guards.base import CallGuard, GuardedCall

if TYPE_CHECKING:
    from gateway.guards.base import GuardedConnection

#: the bucket's rate is counted per this many milliseconds, so that fractions of a call per second stay exact
RATE_INTERVAL_MS = 1_000_000


def token_bucket_rate(calls_per_second: float) -> Rate:
    """pyrate-limiter's Rate of `calls_per_second`, with a bucket of one second's calls (at least one)."""
    return Rate(limit=max(1, round(calls_per_second * RATE_INTERVAL_MS / 1000)), interval=RATE_INTERVAL_MS,
                burst=max(1, math.floor(calls_per_second)))


class RateLimitGuard(CallGuard):
    """At most max_calls_per_second calls to the backend; a call waits for its token within its wait allowance."""

    name = "rate_limit"
    settings = ("max_calls_per_second", "call_timeout")
    refusal = RateLimited
    code = "rate-limited"

    @classmethod
    def applies(cls, connection: GuardedConnection) -> bool:
        """Only when max_calls_per_second is set."""
        return connection.settings.max_calls_per_second is not None

    def __init__(self, connection: GuardedConnection) -> None:
        super().__init__(connection)
        self.rates = [token_bucket_rate(connection.settings.max_calls_per_second)]
        self.algorithm = TokenBucket()
        coordination = connection.coordination
        self.store: StateStore = (coordination.rate_limit_store(connection.name) if coordination is not None
                                  else InMemoryStateStore())
        # wall-clock milliseconds: the state is compared across processes (and machines, through Redis)
        self.clock = WallClock()

    def admit(self, call: GuardedCall) -> None:
        """Take a token, waiting for it within the call's allowance; refuse with 503 rate-limited when it would
        come later."""
        settings = self.connection.settings
        give_up = time.monotonic() + call.wait_allowed(settings.call_timeout)
        while True:
            try:
                decision = self.store.check(self.algorithm, self.rates, self.clock.now(), 1)
            except STORE_ERRORS as error:
                raise StoreUnavailable(
                    f"The rate limits ({type(error).__name__}) could not be used to count a call of connection "
                    f"{self.connection.name!r}; nothing was sent. Try again in a moment.",
                    store="rate limits") from None
            if decision.allowed:
                return
            wait = (decision.retry_after_ms or 1000) / 1000
            if time.monotonic() + wait > give_up:
                raise self.refuse(
                    f"Connection {self.connection.name!r} may send {settings.max_calls_per_second:g} calls per second "
                    f"(max_calls_per_second) and the next one may go in {wait:.2f} s, later than this call can wait; "
                    "nothing was sent.", retry_after=math.ceil(wait))
            time.sleep(wait)

    def release(self, call: GuardedCall, admission: None) -> None:
        """Nothing to give back: a token is spent whether the call went out or not."""
