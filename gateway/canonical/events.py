"""Canonical order events: the one shape every backend's notifications become before subscribers see them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ORDER_CREATED = "order.created"
ORDER_STATUS_CHANGED = "order.status_changed"
ORDER_PICKED = "order.picked"
#: what the backends tell of their orders (webhooks)
EVENT_TYPES = (ORDER_CREATED, ORDER_STATUS_CHANGED, ORDER_PICKED)
ORDER_UPDATE_SUCCEEDED = "order.update_succeeded"
ORDER_UPDATE_FAILED = "order.update_failed"
#: how an update job ended (gateway/jobs): done, or failed or dead
UPDATE_EVENT_TYPES = (ORDER_UPDATE_SUCCEEDED, ORDER_UPDATE_FAILED)
ALL_EVENT_TYPES = EVENT_TYPES + UPDATE_EVENT_TYPES


def new_event_id() -> str:
    """A fresh, globally unique event id (it doubles as the webhook-id of every delivery of the event)."""
    return f"evt_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class OrderEvent:
    """Something that happened to an order in a backend, in canonical terms, with the original payload kept."""

    type: str
    occurred_at: str
    source: Mapping[str, Any]
    order: Mapping[str, Any]
    goods_owner: Mapping[str, Any] | None = None
    tracking: list[Mapping[str, Any]] = field(default_factory=list)
    parcels: list[Mapping[str, Any]] = field(default_factory=list)
    actor: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    #: identifies the backend's event, so retries of one notification are stored once
    dedupe_key: str = ""
    #: groups the events of one order, which reach each subscriber in the order they happened
    order_key: str = ""
    id: str = field(default_factory=new_event_id)

    def to_document(self) -> dict[str, Any]:
        """The JSON document subscribers receive."""
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": self.occurred_at,
            "source": dict(self.source),
            "order": dict(self.order),
            "goods_owner": dict(self.goods_owner) if self.goods_owner is not None else None,
            "tracking": [dict(item) for item in self.tracking],
            "parcels": [dict(item) for item in self.parcels],
            "actor": dict(self.actor) if self.actor is not None else None,
            "raw": dict(self.raw),
        }
