"""Speed4Trade CONNECT: PATCH /orders/<id> as updateOrderStatus, a request document carried inside SOAP."""

from gateway.backends.speed4trade.backend import Speed4TradeBackend

__all__ = ["Speed4TradeBackend"]
