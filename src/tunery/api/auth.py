"""Bearer-token authentication, written once for the body guard and both API faces.

The body guard checks the token before a body is read; the route dependencies
(``api.deps.AccountDep`` on ``/api/v1``, ``api.openai.common.OpenAIAccount`` on ``/v1``)
resolve the account. Both read the header with ``bearer_token`` and refuse with the same
``AuthRefusal``, which each face writes in its own error shape: tunery's ``unauthorized``,
or OpenAI's ``invalid_api_key`` on ``/v1`` (``openai_api.objects.auth_error``), whatever the
method.
"""

from __future__ import annotations

from dataclasses import dataclass

TUNERY_CODE = "unauthorized"


@dataclass(frozen=True)
class AuthRefusal:
    message: str
    hint: str


MISSING_TOKEN = AuthRefusal(
    "missing bearer token", "send Authorization: Bearer TOKEN (see TUNERY_TOKEN)"
)
UNKNOWN_TOKEN = AuthRefusal("unknown or revoked token", "")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (scheme case-insensitive)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
