"""Accounts, API tokens (stored as SHA-256 hashes, shown once) and credit grants."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from tunery.db import Account, ApiToken, new_id
from tunery.runs import billing
from tunery.runs.plane import Conflict, ControlPlane


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return f"tny_{secrets.token_urlsafe(32)}"


def create_account(plane: ControlPlane, *, name: str, is_admin: bool = False) -> tuple[str, str]:
    """Create an account and its first API token; returns (account id, token).

    Raises Conflict when the name is taken.
    """
    token = _new_token()
    with plane.sessions.begin() as session:
        if session.scalar(select(Account).where(Account.name == name)) is not None:
            raise Conflict(f"an account named {name!r} already exists")
        account = Account(id=new_id("acc"), name=name, is_admin=is_admin)
        session.add(account)
        session.flush()
        session.add(ApiToken(id=new_id("tok"), account_id=account.id, token_hash=hash_token(token)))
    return account.id, token


def issue_token(plane: ControlPlane, *, account_id: str) -> str:
    """A new API token for an existing account (stored hashed); returns it once."""
    token = _new_token()
    with plane.sessions.begin() as session:
        session.add(ApiToken(id=new_id("tok"), account_id=account_id, token_hash=hash_token(token)))
    return token


def account_for_token(plane: ControlPlane, token: str) -> Account | None:
    with plane.sessions() as session:
        return session.scalar(
            select(Account)
            .join(ApiToken, ApiToken.account_id == Account.id)
            .where(ApiToken.token_hash == hash_token(token))
        )


def grant_credits(plane: ControlPlane, *, account_id: str, amount: float, note: str) -> float:
    """Add ``amount`` credits to the account's ledger; returns the new balance."""
    with plane.sessions.begin() as session:
        billing.record(session, account_id=account_id, kind="grant", amount=amount, note=note)
        return billing.balance(session, account_id)
