"""Ongoing WMS: PATCH /orders/<id> as the SOAP operation UpdateOrder."""

from gateway.backends.ongoing.backend import OngoingBackend

__all__ = ["OngoingBackend"]
