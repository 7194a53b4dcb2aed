"""What the simulated Ongoing WMS keeps (goods owners, orders, ways of delivery) and what its SOAP calls ask of it."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType

# OrderIdentificationType -> (Order attribute it matches, element of OrderUpdateIdentification carrying the value).
# There is no SystemId element: the SystemId travels in OrderId.
ORDER_IDENTIFICATION_TYPES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "GoodsOwnerOrderNumber": ("order_number", "GoodsOwnerOrderNumber"),
        "GoodsOwnerOrderId": ("order_id", "GoodsOwnerOrderId"),
        "SystemId": ("system_id", "OrderId"),
    }
)

# ProcessOrder's OrderIdentificationType -> (Order attribute it matches, OrderInfo element carrying the value).
# The sandbox keeps no external order code or reference number, so those find no order; OrderInfoClass has no
# element for an external order code at all.
PROCESS_ORDER_IDENTIFICATION_TYPES: Mapping[str, tuple[str | None, str | None]] = MappingProxyType(
    {
        "ExternalOrderCode": (None, None),
        "GoodsOwnerOrderNumber": ("order_number", "GoodsOwnerOrderNumber"),
        "ReferenceNumber": (None, "ReferenceNumber"),
        "SystemId": ("system_id", "OrderId"),
        "GoodsOwnerOrderId": ("order_id", "GoodsOwnerOrderId"),
    }
)


# What fires Ongoing's order webhooks (specs/004).
ORDER_CREATED = "created"
ORDER_STATUS_CHANGED = "status_changed"
ORDER_PICKED = "picked"
ORDER_WEBHOOK_TRIGGERS = (ORDER_CREATED, ORDER_STATUS_CHANGED, ORDER_PICKED)


@dataclass(frozen=True)
class GoodsOwner:
    """A client of the warehouse: its system id, code and name, and the API credentials that act for it."""

    id: int
    code: str
    name: str
    user_name: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class WayOfDeliveryType:
    """A way of delivery the warehouse knows, identified by its code."""

    code: str
    name: str


@dataclass(frozen=True)
class OrderLine:
    """One article on an order and how far the warehouse has come with it."""

    article: str
    # A whole number of items is an int; ProcessOrder's NumberOfItems may also be a fraction.
    ordered: int | Decimal
    allocated: int
    picked: int

    @property
    def has_allocated_unpicked_goods(self) -> bool:
        """Whether goods are reserved for this line that have not been picked yet."""
        return self.allocated > self.picked


@dataclass(frozen=True)
class Customer:
    """The consignee of an order, as ProcessOrder sent it; None for what was not sent."""

    customer_number: str | None = None
    name: str | None = None
    address: str | None = None
    address2: str | None = None
    address3: str | None = None
    post_code: str | None = None
    city: str | None = None
    country_code: str | None = None


@dataclass(frozen=True)
class Order:
    """An outgoing order; its date and time fields hold the ISO 8601 text exactly as it was sent."""

    system_id: int
    goods_owner_code: str
    order_number: str
    order_id: str | None
    status: int
    delivery_date: str | None = None
    waybill: str | None = None
    transporter_order_number: str | None = None
    printed_time: str | None = None
    shipped_time: str | None = None
    picking_priority: int | None = None
    warehouse_instruction: str | None = None
    return_waybill: str | None = None
    service_point_code: str | None = None
    way_of_delivery_type_code: str | None = None
    lines: tuple[OrderLine, ...] = ()
    customer: Customer | None = None

    @property
    def has_allocated_unpicked_goods(self) -> bool:
        """Whether any line has goods reserved that have not been picked yet."""
        return any(line.has_allocated_unpicked_goods for line in self.lines)

    @property
    def has_picked_goods(self) -> bool:
        """Whether at least one item of the order has been picked."""
        return any(line.picked > 0 for line in self.lines)


@dataclass(frozen=True)
class OrderIdentification:
    """How a request points at its order: the identification type and the value sent for it (None: not sent)."""

    identification_type: str
    value: str | int | None


@dataclass(frozen=True)
class WayOfDeliveryTypeChange:
    """The UpdateOrderWayOfDeliveryType block: find (or find or create) a way of delivery by its code."""

    operation: str
    code: str | None
    name: str | None


@dataclass(frozen=True)
class OrderChanges:
    """The update blocks of one request; a block left out of the request is None (or absent from `fields`)."""

    status: int | None = None
    order_number: str | None = None
    way_of_delivery_type: WayOfDeliveryTypeChange | None = None
    # Order attributes that take the sent value as it is, keyed by Order field name.
    fields: Mapping[str, str | int | None] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class UpdateOrderRequest:
    """One UpdateOrder call: who is calling, which order, and what to change."""

    goods_owner_code: str
    user_name: str
    password: str = field(repr=False)
    identification: OrderIdentification
    changes: OrderChanges


@dataclass(frozen=True)
class UpdateOrderResult:
    """The UpdateOrderResult to answer with; `order_id` is the order's SystemId, None when no order was found."""

    success: bool
    message: str | None
    order_id: int | None


@dataclass(frozen=True)
class CustomerOrderLine:
    """One CustomerOrderLine of a ProcessOrder request, with what the sandbox keeps of it."""

    external_order_line_code: str | None
    article_number: str | None
    number_of_items: Decimal


@dataclass(frozen=True)
class CustomerOrder:
    """The `co` of a ProcessOrder request: what to do, to which order, and the order's customer and lines.

    `status_created` is 0 when OrderStatusCreated was not sent; `customer` and `lines` are None when their
    elements were not sent, which leaves an existing order's customer or lines as they are.
    """

    operation: str
    identification: OrderIdentification
    order_number: str | None
    order_id: str | None
    status_created: int
    customer: Customer | None
    lines: tuple[CustomerOrderLine, ...] | None


@dataclass(frozen=True)
class ProcessOrderRequest:
    """One ProcessOrder call: who is calling (None for what was not sent) and the order, None without OrderInfo."""

    goods_owner_code: str | None
    user_name: str | None
    password: str | None = field(repr=False)
    order: CustomerOrder | None


@dataclass(frozen=True)
class ProcessOrderResult:
    """The ProcessOrderResult to answer with; `order_id` is the order's SystemId, 0 when there is no order."""

    success: bool
    error_message: str | None
    order_number: str | None
    order_id: int


@dataclass(frozen=True)
class OrderEvent:
    """Something that happened to an order that fires an order webhook: the order as it was right after."""

    trigger: str
    event_id: int
    occurred_at: datetime
    order: Order
    goods_owner: GoodsOwner
