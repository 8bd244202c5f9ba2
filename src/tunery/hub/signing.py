"""Signed, time-limited download URLs.

A URL carries the account, the Hub entry, the artifact and an expiry, and an HMAC-SHA256
of all four under the server's secret. Any change to any part, or a URL past its expiry,
fails verification (compared in constant time). Lifetimes are capped at ``MAX_LIFETIME``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

DEFAULT_LIFETIME = 15 * 60
MAX_LIFETIME = 60 * 60
SECRET_FILE = "secret-key"
# What a URL this server minted carries: ASCII digits (epoch seconds) and lowercase hex.
EXPIRES = re.compile(r"[0-9]{1,12}")
SIGNATURE = re.compile(r"[0-9a-f]{64}")


def load_secret(data_dir: Path) -> bytes:
    """The server's signing key, created on first use (mode 0600)."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _signature(
    secret: bytes, account_id: str, entry_id: str, artifact: str, expires: int, nonce: str
) -> str:
    message = f"{account_id}\n{entry_id}\n{artifact}\n{expires}\n{nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes,
    *,
    account_id: str,
    entry_id: str,
    artifact: str,
    lifetime: int = DEFAULT_LIFETIME,
) -> tuple[str, int]:
    """The query string of a fresh signed URL and its expiry (epoch seconds).

    A random nonce makes every URL distinct, even two minted in the same second.
    """
    expires = int(time.time()) + max(1, min(lifetime, MAX_LIFETIME))
    nonce = secrets.token_hex(8)
    query = urlencode(
        {
            "account": account_id,
            "expires": expires,
            "nonce": nonce,
            "signature": _signature(secret, account_id, entry_id, artifact, expires, nonce),
        }
    )
    return query, expires


def verify(
    secret: bytes,
    *,
    account_id: str,
    entry_id: str,
    artifact: str,
    expires: str,
    nonce: str,
    signature: str,
) -> bool:
    """True only for an untampered URL that has not expired.

    Any other shape of ``expires`` or ``signature`` (other digits, thousands of them, text)
    is a tampered URL, never an error.
    """
    if not EXPIRES.fullmatch(expires) or not SIGNATURE.fullmatch(signature):
        return False
    expiry = int(expires)
    now = time.time()
    if expiry < now or expiry > now + MAX_LIFETIME:
        return False
    expected = _signature(secret, account_id, entry_id, artifact, expiry, nonce)
    return hmac.compare_digest(expected, signature)
