"""The SellerCenter backend: its settings and order ids; one operation, UpdateOrderInformation
(update_order_information.py), every request signed with the API key by a requests AuthBase (signing.py)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from marshmallow import fields, validate

from gateway.backends.base import Backend
from gateway.backends.sellercenter.signing import SellerCenterSignature
from gateway.backends.sellercenter.update_order_information import INT32_MAX, UpdateOrderInformation
from gateway.canonical import OrderUpdate
from gateway.config import MASK, ConnectionSchema, ConnectionSettings, RegexList, SecretField, described
from gateway.transport import OutboundRequest

DEFAULT_NOT_FOUND_PATTERNS = [r"does not exist"]
DEFAULT_CONFLICT_PATTERNS = [r"is not in pending status"]


class SellerCenterSettingsSchema(ConnectionSchema):
    """Settings of a connection of kind `sellercenter`; `url` is the OMS API base, e.g. https://host/oms-api/."""

    api_key = described(SecretField(required=True), "the API key issued to the OMS system; every request is "
                                                    "signed with it")
    user_id = described(fields.String(load_default=None), "the UserID requests carry, when the installation wants one")
    max_orders_per_call = described(fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000)),
                                    "the most orders one UpdateOrderInformation call carries")
    order_not_found_patterns = described(RegexList(defaults=DEFAULT_NOT_FOUND_PATTERNS),
                                         "an error message matching one of these means the order does not exist "
                                         "(404)")
    order_conflict_patterns = described(RegexList(defaults=DEFAULT_CONFLICT_PATTERNS),
                                        "an error message matching one of these means the order's state refuses "
                                        "the change (409)")


class SellerCenterBackend(Backend):
    """Rocket SellerCenter's OMS API: UpdateOrderInformation (address changes)."""

    kind: ClassVar[str] = "sellercenter"
    display_name: ClassVar[str] = "SellerCenter"
    settings_schema = SellerCenterSettingsSchema
    operation_classes: ClassVar = (UpdateOrderInformation,)
    id_types: ClassVar = {"id_sales_order": "SellerCenter's integer id_sales_order (default)"}
    unsupported_reason: ClassVar[str] = (
        "its UpdateOrderInformation carries addresses only (billing_address, shipping_address); "
        "statuses, cancels included, are changed in SellerCenter itself.")
    example_updates: ClassVar = {
        "new shipping street and city": {"shipping_address": {"address1": "Hauptstraße 5", "city": "Hamburg"}},
        "billing phone": {"billing_address": {"phone": "+49 40 1234567"}},
    }

    def __init__(self, settings: ConnectionSettings) -> None:
        super().__init__(settings)
        self.signer = SellerCenterSignature(settings.options["api_key"].reveal(), user_id=settings.options["user_id"])

    @classmethod
    def check_settings(cls, settings: ConnectionSettings) -> tuple[str, str] | None:
        """SellerCenter signs with an API key, which must not be empty."""
        if not settings.options["api_key"].reveal():
            return "api_key", "SellerCenter needs the API key issued to the OMS system."
        return None

    def make_auth(self) -> SellerCenterSignature:
        """Every request is signed with the connection's API key."""
        return self.signer

    def dry_run_view(self, request: OutboundRequest) -> OutboundRequest:
        """The request with the Timestamp it would carry now and its Signature masked."""
        return dataclasses.replace(request, url=self.signer.signed_url(request.url, signature=MASK))

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """The order id is SellerCenter's integer id_sales_order."""
        if not (update.order_id.isascii() and update.order_id.isdigit()) or int(update.order_id) > INT32_MAX:
            return {"id": ["SellerCenter identifies orders by the integer id_sales_order."]}
        return {}
