"""Credits: the balance and the append-only ledger."""

from __future__ import annotations

from fastapi import APIRouter

from tunery.api.deps import AccountDep, PlaneDep
from tunery.runs import queries
from tunery.wire.rest import CreditsPublic

router = APIRouter(tags=["credits"])


@router.get("/credits", response_model=CreditsPublic)
def credits(plane: PlaneDep, account: AccountDep) -> CreditsPublic:
    return queries.credits_view(plane, account.id)
