"""The Speed4Trade CONNECT backend: its settings, order keys and status identifiers; one operation,
updateOrderStatus (update_order_status.py), authenticated with HTTP Basic.

Not public, hence connection settings: endpoint, SOAP version, target namespace, SOAPAction, and what each
negative return code means.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from marshmallow import ValidationError, fields, validate, validates
from requests.auth import HTTPBasicAuth

from gateway.backends.base import Backend
from gateway.backends.speed4trade.update_order_status import UpdateOrderStatus
from gateway.config import MASK, ConnectionSchema, ConnectionSettings, described
from gateway.soap import SOAP_VERSIONS
from gateway.transport import OutboundRequest

STATUSES = ("FETCHED", "PAID", "SHIPPED", "CANCELED", "ACKNOWLEDGED")


class Speed4TradeSettingsSchema(ConnectionSchema):
    """Settings of a connection of kind `speed4trade`."""

    mandator_id = described(fields.Integer(required=True, strict=True, validate=validate.Range(min=0)),
                            "the mandator (client) whose orders this connection updates")
    soap_version = described(fields.String(required=True, validate=validate.OneOf(sorted(SOAP_VERSIONS))),
                             "the SOAP version the installation speaks")
    namespace = described(fields.String(required=True, validate=validate.Length(min=1)),
                          "the target namespace of the installation's WSDL")
    soap_action = described(fields.String(load_default=""),
                            "updateOrderStatus's SOAPAction, empty unless the installation's WSDL names one")
    max_orders_per_call = described(fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000)),
                                    "the most orders one updateOrderStatus call carries")
    not_found_return_codes = described(fields.List(fields.Integer(strict=True), load_default=lambda: [-1]),
                                       "negative return codes that mean the order does not exist (404)")
    conflict_return_codes = described(fields.List(fields.Integer(strict=True), load_default=lambda: [-2]),
                                      "negative return codes that mean the order's state refuses the change (409)")

    @validates("status_map")
    def check_status_identifiers(self, value: dict, **_: Any) -> None:
        """Speed4Trade's basic call knows five status identifiers."""
        for name, code in value.items():
            if code not in STATUSES:
                raise ValidationError(f"status {name!r}: {code!r} is not one of {', '.join(STATUSES)}.")


class Speed4TradeBackend(Backend):
    """Speed4Trade CONNECT over SOAP: updateOrderStatus (basic call), canceling included."""

    kind: ClassVar[str] = "speed4trade"
    display_name: ClassVar[str] = "Speed4Trade CONNECT"
    settings_schema = Speed4TradeSettingsSchema
    operation_classes: ClassVar = (UpdateOrderStatus,)
    id_types: ClassVar = {
        "order_number": "order_number, an integer (default)",
        "order_number_and_prefix": "order_number with the order_number_prefix field",
        "external_order_number_1": "external_order_number_1",
        "external_order_number_2": "external_order_number_2",
        "marketplace_order_id_1": "marketplace_order_id_1 (not for eBay orders: it changes after checkout)",
        "marketplace_order_id_2": "marketplace_order_id_2 (not for eBay orders: it changes after checkout)",
        "transaction_id_1": "transaction_id_1",
        "transaction_id_2": "transaction_id_2",
    }
    identification_fields: ClassVar = frozenset({"order_number_prefix", "mandator_id"})
    example_updates: ClassVar = {
        "shipped with tracking numbers": {"status": "shipped", "shipments": [
            {"tracking_number": "00340434161094042557", "carrier": "DHL"}]},
        "paid": {"status": "paid", "payment": {"status": "paid"}},
        "acknowledged by the ERP, by external order number": {
            "id_type": "external_order_number_1", "status": "acknowledged", "acknowledged_at": "2026-11-23T10:00:00Z"},
        "cancel the order": {"status": "canceled"},
    }
    default_status_map: ClassVar = {
        "fetched": "FETCHED", "paid": "PAID", "shipped": "SHIPPED",
        "canceled": "CANCELED", "acknowledged": "ACKNOWLEDGED",
    }

    @classmethod
    def check_settings(cls, settings: ConnectionSettings) -> tuple[str, str] | None:
        """Speed4Trade authenticates with HTTP Basic: a user and a password are needed."""
        if not settings.username:
            return "username", "Speed4Trade needs the API user for HTTP Basic authentication."
        if settings.password is None or not settings.password.reveal():
            return "password", "Speed4Trade needs the API password for HTTP Basic authentication."
        return None

    def make_auth(self) -> HTTPBasicAuth:
        """HTTP Basic with the connection's API user."""
        return HTTPBasicAuth(self.settings.username, self.settings.password.reveal())

    def dry_run_view(self, request: OutboundRequest) -> OutboundRequest:
        """The request with the Basic credentials shown masked."""
        return dataclasses.replace(request, headers={**request.headers, "Authorization": f"Basic {MASK}"})
