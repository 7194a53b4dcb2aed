"""The canonical order model: what a client may ask of any backend, free of Flask, lxml and requests."""

from gateway.canonical.model import OrderUpdate, Payment, Shipment, UpdateOutcome, WayOfDelivery
from gateway.canonical.schema import (
    OrderUpdateSchema,
    flatten_errors,
    load_bulk_envelope,
    load_bulk_item,
    load_order_update,
    update_document,
)

__all__ = [
    "OrderUpdate",
    "OrderUpdateSchema",
    "Payment",
    "Shipment",
    "UpdateOutcome",
    "WayOfDelivery",
    "flatten_errors",
    "load_bulk_envelope",
    "load_bulk_item",
    "load_order_update",
    "update_document",
]
