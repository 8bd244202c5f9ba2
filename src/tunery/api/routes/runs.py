"""Runs: submit, list, inspect, cancel, delete, and the live event stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.api.deps import AccountDep, PlaneDep
from tunery.api.timefmt import iso
from tunery.db import Run, RunEvent
from tunery.runs import service
from tunery.runs.lifecycle import TERMINAL
from tunery.runs.service import ControlPlane

router = APIRouter(tags=["runs"])
KEEPALIVE_SECONDS = 15.0
# The account stream pushes live numbers (duration, credits) of active runs this often.
SNAPSHOT_SECONDS = 3.0


def run_public(plane: ControlPlane, session: Session, run: Run) -> dict[str, Any]:
    # Each SELECT sees the newest commit: read the newest event id first, then the run row
    # again, so the fields are at least as new as ``last_event_id`` says.
    last_event_id = session.scalar(select(func.max(RunEvent.id)).where(RunEvent.run_id == run.id))
    session.refresh(run)
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "phase": run.phase,
        "tier": run.tier,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "config": run.config,
        "metrics": service.live_metrics(plane, session, run),
        "error": run.error if run.status in ("failed", "retrying") else None,
        "attempt": run.attempt,
        "queue_position": service.queue_position(session, run),
        "cancel_requested": run.cancel_requested,
        "samples": run.samples or [],
        "artifacts": (run.summary or {}).get("artifacts"),
        "hub_entry_id": run.hub_entry_id,
        # Events up to this id are reflected above: a client following the account stream
        # applies only newer ones to this object.
        "last_event_id": last_event_id,
    }


@router.post("/runs", status_code=201)
def submit(
    plane: PlaneDep,
    account: AccountDep,
    payload: Annotated[Any, Body()],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    run = service.submit_run(
        plane, account_id=account.id, payload=payload, idempotency_key=idempotency_key
    )
    with plane.sessions() as session:
        return run_public(plane, session, service.get_run(session, account.id, run.id))


@router.get("/runs")
def list_runs(plane: PlaneDep, account: AccountDep) -> list[dict[str, Any]]:
    with plane.sessions() as session:
        runs = session.scalars(
            select(Run).where(Run.account_id == account.id).order_by(Run.created_at.desc())
        )
        return [run_public(plane, session, run) for run in runs]


@router.get("/runs/{run_id}")
def get(plane: PlaneDep, account: AccountDep, run_id: str) -> dict[str, Any]:
    with plane.sessions() as session:
        return run_public(plane, session, service.get_run(session, account.id, run_id))


@router.post("/runs/{run_id}/cancel")
def cancel(plane: PlaneDep, account: AccountDep, run_id: str) -> dict[str, Any]:
    run = service.cancel_run(plane, account_id=account.id, run_id=run_id)
    with plane.sessions() as session:
        return run_public(plane, session, service.get_run(session, account.id, run.id))


@router.delete("/runs/{run_id}", status_code=204)
def delete(plane: PlaneDep, account: AccountDep, run_id: str) -> None:
    service.delete_run(plane, account_id=account.id, run_id=run_id)


def event_public(event: RunEvent) -> dict[str, Any]:
    return {"id": event.id, "kind": event.kind, "at": iso(event.created_at), **event.data}


@router.get("/runs/{run_id}/metrics")
def metrics(plane: PlaneDep, account: AccountDep, run_id: str) -> list[dict[str, Any]]:
    """One row per optimizer step. A resumed attempt retrains the steps after its
    checkpoint; the newest report of each step is the one kept."""
    with plane.sessions() as session:
        service.get_run(session, account.id, run_id)
        rows = session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.kind == "metrics")
            .order_by(RunEvent.id)
        )
        by_step = {event.data.get("step"): event.data for event in rows}
        return [by_step[step] for step in sorted(by_step, key=lambda step: step or 0)]


@router.get("/runs/{run_id}/logs", response_class=PlainTextResponse)
def logs(plane: PlaneDep, account: AccountDep, run_id: str) -> str:
    """The run's history as plain text, one line per status change, phase and log line."""
    with plane.sessions() as session:
        service.get_run(session, account.id, run_id)
        rows = session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.kind.in_(("status", "phase", "log")))
            .order_by(RunEvent.id)
        )
        lines = []
        for event in rows:
            if event.kind == "log":
                text = event.data["message"]
            elif event.kind == "status":
                text = f"status: {event.data['status']} ({event.data['phase']})"
                if event.data.get("error"):
                    text += f" — {event.data['error'].get('message')}"
            else:
                text = f"phase: {event.data['phase']}"
            lines.append(f"{iso(event.created_at)} {text}")
        return "\n".join(lines) + ("\n" if lines else "")


