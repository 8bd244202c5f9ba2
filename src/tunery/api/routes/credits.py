"""Credits: the balance and the append-only ledger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from tunery.api.deps import AccountDep, PlaneDep
from tunery.api.timefmt import iso
from tunery.db import LedgerEntry
from tunery.runs import billing

router = APIRouter(tags=["credits"])


@router.get("/credits")
def credits(plane: PlaneDep, account: AccountDep) -> dict[str, Any]:
    with plane.sessions() as session:
        rows = session.scalars(
            select(LedgerEntry).where(LedgerEntry.account_id == account.id).order_by(LedgerEntry.id)
        )
        ledger = [
            {
                "id": row.id,
                "kind": row.kind,
                "amount": row.amount,
                "run_id": row.run_id,
                "note": row.note,
                "created_at": iso(row.created_at),
            }
            for row in rows
        ]
        return {"balance": billing.balance(session, account.id), "ledger": ledger}
