"""The registry of backend kinds; a connection's `backend` setting names one of them."""

from gateway.backends.base import Backend, Credentials, Operation
from gateway.backends.ongoing import OngoingBackend
from gateway.backends.sellercenter import SellerCenterBackend
from gateway.backends.speed4trade import Speed4TradeBackend

BACKENDS: dict[str, type[Backend]] = {
    backend.kind: backend for backend in (OngoingBackend, Speed4TradeBackend, SellerCenterBackend)
}

__all__ = ["BACKENDS", "Backend", "Credentials", "Operation"]
