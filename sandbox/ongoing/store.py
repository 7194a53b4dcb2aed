"""The simulated Ongoing WMS's data: loaded from a JSON file, held in memory, changed under a lock.

Every committed change that fires an order webhook becomes an OrderEvent; the events are handed to the publisher
after the lock is released, one batch after another, in the order of their event ids.
"""

import dataclasses
import hmac
import itertools
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

from sandbox.ongoing.model import (
    ORDER_CREATED,
    ORDER_IDENTIFICATION_TYPES,
    ORDER_PICKED,
    ORDER_STATUS_CHANGED,
    PROCESS_ORDER_IDENTIFICATION_TYPES,
    CustomerOrder,
    CustomerOrderLine,
    GoodsOwner,
    Order,
    OrderChanges,
    OrderEvent,
    OrderIdentification,
    OrderLine,
    ProcessOrderResult,
    UpdateOrderResult,
    WayOfDeliveryType,
)
from sandbox.ongoing.new_order import DEFAULT_NEW_ORDER_STATUS

ORDER_NOT_FOUND = "No order found with {identification_type} '{value}'."
IDENTIFICATION_VALUE_MISSING = "{element} is required when OrderIdentificationType is {identification_type}."
STATUS_WITH_UNPICKED_GOODS = (
    "Updates to statuses above 399 are not allowed if the order has allocated but not picked goods."
)
CANCELLATION_REFUSED = "UpdateOrder must not be used to cancel an order; use ProcessOrder with OrderOperation Remove."
STATUS_UNKNOWN = "Order status {status} does not exist."
ORDER_NUMBER_EMPTY = "GoodsOwnerOrderNumber must not be empty."
ORDER_NUMBER_IN_USE = "Order number '{order_number}' is already in use."
WAY_OF_DELIVERY_CODE_MISSING = "WayOfDeliveryTypeCode is required."
WAY_OF_DELIVERY_TYPE_UNKNOWN = "Way of delivery type '{code}' does not exist."
GOODS_OWNER_UNKNOWN = "Goods owner '{code}' does not exist."
PICKING_BEGUN = "The order cannot be changed by ProcessOrder: the warehouse has begun picking it."
ORDER_CANCELLED = "The order cannot be changed by ProcessOrder: it is cancelled."
ORDER_EXISTS = "An order with {identification_type} '{value}' already exists."
ORDER_INFO_MISSING = "The request holds no co/OrderInfo."
PROCESS_ORDER_VALUE_MISSING = "{element} is required when OrderIdentification is {identification_type}."
LINE_ARTICLE_MISSING = "Order line {position} has no ArticleNumber."
LINE_QUANTITY_NOT_POSITIVE = "Order line {position}: NumberOfItems must be greater than 0."
LINE_CODE_REPEATED = "ExternalOrderLineCode '{code}' is on more than one order line."

PICKED_STATUS = 400
CANCELLED_STATUS = 1000


class UpdateRefused(Exception):
    """A business rule refuses the update (or ProcessOrder's change); the message is what the service answers with."""


class NewOrderInvalid(Exception):
    """A new order names something the warehouse does not know; `field` is the member at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class OrderNumberTaken(Exception):
    """Another order of the same goods owner already has the new order's number."""


@dataclass(frozen=True)
class OngoingSnapshot:
    """A consistent read-only copy of the store's data at one moment."""

    statuses: Mapping[int, str]
    way_of_delivery_types: Mapping[str, WayOfDeliveryType]
    orders: tuple[Order, ...]


@dataclass
class _OngoingData:
    """Everything the store holds; replaced as a whole on reset."""

    statuses: dict[int, str]
    goods_owners: dict[str, GoodsOwner]
    way_of_delivery_types: dict[str, WayOfDeliveryType]
    orders: dict[int, Order]


def _read_goods_owner(raw_owner: Mapping, position: int) -> GoodsOwner:
    """A goods owner of the data file; without an id it takes its 1-based position, without a name its code."""
    return GoodsOwner(**{"id": position, "name": raw_owner["code"], **raw_owner})


