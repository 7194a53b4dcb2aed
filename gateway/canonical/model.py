"""Plain data objects for a canonical order update and its outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class WayOfDelivery:
    """A way of delivery (carrier product) identified by its code."""

    code: str
    name: str | None = None
    create_if_missing: bool = False


@dataclass(frozen=True, slots=True)
class Shipment:
    """One parcel handed to a carrier."""

    tracking_number: str
    carrier: str | None = None
    carrier_external_id: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment state, given as the backend's numeric id or as its identifier."""

    status_id: int | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """One order, how it is identified, and the canonical fields to change on it.

    `identification` holds the fields that help find the order (`order_number_prefix`, `mandator_id`);
    `changes` maps the canonical fields to change (`status`, `waybill`, ...) to loaded Python values; `fields`
    keeps the changes as the client sent them (JSON-ready), for the reply's `updated` member.
    """

    order_id: str
    connection: str | None = None
    id_type: str | None = None
    identification: Mapping[str, Any] = field(default_factory=dict)
    changes: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """What a backend reported after applying an update."""

    backend_order_id: str | None
    message: str
