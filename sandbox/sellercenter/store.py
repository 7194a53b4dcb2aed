"""The simulated SellerCenter's data: loaded from a JSON file, held in memory, changed under a lock."""

import dataclasses
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sandbox.sellercenter.model import (
    ADDRESS_MEMBERS,
    ORDER_STATUSES,
    PENDING,
    Address,
    ItemError,
    Order,
    OrderInformationUpdate,
)

ORDER_DOES_NOT_EXIST_TEXT = "Order with id_sales_order {id_sales_order} does not exist"
# Word for word the text of the specification's "items in wrong status" example.
ORDER_NOT_PENDING_TEXT = (
    "Address information cannot be changed since order with src_id: {src_id} is not in pending status"
)
NO_ADDRESS_INFORMATION_TEXT = "No address information given for order {id_sales_order}"


class UpdateRefused(Exception):
    """A business rule refuses the update of one order; the message goes into its item error."""


@dataclass(frozen=True)
class ApiUser:
    """A user of the OMS API and the key its calls are signed with."""

    user_id: str
    api_key: str


@dataclass
class _SellerCenterData:
    """Everything the store holds; replaced as a whole on reset."""

    api_users: tuple[ApiUser, ...]
    orders: dict[int, Order]


def _read_order(raw: dict) -> Order:
    """Read one order of the data file with its two addresses, each of which must have every field."""
    if raw["status"] not in ORDER_STATUSES:
        raise ValueError(f"Order {raw['id_sales_order']} has the unknown status {raw['status']!r}.")
    return Order(
        id_sales_order=raw["id_sales_order"],
        src_id=raw["src_id"],
        status=raw["status"],
        **{member: Address(**raw[member]) for member in ADDRESS_MEMBERS},
    )


def _read_data_file(path: Path) -> _SellerCenterData:
    """Read the JSON data file (API users, orders) into store data."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    orders: dict[int, Order] = {}
    for raw_order in raw["orders"]:
        order = _read_order(raw_order)
        if order.id_sales_order in orders:
            raise ValueError(f"{path}: id_sales_order {order.id_sales_order} appears twice.")
        orders[order.id_sales_order] = order
    return _SellerCenterData(
        api_users=tuple(ApiUser(**user) for user in raw["api_users"]),
        orders=orders,
    )


class SellerCenterStore:
    """The in-memory SellerCenter; every read and change holds one lock, so concurrent calls see whole updates."""

    def __init__(self, data_path: Path):
        self._data_path = data_path
        self._lock = threading.Lock()
        self._data = _read_data_file(data_path)

    def reset(self) -> None:
        """Forget every change and reload the data file."""
        data = _read_data_file(self._data_path)
        with self._lock:
            self._data = data

    def api_keys(self) -> tuple[str, ...]:
        """The API keys of every API user."""
        with self._lock:
            return tuple(user.api_key for user in self._data.api_users)

    def snapshot(self) -> tuple[Order, ...]:
        """Copy the current orders, by id_sales_order."""
        with self._lock:
            return tuple(self._data.orders[number] for number in sorted(self._data.orders))

    def find_order(self, id_sales_order: int) -> Order | None:
        """The order with this id_sales_order, if there is one."""
        with self._lock:
            return self._data.orders.get(id_sales_order)

    def update_order_information(self, updates: Iterable[OrderInformationUpdate]) -> list[ItemError]:
        """Apply each update on its own, in request order; return an error for each one refused (0-based)."""
        errors = []
        with self._lock:
            for position, update in enumerate(updates):
                try:
                    order = _plan_update(self._data.orders.get(update.id_sales_order), update)
                except UpdateRefused as refusal:
                    errors.append(ItemError(position=position, message=str(refusal)))
                    continue
                self._data.orders[order.id_sales_order] = order
        return errors


def _plan_update(order: Order | None, update: OrderInformationUpdate) -> Order:
    """Check the update against the rules and return the order as it will be after it."""
    if order is None:
        raise UpdateRefused(ORDER_DOES_NOT_EXIST_TEXT.format(id_sales_order=update.id_sales_order))
    if order.status != PENDING:
        raise UpdateRefused(ORDER_NOT_PENDING_TEXT.format(src_id=order.src_id))
    changes = {member: getattr(update, member) for member in ADDRESS_MEMBERS if getattr(update, member) is not None}
    # Neither address, or an address sent without a single field, is a request that changes nothing.
    if not changes or not all(changes.values()):
        raise UpdateRefused(NO_ADDRESS_INFORMATION_TEXT.format(id_sales_order=update.id_sales_order))
    # Only the fields sent change; the two addresses change independently.
    return dataclasses.replace(
        order,
        **{member: dataclasses.replace(getattr(order, member), **fields) for member, fields in changes.items()},
    )
