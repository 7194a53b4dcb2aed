"""The simulated CONNECT's data: loaded from a JSON file, held in memory, changed by updateOrderStatus under a lock."""

import dataclasses
import hmac
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sandbox.speed4trade.model import (
    ACKNOWLEDGED,
    LOCKED_STATUSES,
    PAID,
    SHIPPED,
    Mandator,
    Order,
    OrderReport,
    OrderStatusUpdate,
    PaymentInformation,
    ShippingInformation,
)

# The sandbox's own return codes; CONNECT does not publish the meaning of its negative codes.
RETURN_CODE_OK = 0
ORDER_NOT_FOUND = -1
ORDER_NOT_UPDATABLE = -2
INFORMATION_WITHOUT_STATUS = -3
MANDATOR_UNKNOWN = -4
INFORMATION_INCOMPLETE = -5

ORDER_NOT_FOUND_TEXT = "Order not found: no order with {significant_key} '{value}' for mandator {mandator_id}."
ORDER_NOT_UPDATABLE_TEXT = "Order {order_number} has status {status} and cannot be updated."
INFORMATION_WITHOUT_STATUS_TEXT = "{information} information can only be transmitted together with status {status}."
MANDATOR_UNKNOWN_TEXT = "Unknown mandator {mandator_id}."
SHIPPING_PROVIDER_MISSING_TEXT = (
    "Shipping information needs shipping_provider_identifier or shipping_provider_external_id."
)
PAYMENT_STATUS_NOT_ONE_TEXT = (
    "Payment information needs exactly one of payment_status_id and payment_status_identifier."
)


class UpdateRefused(Exception):
    """A business rule refuses the update of one order; code and description go into its report."""

    def __init__(self, return_code: int, description: str):
        super().__init__(description)
        self.return_code = return_code
        self.description = description


@dataclass
class _ConnectData:
    """Everything the store holds; replaced as a whole on reset."""

    user: str
    password: str
    mandators: dict[int, Mandator]
    orders: dict[int, Order]


def _read_order(raw: dict) -> Order:
    """Read one order of the data file, with its shipping and payment informations."""
    return Order(
        **{
            **raw,
            "shipping_informations": tuple(
                ShippingInformation(**information) for information in raw.get("shipping_informations", ())
            ),
            "payment_informations": tuple(
                PaymentInformation(**information) for information in raw.get("payment_informations", ())
            ),
        }
    )


