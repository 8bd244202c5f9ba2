"""Worker-facing routes, authenticated by the attempt's fencing token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header

from tunery.api.deps import PlaneDep
from tunery.runs import service

router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


@router.get("/attempts/{attempt_id}/spec")
def spec(
    plane: PlaneDep, attempt_id: str, token: Annotated[str, Header(alias="X-Attempt-Token")]
) -> dict[str, Any]:
    return service.attempt_spec(plane, attempt_id=attempt_id, token=token)


@router.post("/attempts/{attempt_id}/events")
def events(
    plane: PlaneDep,
    attempt_id: str,
    token: Annotated[str, Header(alias="X-Attempt-Token")],
    events: Annotated[list[dict[str, Any]], Body(embed=True)],
) -> dict[str, bool]:
    return service.report(plane, attempt_id=attempt_id, token=token, events=events)
