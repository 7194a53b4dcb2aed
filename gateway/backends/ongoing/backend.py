"""The Ongoing WMS backend: its settings, order identification and status codes, webhooks, and the plan that
sends a cancel as ProcessOrder (OrderOperation Remove) and every other change as UpdateOrder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from marshmallow import ValidationError, fields, validate, validates

from gateway.backends.base import Backend, Operation
from gateway.backends.ongoing.process_order import ProcessOrderRemove
from gateway.backends.ongoing.update_order import UpdateOrder
from gateway.backends.ongoing.webhooks import DEFAULT_EVENT_TYPES, WebhookOrderPayloadSchema, read_order_webhook
from gateway.backends.ongoing.wire import ID_TYPES, INT32_MAX
from gateway.canonical import OrderUpdate, flatten_errors
from gateway.canonical.events import OrderEvent
from gateway.config import ConnectionSchema, ConnectionSettings, RegexList, described
from gateway.errors import ValidationFailed

DEFAULT_NOT_FOUND_PATTERNS = [r"^No order found with\b"]
DEFAULT_CONFLICT_PATTERNS = [
    r"not allowed if the order has allocated but not picked goods",
    r"is already in use",
    r"begun picking",
]
#: .NET's DateTime.MinValue: what Ongoing's service reads for a DeliveryDate that is left out
DEFAULT_CANCEL_DELIVERY_DATE = "0001-01-01T00:00:00"
CANCELED = "canceled"
CANCEL_ALONE = (
    "Cannot be combined with status 'canceled': Ongoing cancels with ProcessOrder (OrderOperation Remove), a "
    "call that carries nothing else, and one update is one call so that it either happens whole or not at all; "
    "send the other changes first, in their own request."
)


def _check_xs_datetime(value: str) -> None:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("Not an xs:dateTime, e.g. 0001-01-01T00:00:00 or 2026-12-01T00:00:00Z.") from None


class OngoingSettingsSchema(ConnectionSchema):
    """Settings of a connection of kind `ongoing`."""

    goods_owner_code = described(fields.String(required=True, validate=validate.Length(min=1, max=400)),
                                 "the goods owner whose orders this connection updates (GoodsOwnerCode)")
    order_not_found_patterns = described(RegexList(defaults=DEFAULT_NOT_FOUND_PATTERNS),
                                         "a failure message matching one of these means the order does not exist "
                                         "(404)")
    order_conflict_patterns = described(RegexList(defaults=DEFAULT_CONFLICT_PATTERNS),
                                        "a failure message matching one of these means the order's state refuses "
                                        "the change (409)")
    cancel_delivery_date = described(
        fields.String(load_default=DEFAULT_CANCEL_DELIVERY_DATE, validate=_check_xs_datetime),
        "the DeliveryDate ProcessOrder must carry when it removes an order (the WSDL requires one)")

    @validates("username")
    def check_username(self, value: str, **_: Any) -> None:
        """Ongoing's UserName is a required str(50)."""
        if not 1 <= len(value) <= 50:
            raise ValidationError("Ongoing needs a username of 1 to 50 characters.")

    @validates("status_map")
    def check_status_codes(self, value: dict, **_: Any) -> None:
        """Ongoing status codes are integers."""
        for name, code in value.items():
            if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= INT32_MAX:
                raise ValidationError(f"status {name!r}: Ongoing status codes are integers, got {code!r}.")


class OngoingBackend(Backend):
    """Ongoing WMS over SOAP: UpdateOrder, and ProcessOrder to cancel."""

    kind: ClassVar[str] = "ongoing"
    display_name: ClassVar[str] = "Ongoing WMS"
    settings_schema = OngoingSettingsSchema
    operation_classes: ClassVar = (UpdateOrder, ProcessOrderRemove)
    id_types: ClassVar = {
        "order_number": "GoodsOwnerOrderNumber (default)",
        "order_id": "GoodsOwnerOrderId",
        "system_id": "SystemId, Ongoing's internal integer id",
    }
    example_updates: ClassVar = {
        "release the order": {"status": "released"},
        "waybill and way of delivery": {"waybill": "00340434161094042557",
                                        "way_of_delivery": {"code": "DHL-PARCEL", "create_if_missing": False}},
        "by SystemId, with a warehouse-specific status code": {"id_type": "system_id", "status_code": 425},
        "dates and instructions": {"delivery_date": "2026-12-01", "printed_at": "2026-11-23T10:15:00+01:00",
                                   "warehouse_instruction": "Fragile", "picking_priority": 5},
        "cancel the order (ProcessOrder Remove)": {"status": "canceled"},
    }
    default_status_map: ClassVar = {
        "open": 200, "released": 300, "allocated": 320, "picked": 400,
        "sent": 450, "collected": 500, "returned": 800, CANCELED: 1000,
    }
    default_webhook_event_types: ClassVar = DEFAULT_EVENT_TYPES
    webhook_payload_schema: ClassVar = WebhookOrderPayloadSchema
    call_lock_reason: ClassVar[str] = "one goods owner's calls are made one after another"

    @classmethod
    def check_settings(cls, settings: ConnectionSettings) -> tuple[str, str] | None:
        """Ongoing needs a password of at most 50 characters."""
        if settings.password is None or not 1 <= len(settings.password.reveal()) <= 50:
            return "password", "Ongoing needs a password of 1 to 50 characters."
        return None

    def call_lock_name(self) -> str:
        """One lock per Ongoing system and goods owner: Ongoing wants a goods owner's calls made one after another
        (parallel calls time out, reference/ongoing), whichever gateway process or machine makes them."""
        return f"ongoing:{self.settings.url}:{self.settings.options['goods_owner_code']}"

    def read_webhook(self, payload: Any) -> OrderEvent:
        """Ongoing's order webhooks (created, status changed, picked) as canonical events, dated within the
        connection's max_age_hours before now and max_ahead_minutes after."""
        webhooks = self.settings.webhooks or {}
        try:
            return read_order_webhook(
                payload, connection=self.name, event_types=self.webhook_event_types,
                timezone=webhooks.get("timezone", "UTC"), status_names=self.status_names, now=datetime.now(UTC),
                max_age=timedelta(hours=webhooks.get("max_age_hours", 48.0)),
                max_ahead=timedelta(minutes=webhooks.get("max_ahead_minutes", 900.0)),
            )
        except ValidationError as error:
            raise ValidationFailed(flatten_errors(error.messages)) from None

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """The order id must fit its identification type, for UpdateOrder and ProcessOrder alike."""
        id_type = self.effective_id_type(update)
        if id_type == "system_id":
            if not (update.order_id.isascii() and update.order_id.isdigit()) or int(update.order_id) > INT32_MAX:
                return {"id": ["With id_type system_id the order id must be Ongoing's integer SystemId."]}
        elif len(update.order_id) > 50:
            return {"id": [f"Ongoing's {ID_TYPES[id_type][0]} is at most 50 characters."]}
        return {}

    def is_cancel(self, update: OrderUpdate) -> bool:
        """Whether the update sets the status canceled maps to (by name or by its code)."""
        canceled_code = self.status_map.get(CANCELED)
        return canceled_code is not None and self.backend_status_code(update) == canceled_code

    def plan(self, update: OrderUpdate) -> Operation:
        """A cancel is ProcessOrder Remove, alone; everything else is UpdateOrder."""
        if not self.is_cancel(update):
            return self.operations[UpdateOrder.name]
        others = sorted(set(update.changes) - {"status", "status_code"})
        if others:
            raise ValidationFailed({name: [CANCEL_ALONE] for name in others})
        return self.operations[ProcessOrderRemove.name]
