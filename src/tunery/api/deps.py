"""FastAPI dependencies: the control plane and the calling account."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tunery.db import Account
from tunery.runs.accounts import account_for_token
from tunery.runs.plane import ControlPlane

bearer = HTTPBearer(auto_error=False)


def get_plane(request: Request) -> ControlPlane:
    return request.app.state.plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]


def current_account(
    plane: PlaneDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Account:
    if credentials is None:
        raise HTTPException(
            status_code=401,
            detail={
                "code": "unauthorized",
                "message": "missing bearer token",
                "hint": "send Authorization: Bearer TOKEN (see TUNERY_TOKEN)",
            },
        )
    account = account_for_token(plane, credentials.credentials)
    if account is None:
        raise HTTPException(
            status_code=401,
            detail={"code": "unauthorized", "message": "unknown or revoked token", "hint": ""},
        )
    return account


AccountDep = Annotated[Account, Depends(current_account)]
