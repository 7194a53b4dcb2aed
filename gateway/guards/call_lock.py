"""The call lock guard: the backend's one-at-a-time rule (Ongoing: one goods owner's calls one after another),
across the processes and machines that share the coordination stores."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from gateway.coordination import LockTimeout
from gateway.coordination.locks import LockUnavailable
from gateway.errors import ConnectionBusy, StoreUnavailable
from gateway.guards.base import CallGuard, GuardedCall

if TYPE_CHECKING:
    from gateway.guards.base import GuardedConnection


class CallLockGuard(CallGuard):
    """The backend's call lock; a call waits at most lock_timeout for it. A lock store that cannot be used refuses
    the call (503 store-unavailable); one that cannot release the lock afterwards is the lock's own bookkeeping."""

    name = "call_lock"
    settings = ("lock_timeout",)
    refusal = ConnectionBusy
    code = "lock-timeout"

    @classmethod
    def applies(cls, connection: GuardedConnection) -> bool:
        """Only a backend with a call lock, where there are locks to take (a gateway's connections have both)."""
        return connection.locks is not None and connection.lock_name is not None

    def admit(self, call: GuardedCall) -> AbstractContextManager[None]:
        """Hold the lock (the held lock is the admission), or refuse."""
        connection = self.connection
        holding = connection.locks.hold(connection.lock_name, call.wait_allowed(connection.settings.lock_timeout))
        try:
            holding.__enter__()
        except LockTimeout:
            raise self.refuse(
                f"Another call of connection {connection.name!r} held {connection.backend.display_name}'s call lock "
                f"({connection.backend.call_lock_reason}) for lock_timeout ({connection.settings.lock_timeout:g} s); "
                "nothing was sent.") from None
        except LockUnavailable as error:
            raise StoreUnavailable(
                f"The call locks ({error.store}) could not be used to take {connection.backend.display_name}'s call "
                f"lock for connection {connection.name!r}; nothing was sent. Try again in a moment.",
                store="call locks") from None
        return holding

    def release(self, call: GuardedCall, admission: AbstractContextManager[None]) -> None:
        """Release the lock."""
        admission.__exit__(None, None, None)
