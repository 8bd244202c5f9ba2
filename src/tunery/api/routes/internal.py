"""Worker-facing routes, authenticated by the attempt's fencing token (``tunery.wire.reports``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header

from tunery.api.deps import PlaneDep
from tunery.runs import attempts
from tunery.wire.reports import AttemptSpec, ReportAck, parse_batch

router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
TokenHeader = Annotated[str, Header(alias="X-Attempt-Token")]


@router.get("/attempts/{attempt_id}/spec", response_model=AttemptSpec)
def spec(plane: PlaneDep, attempt_id: str, token: TokenHeader) -> AttemptSpec:
    return attempts.attempt_spec(plane, attempt_id=attempt_id, token=token)


@router.post("/attempts/{attempt_id}/events", response_model=ReportAck)
def events(
    plane: PlaneDep, attempt_id: str, token: TokenHeader, body: Annotated[Any, Body()]
) -> ReportAck:
    """A batch of reports; 422 naming each malformed field, 409 for a fenced-off attempt."""
    batch = parse_batch(body)
    return attempts.report(plane, attempt_id=attempt_id, token=token, batch=batch)