def _sse(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


@router.get("/runs/{run_id}/events")
async def events(
    request: Request,
    plane: PlaneDep,
    account: AccountDep,
    run_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events: the run's history, then live events until it is terminal.

    ``Last-Event-ID`` resumes after that event: no gap, no duplicate. The stream ends once
    the run is terminal and every event was sent.
    """

    def owned() -> None:
        with plane.sessions() as session:
            service.get_run(session, account.id, run_id)

    def read(after: int) -> tuple[list[tuple[int, str]], str | None]:
        """Encoded events after ``after`` and the run's status (None once deleted)."""
        with plane.sessions() as session:
            status = session.scalar(select(Run.status).where(Run.id == run_id))
            batch = [
                (event.id, _sse(event.kind, event_public(event), event.id))
                for event in service.events_after(session, run_id, after)
            ]
            return batch, status

    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    await run_in_threadpool(owned)  # 404 before the stream starts
    broadcast = request.app.state.broadcast
    shared = request.app.state.shared_reads

    async def stream() -> AsyncIterator[str]:
        after = start
        yield "retry: 1000\n\n"
        while True:
            seen = broadcast.generation
            batch, status = await run_in_threadpool(
                shared.get, seen, ("run", run_id, after), partial(read, after)
            )
            for event_id, text in batch:
                after = event_id
                yield text
            if batch:
                continue
            if status is None or status in TERMINAL:
                return
            if await request.is_disconnected():
                return
            if not await broadcast.wait(seen, KEEPALIVE_SECONDS):
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/events")
async def account_events(
    request: Request,
    plane: PlaneDep,
    account: AccountDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events of every run of the account, for one screen to follow them all.

    Without ``Last-Event-ID`` the stream starts now (a ``ready`` event carries the cursor);
    with it, it resumes after that event with no gap. Stored events (status, phase, metrics,
    log, samples) carry ``run_id``. While any run is active, an unnumbered ``snapshot``
    event every few seconds carries each active run's live numbers (duration, credits,
    queue position). The stream never ends by itself.
    """

    def latest() -> int:
        with plane.sessions() as session:
            return service.latest_account_event(session, account.id)

    def read(after: int) -> list[tuple[int, str]]:
        with plane.sessions() as session:
            return [
                (
                    event.id,
                    _sse(event.kind, {"run_id": event.run_id, **event_public(event)}, event.id),
                )
                for event in service.account_events_after(session, account.id, after)
            ]

    def live_numbers() -> list[dict[str, Any]]:
        with plane.sessions() as session:
            active = session.scalars(
                select(Run).where(Run.account_id == account.id, Run.status.not_in(TERMINAL))
            )
            return [
                {
                    "id": run.id,
                    "status": run.status,
                    "phase": run.phase,
                    "metrics": service.live_metrics(plane, session, run),
                    "queue_position": service.queue_position(session, run),
                }
                for run in active
            ]

    if last_event_id and last_event_id.isdigit():
        start = int(last_event_id)
        resumed = True
    else:
        start = await run_in_threadpool(latest)
        resumed = False
    broadcast = request.app.state.broadcast
    shared = request.app.state.shared_reads
    loop = asyncio.get_running_loop()

    async def stream() -> AsyncIterator[str]:
        after = start
        yield "retry: 1000\n\n"
        if not resumed:
            yield _sse("ready", {"cursor": start}, start)
        next_snapshot = 0.0
        active = False
        while True:
            seen = broadcast.generation
            batch = await run_in_threadpool(
                shared.get, seen, ("account", account.id, after), partial(read, after)
            )
            for event_id, text in batch:
                after = event_id
                yield text
            if batch:
                continue
            # The live numbers cost a few queries per active run: at most once a period.
            if loop.time() >= next_snapshot:
                snapshot = await run_in_threadpool(live_numbers)
                next_snapshot = loop.time() + SNAPSHOT_SECONDS
                active = bool(snapshot)
                if snapshot:
                    yield _sse("snapshot", {"runs": snapshot})
            if await request.is_disconnected():
                return
            timeout = max(0.05, next_snapshot - loop.time()) if active else KEEPALIVE_SECONDS
            if not await broadcast.wait(seen, timeout) and not active:
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