def _read_data_file(path: Path) -> _ConnectData:
    """Read the JSON data file (API credentials, mandators, orders) into store data."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    orders: dict[int, Order] = {}
    for raw_order in raw["orders"]:
        order = _read_order(raw_order)
        # Order numbers are unique across mandators here, so the JSON view can address an order by its number.
        if order.order_number in orders:
            raise ValueError(f"{path}: order number {order.order_number} appears twice.")
        orders[order.order_number] = order
    return _ConnectData(
        user=raw["credentials"]["user"],
        password=raw["credentials"]["password"],
        mandators={mandator["mandator_id"]: Mandator(**mandator) for mandator in raw["mandators"]},
        orders=orders,
    )


def _now_iso8601() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class ConnectStore:
    """The in-memory CONNECT; every read and change holds one lock, so concurrent requests see whole updates."""

    def __init__(self, data_path: Path):
        self._data_path = data_path
        self._lock = threading.Lock()
        self._data = _read_data_file(data_path)

    def reset(self) -> None:
        """Forget every change and reload the data file."""
        data = _read_data_file(self._data_path)
        with self._lock:
            self._data = data

    def authenticate(self, user: str, password: str) -> bool:
        """Whether user name and password are those of the API user."""
        with self._lock:
            expected_user, expected_password = self._data.user, self._data.password
        user_matches = hmac.compare_digest(user.encode(), expected_user.encode())
        password_matches = hmac.compare_digest(password.encode(), expected_password.encode())
        return user_matches and password_matches

    def snapshot(self) -> tuple[Order, ...]:
        """Copy the current orders of every mandator, by order number."""
        with self._lock:
            return tuple(self._data.orders[number] for number in sorted(self._data.orders))

    def update_order_statuses(self, updates: Iterable[OrderStatusUpdate]) -> list[OrderReport]:
        """Apply each update on its own, in request order, and report on each; a refused update changes nothing."""
        with self._lock:
            return [self._update_order_status(update) for update in updates]

    def _update_order_status(self, update: OrderStatusUpdate) -> OrderReport:
        """Find the order and apply the update as a whole, or report why it is refused."""
        try:
            order = self._find_order(update)
            updated_order = _plan_update(order, update)
        except UpdateRefused as refusal:
            return OrderReport(return_code=refusal.return_code, error_description=refusal.description)
        self._data.orders[order.order_number] = updated_order
        return OrderReport(return_code=RETURN_CODE_OK)

    def _find_order(self, update: OrderStatusUpdate) -> Order:
        """Return the mandator's order that the update's significant key points at."""
        if update.mandator_id not in self._data.mandators:
            raise UpdateRefused(MANDATOR_UNKNOWN, MANDATOR_UNKNOWN_TEXT.format(mandator_id=update.mandator_id))
        value, wanted = _significant_key_value(update)
        if wanted:
            for order in self._data.orders.values():
                if order.mandator_id == update.mandator_id and all(
                    getattr(order, attribute) == expected for attribute, expected in wanted.items()
                ):
                    return order
        raise UpdateRefused(
            ORDER_NOT_FOUND,
            ORDER_NOT_FOUND_TEXT.format(
                significant_key=update.significant_key, value=value, mandator_id=update.mandator_id
            ),
        )


def _significant_key_value(update: OrderStatusUpdate) -> tuple[str, dict[str, object]]:
    """The significant key's value as the request names it, and the order attributes it must match (empty if unset)."""
    number = update.keys.get("order_number", "").strip()
    if update.significant_key == "order_number":
        return number, ({"order_number": int(number)} if number else {})
    if update.significant_key == "order_number_and_prefix":
        prefix = update.keys.get("order_number_prefix", "")
        wanted = {"order_number": int(number), "order_number_prefix": prefix} if number and prefix else {}
        return prefix + number, wanted
    value = update.keys.get(update.significant_key, "")
    return value, ({update.significant_key: value} if value else {})


def _plan_update(order: Order, update: OrderStatusUpdate) -> Order:
    """Check the update against the rules and return the order as it will be after it."""
    if order.status in LOCKED_STATUSES:
        raise UpdateRefused(
            ORDER_NOT_UPDATABLE, ORDER_NOT_UPDATABLE_TEXT.format(order_number=order.order_number, status=order.status)
        )
    _check_information_fits_status(update)
    _check_information_complete(update)
    if order.status == update.status:
        # Information for a status the order already has is ignored, as the specification says.
        return order
    replacements: dict[str, object] = {"status": update.status}
    if update.status == SHIPPED:
        replacements["shipping_informations"] = order.shipping_informations + update.shipping_informations
    elif update.status == PAID:
        replacements["payment_informations"] = order.payment_informations + update.payment_informations
    elif update.status == ACKNOWLEDGED:
        replacements["erp_exported"] = True
        # The order keeps one export time; of several acknowledgement informations the last one counts.
        replacements["export_time"] = update.export_times[-1] if update.export_times else _now_iso8601()
    return dataclasses.replace(order, **replacements)


def _check_information_fits_status(update: OrderStatusUpdate) -> None:
    """Refuse shipping, payment or acknowledgement information sent with any status but its own."""
    for information, status, present in (
        ("Shipping", SHIPPED, bool(update.shipping_informations)),
        ("Payment", PAID, bool(update.payment_informations)),
        ("Acknowledgement", ACKNOWLEDGED, bool(update.export_times)),
    ):
        if present and update.status != status:
            raise UpdateRefused(
                INFORMATION_WITHOUT_STATUS,
                INFORMATION_WITHOUT_STATUS_TEXT.format(information=information, status=status),
            )


def _check_information_complete(update: OrderStatusUpdate) -> None:
    """Refuse a package without a shipping provider, and a payment with neither or both status variants."""
    for shipping in update.shipping_informations:
        if not (shipping.shipping_provider_identifier or shipping.shipping_provider_external_id):
            raise UpdateRefused(INFORMATION_INCOMPLETE, SHIPPING_PROVIDER_MISSING_TEXT)
    for payment in update.payment_informations:
        if (payment.payment_status_id is None) == (payment.payment_status_identifier is None):
            raise UpdateRefused(INFORMATION_INCOMPLETE, PAYMENT_STATUS_NOT_ONE_TEXT)
