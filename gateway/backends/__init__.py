"""The registry of backend kinds; a connection's `backend` setting names one of them."""

from gateway.backends.base import Backend
from gateway.backends.ongoing import OngoingBackend

BACKENDS: dict[str, type[Backend]] = {backend.kind: backend for backend in (OngoingBackend,)}

__all__ = ["BACKENDS", "Backend"]
