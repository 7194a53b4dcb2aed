"""What the simulated Speed4Trade CONNECT keeps (mandators, orders) and what updateOrderStatus asks of it."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# The values of significant_key. Every key but order_number_and_prefix is matched against the order field
# of the same name, which travels in the request element of the same name.
SIGNIFICANT_KEYS = (
    "order_number",
    "order_number_and_prefix",
    "external_order_number_1",
    "external_order_number_2",
    "marketplace_order_id_1",
    "marketplace_order_id_2",
    "transaction_id_1",
    "transaction_id_2",
)
# The order's identifying elements, in the order a request document carries them.
KEY_ELEMENTS = (
    "order_number",
    "order_number_prefix",
    "external_order_number_1",
    "external_order_number_2",
    "marketplace_order_id_1",
    "marketplace_order_id_2",
    "transaction_id_1",
    "transaction_id_2",
)

SHIPPED = "SHIPPED"
PAID = "PAID"
ACKNOWLEDGED = "ACKNOWLEDGED"
# Orders in these statuses cannot be updated with updateOrderStatus.
LOCKED_STATUSES = frozenset({"CANCELED", "REGROUPED"})


@dataclass(frozen=True)
class Mandator:
    """A client (shop) whose orders CONNECT manages."""

    mandator_id: int
    name: str


@dataclass(frozen=True)
class ShippingInformation:
    """One package of an order: its tracking number and the shipping provider that carries it."""

    tracking_number: str
    shipping_provider_identifier: str | None = None
    shipping_provider_external_id: str | None = None


@dataclass(frozen=True)
class PaymentInformation:
    """One payment status message, by payment status id (variant 1) or identifier (variant 2)."""

    payment_status_id: int | None = None
    payment_status_identifier: str | None = None


@dataclass(frozen=True)
class Order:
    """An order of one mandator; `export_time` holds the ISO 8601 text as it was sent (or stamped)."""

    mandator_id: int
    order_number: int
    status: str
    order_number_prefix: str | None = None
    external_order_number_1: str | None = None
    external_order_number_2: str | None = None
    marketplace_order_id_1: str | None = None
    marketplace_order_id_2: str | None = None
    transaction_id_1: str | None = None
    transaction_id_2: str | None = None
    erp_exported: bool = False
    export_time: str | None = None
    shipping_informations: tuple[ShippingInformation, ...] = ()
    payment_informations: tuple[PaymentInformation, ...] = ()


@dataclass(frozen=True)
class OrderStatusUpdate:
    """One `<order>` of an updateOrderStatus request; information blocks left out of it are empty tuples."""

    significant_key: str
    mandator_id: int
    status: str
    # Text of each identifying element the request carries, keyed by element name; absent elements are missing.
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    shipping_informations: tuple[ShippingInformation, ...] = ()
    payment_informations: tuple[PaymentInformation, ...] = ()
    export_times: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderReport:
    """The `<report>` answering one `<order>`: 0 for OK, a negative code with a description for an error."""

    return_code: int
    error_description: str | None = None
