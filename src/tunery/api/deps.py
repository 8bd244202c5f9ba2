"""FastAPI dependencies: the control plane and the calling account."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from tunery.api.auth import MISSING_TOKEN, TUNERY_CODE, UNKNOWN_TOKEN, AuthRefusal, bearer_token
from tunery.db import Account
from tunery.runs.accounts import account_for_token
from tunery.runs.plane import ControlPlane


def get_plane(request: Request) -> ControlPlane:
    return request.app.state.plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]


def bearer_account(plane: ControlPlane, authorization: str | None) -> Account | AuthRefusal:
    """The account whose token the header carries, or why there is none."""
    token = bearer_token(authorization)
    if token is None:
        return MISSING_TOKEN
    account = account_for_token(plane, token)
    return UNKNOWN_TOKEN if account is None else account


def current_account(
    plane: PlaneDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Account:
    found = bearer_account(plane, authorization)
    if isinstance(found, AuthRefusal):
        raise HTTPException(
            status_code=401,
            detail={"code": TUNERY_CODE, "message": found.message, "hint": found.hint},
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


AccountDep = Annotated[Account, Depends(current_account)]
