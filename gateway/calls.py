"""Who asks for a connection's calls, and who is told of each attempt before it goes out.

`Connection.send(planned, budget, context)` takes a CallContext as it takes the budget: the request id and caller
the journal records with each exchange, and an AttemptListener (the REST layer's Idempotency-Key record) told of
every CallAttempt before it is sent, which may stop it unsent by raising StoreUnavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallAttempt:
    """An attempt about to be sent: the id its journal exchange will have, where it goes, for which orders, whether
    the operation may be sent twice, and whether it repeats an attempt of the same call (a retry)."""

    exchange_id: str
    connection: str
    operation: str
    order_ids: tuple[str, ...]
    idempotent: bool
    retry: bool


class AttemptListener(Protocol):
    """Told of every attempt before it is sent (the REST layer's Idempotency-Key record)."""

    def attempting(self, attempt: CallAttempt) -> None:
        """Note the attempt; raising StoreUnavailable stops it unsent."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who asks for the calls `Connection.send` makes: the request id and caller the journal records with each
    exchange, and the listener told of every attempt before it goes out (whoever passes one learns whether anything
    may have reached a backend, and may note it where a crash cannot lose it: the REST layer's Idempotency-Key
    record notes the call on the key first)."""

    request_id: str = ""
    caller: str = ""
    listener: AttemptListener | None = None


#: the context of calls nobody in particular asked for
NO_CONTEXT = CallContext()
