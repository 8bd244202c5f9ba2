"""Liveness, tiers and the model catalog."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from tunery.api.deps import AccountDep, PlaneDep
from tunery.catalog.models import catalog
from tunery.db import Attempt

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/v1/tiers")
def tiers(plane: PlaneDep, _: AccountDep) -> list[dict[str, Any]]:
    with plane.sessions() as session:
        busy = set(session.scalars(select(Attempt.node).where(Attempt.active.is_(True))))
    rows = []
    for tier in plane.settings.tiers:
        nodes = [node.name for node in plane.settings.nodes if node.tier == tier.id]
        rows.append(
            {
                "id": tier.id,
                "name": tier.name,
                "credits_per_minute": tier.credits_per_minute,
                "nodes_total": len(nodes),
                "nodes_free": len([n for n in nodes if n not in busy]),
            }
        )
    return rows


@router.get("/api/v1/models")
def models(_: AccountDep) -> list[dict[str, Any]]:
    return [entry.as_dict() for entry in catalog()]
