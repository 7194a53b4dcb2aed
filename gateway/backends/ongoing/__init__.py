"""Ongoing WMS: PATCH /orders/<id> as the SOAP operations UpdateOrder and, for a cancel, ProcessOrder."""

from gateway.backends.ongoing.backend import OngoingBackend

__all__ = ["OngoingBackend"]
