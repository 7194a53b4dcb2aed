"""The SellerCenter backend: canonical address updates as the signed JSON call UpdateOrderInformation.

Wire facts (reference/sellercenter/NOTES.md, specs/002): `POST <base>/oms-api/?Action=UpdateOrderInformation
&ServiceName=OMS&Timestamp=...&Version=1.0&Signature=...` with `Accept: application/json` and
`{"Request": {"Orders": [...]}}`. Each order is processed on its own: SuccessResponse (all done),
ErrorResponse with Head.ErrorCode "0" (the listed Positions failed), or a whole-call ErrorResponse.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway.backends.base import Backend
from gateway.backends.sellercenter.signing import SellerCenterSignature
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.canonical.schema import ADDRESS_FIELDS
from gateway.config import MASK, ConnectionSchema, ConnectionSettings, RegexList, SecretField
from gateway.errors import (
    BackendError,
    BackendFailure,
    BackendUnavailable,
    TranslationError,
)
from gateway.transport import BackendReply, OutboundRequest

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "update_order_information.json"
ACTION = "UpdateOrderInformation"
INT32_MAX = 2**31 - 1
#: canonical field -> the order's address member on the wire
ADDRESS_MEMBERS = {"billing_address": "address_billing", "shipping_address": "address_shipping"}

DEFAULT_NOT_FOUND_PATTERNS = [r"does not exist"]
DEFAULT_CONFLICT_PATTERNS = [r"is not in pending status"]


class SellerCenterSettingsSchema(ConnectionSchema):
    """Settings of a connection of kind `sellercenter`; `url` is the OMS API base, e.g. https://host/oms-api/."""

    api_key = SecretField(required=True)
    user_id = fields.String(load_default=None)
    max_orders_per_call = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    order_not_found_patterns = RegexList(defaults=DEFAULT_NOT_FOUND_PATTERNS)
    order_conflict_patterns = RegexList(defaults=DEFAULT_CONFLICT_PATTERNS)


#: an address as UpdateOrderInformation carries it: every member optional, strings only, nothing else
WireAddressSchema = Schema.from_dict({name: fields.String() for name in ADDRESS_FIELDS}, name="WireAddressSchema")


class WireOrderSchema(Schema):
    """One order of UpdateOrderInformation."""

    class Meta:
        unknown = RAISE

    id_sales_order = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=INT32_MAX))
    address_billing = fields.Nested(WireAddressSchema)
    address_shipping = fields.Nested(WireAddressSchema)


class WireRequestSchema(Schema):
    """The `Request` member: a non-empty list of orders."""

    class Meta:
        unknown = RAISE

    Orders = fields.List(fields.Nested(WireOrderSchema), required=True, validate=validate.Length(min=1))


class UpdateOrderInformationSchema(Schema):
    """The whole request body, the JSON-schema equivalent every outgoing document is checked against."""

    class Meta:
        unknown = RAISE

    Request = fields.Nested(WireRequestSchema, required=True)


@functools.cache
def _request_template() -> dict:
    return json.loads(TEMPLATE_PATH.read_text(encoding="utf-8"))


def _error_code(head: dict) -> str:
    """SellerCenter's numeric ErrorCode as the E-code its messages use (7 -> E007)."""
    code = str(head.get("ErrorCode", "")).strip()
    return f"E{int(code):03d}" if code.isdigit() and int(code) < 1000 else code or "unknown"


