"""Standard Webhooks signatures, as OpenAI signs its own webhooks.

Every attempt of a delivery carries ``webhook-id`` (the same on every retry),
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``
keyed with the endpoint's ``whsec_`` secret, so ``client.webhooks.unwrap()`` of the
``openai`` SDK verifies them unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from tunery import __version__

MIN_SECRET_BYTES = 16
MAX_SECRET_CHARS = 200


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError for anything else."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_")
    if len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"a webhook secret is at most {MAX_SECRET_CHARS} characters")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret holds at least {MIN_SECRET_BYTES} bytes")
    return key


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
        "user-agent": f"tunery-webhooks/{__version__}",
    }
