"""SellerCenter's UpdateOrderInformation: address changes as a signed JSON call (specs/002).

Wire facts (reference/sellercenter/NOTES.md): `POST <base>/oms-api/?Action=UpdateOrderInformation
&ServiceName=OMS&Timestamp=...&Version=1.0&Signature=...` with `Accept: application/json` and
`{"Request": {"Orders": [...]}}`. Each order is processed on its own: SuccessResponse (all done),
ErrorResponse with Head.ErrorCode "0" (the listed Positions failed), or a whole-call ErrorResponse.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from gateway.backends.base import Backend, Credentials, Operation
from gateway.canonical import OrderUpdate, UpdateOutcome
from gateway.canonical.schema import ADDRESS_FIELDS, SparseNested
from gateway.errors import BackendError, BackendFailure, BackendUnavailable, TranslationError
from gateway.replies import JSON
from gateway.safejson import parse_ascii_int
from gateway.transport import OutboundRequest

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "update_order_information.json"
ACTION = "UpdateOrderInformation"
INT32_MAX = 2**31 - 1
#: canonical field -> the order's address member on the wire
ADDRESS_MEMBERS = {"billing_address": "address_billing", "shipping_address": "address_shipping"}

#: an address as UpdateOrderInformation carries it: every member optional, strings only, nothing else
WireAddressSchema = Schema.from_dict({name: fields.String() for name in ADDRESS_FIELDS}, name="WireAddressSchema")


class WireOrderSchema(Schema):
    """One order of UpdateOrderInformation."""

    class Meta:
        unknown = RAISE

    id_sales_order = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=INT32_MAX))
    address_billing = SparseNested(WireAddressSchema)
    address_shipping = SparseNested(WireAddressSchema)


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
    """SellerCenter's numeric ErrorCode as the E-code its messages use (7 -> E007); anything else as sent."""
    code = str(head.get("ErrorCode", "")).strip()
    number = parse_ascii_int(code, max_digits=3)
    return f"E{number:03d}" if number is not None and 0 <= number < 1000 else code or "unknown"


class UpdateOrderInformation(Operation):
    """UpdateOrderInformation: billing and shipping address members, many orders per call."""

    name: ClassVar[str] = ACTION
    carries: ClassVar = frozenset(ADDRESS_MEMBERS)
    reply_format: ClassVar[str] = JSON
    # Idempotent: the members sent replace the order's, so sending them twice changes nothing more.
    idempotent: ClassVar[bool] = True

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.template = _request_template()
        self.document_schema = UpdateOrderInformationSchema()
        self.url = f"{self.settings.url}?{urlencode({'Action': ACTION, 'ServiceName': 'OMS', 'Version': '1.0'})}"

    def render(self, updates: Sequence[OrderUpdate], credentials: Credentials) -> OutboundRequest:
        """Fill the JSON template with one order per update and check it before it goes out.

        The call is signed with the API key by the connection's transport (SellerCenterSignature).
        """
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

    def _whole_call_error(self, head: dict, retry_after: str | None) -> BackendError:
        code, message = _error_code(head), str(head.get("ErrorMessage") or "")
        details = {"connection": self.backend.name, "code": code, "message": message or None}
        if code in ("E007", "E009"):
            what = "credentials (API key)" if code == "E007" else "IP address, which is not whitelisted"
            return BackendFailure(f"SellerCenter refused the gateway's own {what}: {message}", **details)
        if code in ("E003", "E004"):
            return BackendFailure(f"SellerCenter refused the request's timestamp; check the gateway's clock: {message}",
                                  **details)
        if code == "E429":
            return BackendUnavailable(f"SellerCenter's rate limit was reached: {message}", retry_after=retry_after,
                                      **details)
        return BackendFailure(f"SellerCenter refused the call ({code}): {message}", **details)

    def _item_error(self, item: dict) -> BackendError:
        code = item.get("ErrorCode")
        return self.backend.refusal_by_message(str(item.get("ErrorMessage") or ""),
                                               None if code is None else str(code))

    def parse(self, payload: Any, updates: Sequence[OrderUpdate], *,
              retry_after: str | None = None) -> list[UpdateOutcome | BackendError]:
        """All updated, some failed (by 0-based Position), or the whole call refused (raised)."""
        name = self.backend.name
        if not isinstance(payload, dict) or not ({"SuccessResponse", "ErrorResponse"} & payload.keys()):
            raise BackendFailure("The backend's reply is neither a SuccessResponse nor an ErrorResponse.",
                                 connection=name)
        success = UpdateOutcome(backend_order_id=None, message="Order information updated.")
        if "SuccessResponse" in payload:
            return [success for _ in updates]
        response = payload["ErrorResponse"] if isinstance(payload["ErrorResponse"], dict) else {}
        head = response.get("Head") if isinstance(response.get("Head"), dict) else {}
        if str(head.get("ErrorCode", "")).strip() != "0":
            raise self._whole_call_error(head, retry_after)
        body = response.get("Body")
        items = body.get(ACTION) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BackendFailure("SellerCenter reported failed items without listing them.", connection=name)
        results: list[UpdateOutcome | BackendError] = [success for _ in updates]
        for item in items:
            position = item.get("Position") if isinstance(item, dict) else None
            if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < len(updates):
                raise BackendFailure(f"SellerCenter reported a failed item at an unknown Position {position!r}.",
                                     connection=name)
            results[position] = self._item_error(item)
        return results