class SellerCenterBackend(Backend):
    """Rocket SellerCenter's OMS API: UpdateOrderInformation (address changes)."""

    kind: ClassVar[str] = "sellercenter"
    display_name: ClassVar[str] = "SellerCenter"
    settings_schema = SellerCenterSettingsSchema
    id_types: ClassVar = {"id_sales_order": "SellerCenter's integer id_sales_order (default)"}
    supported_fields: ClassVar = frozenset(ADDRESS_MEMBERS)
    example_updates: ClassVar = {
        "new shipping street and city": {"shipping_address": {"address1": "Hauptstraße 5", "city": "Hamburg"}},
        "billing phone": {"billing_address": {"phone": "+49 40 1234567"}},
    }

    def __init__(self, settings: ConnectionSettings) -> None:
        self.signer = SellerCenterSignature(settings.options["api_key"].reveal(), user_id=settings.options["user_id"])
        super().__init__(settings)
        self.template = _request_template()
        self.document_schema = UpdateOrderInformationSchema()
        self.url = f"{settings.url}?{urlencode({'Action': ACTION, 'ServiceName': 'OMS', 'Version': '1.0'})}"

    @classmethod
    def check_settings(cls, settings: ConnectionSettings) -> tuple[str, str] | None:
        """SellerCenter signs with an API key, which must not be empty."""
        if not settings.options["api_key"].reveal():
            return "api_key", "SellerCenter needs the API key issued to the OMS system."
        return None

    def make_auth(self) -> SellerCenterSignature:
        """Every request is signed with the connection's API key."""
        return self.signer

    def secret_values(self) -> list[str]:
        """The API key (and a password, should one be configured)."""
        return [*super().secret_values(), self.settings.options["api_key"].reveal()]

    def dry_run_view(self, request: OutboundRequest) -> OutboundRequest:
        """The request with the Timestamp it would carry now and its Signature masked."""
        return dataclasses.replace(request, url=self.signer.signed_url(request.url, signature=MASK))

    def check_backend_rules(self, update: OrderUpdate) -> dict[str, list[str]]:
        """The order id is SellerCenter's integer id_sales_order."""
        if not (update.order_id.isascii() and update.order_id.isdigit()) or int(update.order_id) > INT32_MAX:
            return {"id": ["SellerCenter identifies orders by the integer id_sales_order."]}
        return {}

    def render_request(self, updates: Sequence[OrderUpdate], *, password: str) -> OutboundRequest:
        """Fill the JSON template with one order per update and check it before it goes out."""
        document = copy.deepcopy(self.template)
        order_template = document["Request"]["Orders"].pop()
        for update in updates:
            order = copy.deepcopy(order_template)
            order["id_sales_order"] = int(update.order_id)
            for canonical, member in ADDRESS_MEMBERS.items():
                if canonical in update.changes:
                    order[member].update(update.changes[canonical])
                else:
                    del order[member]
            document["Request"]["Orders"].append(order)
        try:
            self.document_schema.load(document)
        except ValidationError as error:
            raise TranslationError(f"The rendered UpdateOrderInformation is invalid: {error.messages}") from None
        return OutboundRequest(
            method="POST",
            url=self.url,
            headers={"Accept": "application/json", "Content-Type": "application/json"},
            body=json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        )

    def _read_json(self, reply: BackendReply) -> dict:
        if reply.status in (401, 403):
            raise BackendFailure(f"The backend refused the gateway's credentials (HTTP {reply.status}).",
                                 connection=self.name, code=f"HTTP {reply.status}")
        try:
            document = json.loads(reply.body)
        except (UnicodeDecodeError, ValueError):
            kind = reply.content_type or "no content type"
            raise BackendFailure(f"The backend sent a reply that is not JSON (HTTP {reply.status}, {kind}).",
                                 connection=self.name, code=f"HTTP {reply.status}") from None
        if not isinstance(document, dict) or not ({"SuccessResponse", "ErrorResponse"} & document.keys()):
            raise BackendFailure("The backend's reply is neither a SuccessResponse nor an ErrorResponse.",
                                 connection=self.name, code=f"HTTP {reply.status}")
        return document

    def _whole_call_error(self, head: dict, reply: BackendReply) -> BackendError:
        code, message = _error_code(head), str(head.get("ErrorMessage") or "")
        details = {"connection": self.name, "code": code, "message": message or None}
        if code in ("E007", "E009"):
            what = "credentials (API key)" if code == "E007" else "IP address, which is not whitelisted"
            return BackendFailure(f"SellerCenter refused the gateway's own {what}: {message}", **details)
        if code in ("E003", "E004"):
            return BackendFailure(f"SellerCenter refused the request's timestamp; check the gateway's clock: {message}",
                                  **details)
        if code == "E429":
            error = BackendUnavailable(f"SellerCenter's rate limit was reached: {message}", **details)
            error.retry_after = reply.headers.get("Retry-After")
            return error
        return BackendFailure(f"SellerCenter refused the call ({code}): {message}", **details)

    def _item_error(self, item: dict) -> BackendError:
        code = item.get("ErrorCode")
        return self.refusal_by_message(str(item.get("ErrorMessage") or ""), None if code is None else str(code))

    def parse_reply(self, reply: BackendReply, updates: Sequence[OrderUpdate]) -> list[UpdateOutcome | BackendError]:
        """All updated, some failed (by 0-based Position), or the whole call refused (raised)."""
        document = self._read_json(reply)
        success = UpdateOutcome(backend_order_id=None, message="Order information updated.")
        if "SuccessResponse" in document:
            return [success for _ in updates]
        response = document["ErrorResponse"] if isinstance(document["ErrorResponse"], dict) else {}
        head = response.get("Head") if isinstance(response.get("Head"), dict) else {}
        if str(head.get("ErrorCode", "")).strip() != "0":
            raise self._whole_call_error(head, reply)
        body = response.get("Body")
        items = body.get(ACTION) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BackendFailure("SellerCenter reported failed items without listing them.", connection=self.name)
        results: list[UpdateOutcome | BackendError] = [success for _ in updates]
        for item in items:
            position = item.get("Position") if isinstance(item, dict) else None
            if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < len(updates):
                raise BackendFailure(f"SellerCenter reported a failed item at an unknown Position {position!r}.",
                                     connection=self.name)
            results[position] = self._item_error(item)
        return results
