"""Rocket SellerCenter OMS API: PATCH /orders/<id> as the signed JSON call UpdateOrderInformation."""

from gateway.backends.sellercenter.backend import SellerCenterBackend

__all__ = ["SellerCenterBackend"]
