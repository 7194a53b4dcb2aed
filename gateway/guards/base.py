"""What every guard is: a CallGuard class, and the GuardedCall it admits and learns the outcome of."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.backends import Backend, Operation
    from gateway.calls import CallContext
    from gateway.canonical import OrderUpdate
    from gateway.config import ConnectionSettings
    from gateway.coordination import Coordination
    from gateway.coordination.locks import CallLocks
    from gateway.deadlines import Deadline


class GuardedConnection(Protocol):
    """What a guard reads of the connection it guards (gateway.connections.Connection is one)."""

    name: str
    settings: ConnectionSettings
    backend: Backend
    coordination: Coordination | None
    locks: CallLocks | None
    lock_name: str | None


@dataclass(eq=False, slots=True)
class GuardedCall:
    """One call on its way through a connection's guards: what it carries, the request's budget, who asks for it,
    how many attempts went out, and the error it ended in (None: its outcomes)."""

    operation: Operation
    updates: list[OrderUpdate]
    budget: Deadline | None
    idempotent: bool
    context: CallContext
    attempts: int = 0
    error: BaseException | None = None

    @property
    def sent(self) -> bool:
        """Whether any attempt went out (so the backend may have acted)."""
        return self.attempts > 0

    def wait_allowed(self, seconds: float) -> float:
        """How long a guard may wait: its own setting, within what is left of the request's budget."""
        return seconds if self.budget is None else min(seconds, self.budget.remaining())


class CallGuard(abc.ABC):
    """One policy around a connection's calls, with its own settings, refusal and name.

    admit() runs before the call, in the registry's order (gateway/guards/__init__.py): it waits if it must,
    refuses the call by raising its refusal (a GatewayError: nothing is sent), or lets it through; what it returns
    comes back to release(), which runs after the call — sent or not, whatever its outcome — in reverse order.
    release() is bookkeeping: the connection counts and logs what it raises, and the call's outcome stands.
    The connection counts every refusal in `order_gateway_guard_refusals_total`, labelled with the guard's name.
    """

    #: the guard's name: the `guard` label of its refusals' count, and the subject of a release that failed
    name: ClassVar[str]
    #: the connection settings (ConnectionSettings fields) it reads
    settings: ClassVar[tuple[str, ...]] = ()
    #: the error it refuses a call with, and that error's problem code (the reply's `backend.code`)
    refusal: ClassVar[type[GatewayError]]
    code: ClassVar[str]

    def __init__(self, connection: GuardedConnection) -> None:
        self.connection = connection

    @classmethod
    def applies(cls, connection: GuardedConnection) -> bool:
        """Whether `connection` needs this guard at all (a rate limit only when one is set)."""
        return True

    def refuse(self, detail: str, **details: Any) -> GatewayError:
        """The guard's refusal of a call of this connection, nothing sent."""
        return self.refusal(detail, connection=self.connection.name, code=self.code, **details)

    @abc.abstractmethod
    def admit(self, call: GuardedCall) -> Any:
        """Let the call through (returning what release() needs) or raise the refusal."""

    @abc.abstractmethod
    def release(self, call: GuardedCall, admission: Any) -> None:
        """Learn the outcome of an admitted call (`call.sent`, `call.error`) and free what admit() took."""
