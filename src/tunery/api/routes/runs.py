"""Runs: submit, list, inspect, cancel, pause, resume, delete, their history and live event
streams."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from tunery.api.deps import AccountDep, PlaneDep
from tunery.api.streams import (
    SSE_HEADERS,
    account_cursor,
    account_stream,
    cursor,
    run_stream,
)
from tunery.runs import annotations as run_annotations
from tunery.runs import finish, history, intake, pause, queries, settle
from tunery.wire.rest import RunEstimate, RunPublic, StepRow

router = APIRouter(tags=["runs"])
# The payload is read raw so that every problem is reported at once (422); the schema is
# declared for the docs only (see ``tunery.api.app.openapi``).
RECIPE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunRecipe"}}},
    }
}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}
}


@router.post("/runs", status_code=201, response_model=RunPublic, openapi_extra=RECIPE_BODY)
def submit_run(
    plane: PlaneDep,
    account: AccountDep,
    payload: Annotated[Any, Body(include_in_schema=False)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> RunPublic:
    """Queue a run; 422 with every reason when it is blocked. ``Idempotency-Key`` makes a
    retried submission return the first run."""
    run = intake.submit_run(
        plane, account_id=account.id, payload=payload, idempotency_key=idempotency_key
    )
    return queries.view_run(plane, account.id, run.id)


@router.post("/runs/estimate", response_model=RunEstimate, openapi_extra=RECIPE_BODY)
def estimate_run(
    plane: PlaneDep, account: AccountDep, payload: Annotated[Any, Body(include_in_schema=False)]
) -> RunEstimate:
    """What the submission would train, how long and at what price; creates nothing.

    422 with every problem, as a submission answers (the attestations and the balance
    aside: ``covered`` says whether the balance pays for it)."""
    return intake.estimate_submission(plane, account_id=account.id, payload=payload)


@router.get("/runs", response_model=list[RunPublic])
def list_runs(plane: PlaneDep, account: AccountDep) -> list[RunPublic]:
    return queries.list_runs(plane, account.id)


@router.get("/runs/{run_id}", response_model=RunPublic)
def get_run(plane: PlaneDep, account: AccountDep, run_id: str) -> RunPublic:
    return queries.view_run(plane, account.id, run_id)


@router.post("/runs/{run_id}/cancel", response_model=RunPublic)
def cancel_run(plane: PlaneDep, account: AccountDep, run_id: str) -> RunPublic:
    """Cancel; idempotent; 409 once the run completed or failed."""
    settle.cancel_run(plane, account_id=account.id, run_id=run_id)
    return queries.view_run(plane, account.id, run_id)


@router.post("/runs/{run_id}/pause", response_model=RunPublic)
def pause_run(plane: PlaneDep, account: AccountDep, run_id: str) -> RunPublic:
    """Pause: at once for a run that holds no node, else after the current step's checkpoint
    (``pause_requested``); idempotent. 409 once the run is finished."""
    pause.pause_run(plane, account_id=account.id, run_id=run_id)
    return queries.view_run(plane, account.id, run_id)


@router.post("/runs/{run_id}/resume", response_model=RunPublic)
def resume_run(plane: PlaneDep, account: AccountDep, run_id: str) -> RunPublic:
    """Queue a paused run again (it continues from its checkpoint), or withdraw a pause not
    yet taken. 409 for a run that is not paused."""
    pause.resume_run(plane, account_id=account.id, run_id=run_id)
    return queries.view_run(plane, account.id, run_id)


@router.post("/runs/{run_id}/finish", response_model=RunPublic)
def finish_run(plane: PlaneDep, account: AccountDep, run_id: str) -> RunPublic:
    """Finish now: training stops at the next step; the run saves, exports and samples
    what it learned and completes (billed as completed). Idempotent; 409 unless training."""
    finish.finish_run(plane, account_id=account.id, run_id=run_id)
    return queries.view_run(plane, account.id, run_id)


@router.get("/runs/{run_id}/recipe", response_model=dict[str, Any])
def run_recipe(plane: PlaneDep, account: AccountDep, run_id: str) -> dict[str, Any]:
    """The run's submission payload (attestations unset), to submit again with changes."""
    return queries.run_payload(plane, account.id, run_id)


ANNOTATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": run_annotations.AnnotationsUpdate.model_json_schema()}
        },
    }
}


@router.patch("/runs/{run_id}", response_model=RunPublic, openapi_extra=ANNOTATIONS_BODY)
def annotate_run(
    plane: PlaneDep,
    account: AccountDep,
    run_id: str,
    payload: Annotated[Any, Body(include_in_schema=False)],
) -> RunPublic:
    """Set the run's ``tags`` and ``note`` (any state); a field left out is kept. 422 names
    every bad tag or note."""
    update = run_annotations.parse_update(payload)
    run_annotations.annotate_run(plane, account_id=account.id, run_id=run_id, update=update)
    return queries.view_run(plane, account.id, run_id)


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(plane: PlaneDep, account: AccountDep, run_id: str) -> None:
    """Delete a finished run's record and history (never its Hub entry)."""
    settle.delete_run(plane, account_id=account.id, run_id=run_id)


EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


@router.get(
    "/runs/{run_id}/metrics",
    response_model=list[StepRow],
    response_model_exclude_unset=True,
    responses={200: {"content": {media: {} for media in EXPORT_TYPES.values()}}},
)
def metrics(
    plane: PlaneDep,
    account: AccountDep,
    run_id: str,
    export_format: Annotated[
        Literal["json", "csv", "jsonl"],
        Query(alias="format", description="json (default), or an export: csv or jsonl"),
    ] = "json",
) -> Any:
    """One row per optimizer step (the newest report of a step that was trained twice), with
    the evaluation after it. ``format=csv`` or ``jsonl`` exports the per-step metrics and
    evaluations as a file to download."""
    rows = history.run_steps(plane, account.id, run_id)
    if export_format == "json":
        return rows
    name = queries.run_name(plane, account.id, run_id)
    return Response(
        history.export_metrics(rows, export_format),
        media_type=EXPORT_TYPES[export_format],
        headers={"Content-Disposition": f'attachment; filename="{name}-metrics.{export_format}"'},
    )


@router.get("/runs/{run_id}/logs", response_class=PlainTextResponse)
def logs(plane: PlaneDep, account: AccountDep, run_id: str) -> str:
    """The run's history as plain text: one line per status change, phase, log line, step
    (loss, learning rate, grad norm, tokens/s) and evaluation."""
    return history.run_log(plane, account.id, run_id)


@router.get("/runs/{run_id}/events", response_class=StreamingResponse, responses=SSE_RESPONSE)
async def events(
    request: Request,
    plane: PlaneDep,
    account: AccountDep,
    run_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events (``tunery.wire.events``): the run's history, then live events
    until it is terminal. ``Last-Event-ID`` resumes after that event: no gap, no
    duplicate. The stream ends once the run is terminal and every event was sent."""
    await run_in_threadpool(queries.require_run, plane, account.id, run_id)  # 404 first
    start = cursor(last_event_id) or 0
    return StreamingResponse(
        run_stream(request, plane, run_id, start),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@router.get("/events", response_class=StreamingResponse, responses=SSE_RESPONSE)
async def account_events(
    request: Request,
    plane: PlaneDep,
    account: AccountDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events of every run of the account, for one screen to follow them all.

    Without ``Last-Event-ID`` the stream starts now (a ``ready`` event carries the cursor);
    with it, it resumes after that event with no gap. Stored events carry ``run_id``. While
    any run is unfinished, an unnumbered ``snapshot`` event every few seconds carries each
    one's live numbers (duration, credits, queue position). The stream never ends by itself.
    """
    resume = cursor(last_event_id)
    # The cursor is fixed before the response starts: a client that saw the headers
    # misses nothing committed after them.
    start = resume if resume is not None else await account_cursor(plane, account.id)
    return StreamingResponse(
        account_stream(request, plane, account.id, start, resumed=resume is not None),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )
