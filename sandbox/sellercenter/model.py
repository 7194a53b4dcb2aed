"""What the simulated SellerCenter keeps (orders with two addresses) and what UpdateOrderInformation asks of it."""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

PENDING = "pending"
# SellerCenter's order statuses; addresses can only change while an order is pending.
ORDER_STATUSES = ("pending", "ready_to_ship", "shipped", "delivered", "canceled", "returned", "failed")
# The two address members of an order, as the request and the JSON view name them.
ADDRESS_MEMBERS = ("address_billing", "address_shipping")


@dataclass(frozen=True)
class Address:
    """A billing or shipping address; every field is a string, possibly empty."""

    first_name: str
    last_name: str
    phone: str
    phone2: str
    address1: str
    address2: str
    address3: str
    address4: str
    address5: str
    city: str
    postcode: str
    country: str


# The fields of an address, in the order the specification lists them.
ADDRESS_FIELDS = tuple(field.name for field in dataclasses.fields(Address))


@dataclass(frozen=True)
class Order:
    """An order of the seller: SellerCenter's id, the seller's own reference (src_id), status and addresses."""

    id_sales_order: int
    src_id: str
    status: str
    address_billing: Address
    address_shipping: Address


@dataclass(frozen=True)
class OrderInformationUpdate:
    """One order of an UpdateOrderInformation request; an address left out of it is None, one sent empty is {}."""

    id_sales_order: int
    address_billing: Mapping[str, str] | None = None
    address_shipping: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ItemError:
    """Why the order at `position` (0-based, in request order) was not processed."""

    position: int
    message: str
