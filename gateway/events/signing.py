"""Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

Subscribers verify deliveries with any Standard Webhooks library; the secret is `whsec_` + base64 of the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_...` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign_delivery(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers that let a subscriber check who sent a delivery, and when."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{base64.b64encode(digest).decode()}",
    }