def _read_data_file(path: Path) -> _OngoingData:
    """Read the JSON data file (statuses, goods owners, ways of delivery, orders) into store data."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    goods_owners = [_read_goods_owner(owner, position) for position, owner in enumerate(raw["goods_owners"], 1)]
    orders = [
        Order(**{**order, "lines": tuple(OrderLine(**line) for line in order.get("lines", ()))})
        for order in raw["orders"]
    ]
    return _OngoingData(
        statuses={int(status["code"]): status["name"] for status in raw["order_statuses"]},
        goods_owners={owner.code: owner for owner in goods_owners},
        way_of_delivery_types={kind["code"]: WayOfDeliveryType(**kind) for kind in raw["way_of_delivery_types"]},
        orders={order.system_id: order for order in orders},
    )


class OngoingStore:
    """The in-memory warehouse; every read and change holds one lock, so concurrent requests see whole updates."""

    def __init__(
        self,
        data_path: Path,
        publish_order_events: Callable[[Sequence[OrderEvent]], None] | None = None,
        first_event_id: int = 1,
    ):
        self._data_path = data_path
        self._lock = threading.Lock()
        self._data = _read_data_file(data_path)
        self._publish_order_events = publish_order_events
        # Event ids survive a reset, as a receiver deduplicating by webhookEventId would drop a reused one.
        self._event_ids = itertools.count(first_event_id)
        self._unpublished_events: deque[OrderEvent] = deque()
        self._publish_lock = threading.Lock()

    def reset(self) -> None:
        """Forget every change and reload the data file."""
        data = _read_data_file(self._data_path)
        with self._lock:
            self._data = data
            self._unpublished_events.clear()

    def authenticate(self, goods_owner_code: str, user_name: str, password: str) -> GoodsOwner | None:
        """Return the goods owner whose code, user name and password all match, else None."""
        with self._lock:
            owner = self._data.goods_owners.get(goods_owner_code)
        if owner is None or owner.user_name != user_name:
            return None
        if not hmac.compare_digest(owner.password.encode(), password.encode()):
            return None
        return owner

    def snapshot(self) -> OngoingSnapshot:
        """Copy the current statuses, ways of delivery and orders (sorted by SystemId)."""
        with self._lock:
            return OngoingSnapshot(
                statuses=MappingProxyType(dict(self._data.statuses)),
                way_of_delivery_types=MappingProxyType(dict(self._data.way_of_delivery_types)),
                orders=tuple(self._data.orders[system_id] for system_id in sorted(self._data.orders)),
            )

    def update_order(
        self, goods_owner: GoodsOwner, identification: OrderIdentification, changes: OrderChanges
    ) -> UpdateOrderResult:
        """Find the goods owner's order and apply every change, or none of them if any rule refuses one."""
        with self._lock:
            result = self._apply_update(goods_owner, identification, changes)
        self._publish_recorded_events()
        return result

    def create_order(
        self,
        goods_owner_code: str,
        order_number: str,
        order_id: str | None,
        status: int,
        lines: Sequence[OrderLine],
    ) -> Order:
        """Add an order with the next SystemId, as if it had come into the warehouse, and fire its webhook."""
        with self._lock:
            goods_owner = self._data.goods_owners.get(goods_owner_code)
            if goods_owner is None:
                raise NewOrderInvalid("goods_owner_code", GOODS_OWNER_UNKNOWN.format(code=goods_owner_code))
            if status not in self._data.statuses:
                raise NewOrderInvalid("status", STATUS_UNKNOWN.format(status=status))
            if self._order_number_in_use(goods_owner_code, order_number, except_system_id=None):
                raise OrderNumberTaken(ORDER_NUMBER_IN_USE.format(order_number=order_number))
            order = Order(
                system_id=max(self._data.orders, default=0) + 1,
                goods_owner_code=goods_owner_code,
                order_number=order_number,
                order_id=order_id,
                status=status,
                lines=tuple(lines),
            )
            self._data.orders[order.system_id] = order
            self._record_event(ORDER_CREATED, order, goods_owner)
        self._publish_recorded_events()
        return order

    def process_order(self, goods_owner: GoodsOwner, order: CustomerOrder | None) -> ProcessOrderResult:
        """Create, update or remove (cancel) the goods owner's order as ProcessOrder's OrderOperation says."""
        with self._lock:
            if order is None:
                result = ProcessOrderResult(
                    success=False, error_message=ORDER_INFO_MISSING, order_number=None, order_id=0
                )
            else:
                result = self._apply_process_order(goods_owner, order)
        self._publish_recorded_events()
        return result

    def _apply_update(
        self, goods_owner: GoodsOwner, identification: OrderIdentification, changes: OrderChanges
    ) -> UpdateOrderResult:
        """Find and change the order, and record the webhooks the change fires; the caller holds the lock."""
        try:
            order = self._find_order(goods_owner, identification)
        except UpdateRefused as refusal:
            return UpdateOrderResult(success=False, message=str(refusal), order_id=None)
        try:
            updated_order, new_way_of_delivery_type = self._plan_update(order, changes)
        except UpdateRefused as refusal:
            return UpdateOrderResult(success=False, message=str(refusal), order_id=order.system_id)
        self._data.orders[order.system_id] = updated_order
        if new_way_of_delivery_type is not None:
            self._data.way_of_delivery_types[new_way_of_delivery_type.code] = new_way_of_delivery_type
        if updated_order.status != order.status:
            self._record_event(ORDER_STATUS_CHANGED, updated_order, goods_owner)
            if updated_order.status >= PICKED_STATUS and updated_order.has_picked_goods:
                self._record_event(ORDER_PICKED, updated_order, goods_owner)
        return UpdateOrderResult(success=True, message=None, order_id=order.system_id)

    def _record_event(self, trigger: str, order: Order, goods_owner: GoodsOwner) -> None:
        """Keep an event to publish once the lock is released; the caller holds the lock."""
        if self._publish_order_events is None:
            return
        self._unpublished_events.append(
            OrderEvent(
                trigger=trigger,
                event_id=next(self._event_ids),
                occurred_at=datetime.now(UTC),
                order=order,
                goods_owner=goods_owner,
            )
        )

    def _publish_recorded_events(self) -> None:
        """Hand every recorded event to the publisher, outside the data lock and in the order they happened."""
        if self._publish_order_events is None:
            return
        # Events join the deque in id order under the data lock; taking them out and publishing under one lock
        # keeps that order even when two requests publish at once.
        with self._publish_lock:
            events = []
            while self._unpublished_events:
                events.append(self._unpublished_events.popleft())
            if events:
                self._publish_order_events(events)

    def _find_order(self, goods_owner: GoodsOwner, identification: OrderIdentification) -> Order:
        """Return the goods owner's order the identification points at."""
        attribute, element = ORDER_IDENTIFICATION_TYPES[identification.identification_type]
        if identification.value is None:
            raise UpdateRefused(
                IDENTIFICATION_VALUE_MISSING.format(
                    element=element, identification_type=identification.identification_type
                )
            )
        for order in self._data.orders.values():
            if order.goods_owner_code == goods_owner.code and getattr(order, attribute) == identification.value:
                return order
        raise UpdateRefused(
            ORDER_NOT_FOUND.format(identification_type=identification.identification_type, value=identification.value)
        )

    def _plan_update(self, order: Order, changes: OrderChanges) -> tuple[Order, WayOfDeliveryType | None]:
        """Check every change against the rules and return the updated order and any way of delivery to create."""
        replacements: dict[str, object] = {}
        if changes.status is not None:
            self._check_status(order, changes.status)
            replacements["status"] = changes.status
        if changes.order_number is not None:
            self._check_order_number(order, changes.order_number)
            replacements["order_number"] = changes.order_number
        replacements.update(changes.fields)
        new_way_of_delivery_type = None
        if changes.way_of_delivery_type is not None:
            change = changes.way_of_delivery_type
            if not change.code:
                raise UpdateRefused(WAY_OF_DELIVERY_CODE_MISSING)
            if change.code not in self._data.way_of_delivery_types:
                if change.operation != "FindOrCreate":
                    raise UpdateRefused(WAY_OF_DELIVERY_TYPE_UNKNOWN.format(code=change.code))
                new_way_of_delivery_type = WayOfDeliveryType(code=change.code, name=change.name or change.code)
            replacements["way_of_delivery_type_code"] = change.code
        return dataclasses.replace(order, **replacements), new_way_of_delivery_type

    def _check_status(self, order: Order, status: int) -> None:
        """Refuse cancelling, unknown statuses, and picked-or-above while goods are allocated but not picked."""
        if status == CANCELLED_STATUS:
            raise UpdateRefused(CANCELLATION_REFUSED)
        if status not in self._data.statuses:
            raise UpdateRefused(STATUS_UNKNOWN.format(status=status))
        if status >= PICKED_STATUS and order.has_allocated_unpicked_goods:
            raise UpdateRefused(STATUS_WITH_UNPICKED_GOODS)

    def _check_order_number(self, order: Order, order_number: str) -> None:
        """Refuse an empty order number or one another order of the same goods owner already has."""
        if not order_number:
            raise UpdateRefused(ORDER_NUMBER_EMPTY)
        if self._order_number_in_use(order.goods_owner_code, order_number, except_system_id=order.system_id):
            raise UpdateRefused(ORDER_NUMBER_IN_USE.format(order_number=order_number))

    def _order_number_in_use(self, goods_owner_code: str, order_number: str, except_system_id: int | None) -> bool:
        """Whether an order of the goods owner, other than `except_system_id`, has the order number."""
        return any(
            other.system_id != except_system_id
            and other.goods_owner_code == goods_owner_code
            and other.order_number == order_number
            for other in self._data.orders.values()
        )

    def _apply_process_order(self, goods_owner: GoodsOwner, order: CustomerOrder) -> ProcessOrderResult:
        """Run one ProcessOrder on the data and record the webhooks it fires; the caller holds the lock."""
        target = None
        try:
            target = self._find_process_order_target(goods_owner, order.identification)
            if order.operation == "Remove":
                return self._remove_order(goods_owner, order.identification, target)
            if target is None:
                if order.operation == "Update":
                    raise UpdateRefused(
                        ORDER_NOT_FOUND.format(
                            identification_type=order.identification.identification_type,
                            value=order.identification.value,
                        )
                    )
                return self._create_from_process_order(goods_owner, order)
            if order.operation == "Create":
                if order.identification.identification_type == "GoodsOwnerOrderNumber":
                    raise UpdateRefused(ORDER_NUMBER_IN_USE.format(order_number=target.order_number))
                raise UpdateRefused(
                    ORDER_EXISTS.format(
                        identification_type=order.identification.identification_type,
                        value=order.identification.value,
                    )
                )
            return self._replace_from_process_order(target, order)
        except UpdateRefused as refusal:
            return ProcessOrderResult(
                success=False,
                error_message=str(refusal),
                order_number=None if target is None else target.order_number,
                order_id=0 if target is None else target.system_id,
            )

    def _find_process_order_target(self, goods_owner: GoodsOwner, identification: OrderIdentification) -> Order | None:
        """The goods owner's order OrderInfo identifies, or None; refused if the identifying value is missing."""
        attribute, element = PROCESS_ORDER_IDENTIFICATION_TYPES[identification.identification_type]
        if identification.value is None:
            raise UpdateRefused(
                PROCESS_ORDER_VALUE_MISSING.format(
                    element=element, identification_type=identification.identification_type
                )
            )
        if attribute is None:
            return None
        for order in self._data.orders.values():
            if order.goods_owner_code == goods_owner.code and getattr(order, attribute) == identification.value:
                return order
        return None

    def _remove_order(
        self, goods_owner: GoodsOwner, identification: OrderIdentification, order: Order | None
    ) -> ProcessOrderResult:
        """Cancel the order unless picking has begun; cancelling a cancelled order again changes nothing."""
        if order is None:
            raise UpdateRefused(
                ORDER_NOT_FOUND.format(
                    identification_type=identification.identification_type, value=identification.value
                )
            )
        if order.status != CANCELLED_STATUS:
            self._check_picking_not_begun(order)
            cancelled = dataclasses.replace(order, status=CANCELLED_STATUS)
            self._data.orders[order.system_id] = cancelled
            self._record_event(ORDER_STATUS_CHANGED, cancelled, goods_owner)
        return ProcessOrderResult(
            success=True, error_message=None, order_number=order.order_number, order_id=order.system_id
        )

    def _create_from_process_order(self, goods_owner: GoodsOwner, order: CustomerOrder) -> ProcessOrderResult:
        """Add the order with the next SystemId and fire "order created"; refused on a missing or taken number."""
        if not order.order_number:
            raise UpdateRefused(ORDER_NUMBER_EMPTY)
        if self._order_number_in_use(goods_owner.code, order.order_number, except_system_id=None):
            raise UpdateRefused(ORDER_NUMBER_IN_USE.format(order_number=order.order_number))
        # OrderStatusCreated is 0 when it was not sent.
        status = order.status_created or DEFAULT_NEW_ORDER_STATUS
        if status not in self._data.statuses:
            raise UpdateRefused(STATUS_UNKNOWN.format(status=status))
        created = Order(
            system_id=max(self._data.orders, default=0) + 1,
            goods_owner_code=goods_owner.code,
            order_number=order.order_number,
            order_id=order.order_id,
            status=status,
            lines=_order_lines(order.lines or ()),
            customer=order.customer,
        )
        self._data.orders[created.system_id] = created
        self._record_event(ORDER_CREATED, created, goods_owner)
        return ProcessOrderResult(
            success=True, error_message=None, order_number=created.order_number, order_id=created.system_id
        )

    def _replace_from_process_order(self, order: Order, changes: CustomerOrder) -> ProcessOrderResult:
        """Replace the numbers, customer and lines that were sent, unless picking has begun; the status stays."""
        if order.status == CANCELLED_STATUS:
            raise UpdateRefused(ORDER_CANCELLED)
        self._check_picking_not_begun(order)
        replacements: dict[str, object] = {}
        if changes.order_number is not None and changes.order_number != order.order_number:
            self._check_order_number(order, changes.order_number)
            replacements["order_number"] = changes.order_number
        if changes.order_id is not None:
            replacements["order_id"] = changes.order_id
        if changes.customer is not None:
            replacements["customer"] = changes.customer
        if changes.lines is not None:
            replacements["lines"] = _order_lines(changes.lines)
        updated = dataclasses.replace(order, **replacements)
        self._data.orders[order.system_id] = updated
        return ProcessOrderResult(
            success=True, error_message=None, order_number=updated.order_number, order_id=updated.system_id
        )

    @staticmethod
    def _check_picking_not_begun(order: Order) -> None:
        """Refuse the change once the warehouse has begun picking: Picked or later, or any item picked."""
        if order.status >= PICKED_STATUS or order.has_picked_goods:
            raise UpdateRefused(PICKING_BEGUN)


def _order_lines(lines: Sequence[CustomerOrderLine]) -> tuple[OrderLine, ...]:
    """The order's lines as ordered, nothing allocated or picked; refused without an article or a quantity."""
    codes: set[str] = set()
    order_lines = []
    for position, line in enumerate(lines, 1):
        if line.external_order_line_code is not None:
            if line.external_order_line_code in codes:
                raise UpdateRefused(LINE_CODE_REPEATED.format(code=line.external_order_line_code))
            codes.add(line.external_order_line_code)
        if not line.article_number:
            raise UpdateRefused(LINE_ARTICLE_MISSING.format(position=position))
        if line.number_of_items <= 0:
            raise UpdateRefused(LINE_QUANTITY_NOT_POSITIVE.format(position=position))
        order_lines.append(
            OrderLine(article=line.article_number, ordered=_quantity(line.number_of_items), allocated=0, picked=0)
        )
    return tuple(order_lines)


def _quantity(number_of_items: Decimal) -> int | Decimal:
    """A whole number of items as an int, a fraction as it was sent."""
    return int(number_of_items) if number_of_items == number_of_items.to_integral_value() else number_of_items
