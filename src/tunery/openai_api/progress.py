"""A job's events and checkpoints, newest first, paged as OpenAI pages them.

Events are the run's stored events (status changes, phases, log lines, one ``metrics``
event per step and one per evaluation on the validation file, samples) under ids
``ftevent-N``, N the run event id. Checkpoints are the
steps at which the run saved a resumable checkpoint (every ``checkpoint_every_steps``),
and the final step once the run completed.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from tunery.db import RunEvent
from tunery.event_kinds import STEP_KINDS, EventKind
from tunery.lifecycle import RunStatus
from tunery.openai_api import mapping
from tunery.openai_api.jobs import owned_run
from tunery.openai_api.objects import Checkpoint, JobEvent, OpenAIError, page_of
from tunery.runs import history
from tunery.runs.plane import ControlPlane
from tunery.wire import model_names

CURSOR_NUMBER = re.compile(r"[0-9]{1,18}")
"""An event id or step in a cursor: ASCII digits (``str.isdigit`` also takes ``²``, which
``int`` refuses) that fit SQLite's integer."""


def _cursor(after: str | None, prefix: str) -> str | None:
    if after is None:
        return None
    if not after.startswith(prefix):
        raise _unknown_cursor(after)
    return after.removeprefix(prefix)


def _unknown_cursor(after: str) -> OpenAIError:
    return OpenAIError(400, f"unknown cursor {after[:100]!r}", param="after")


def list_events(
    plane: ControlPlane, account_id: str, job_id: str, *, after: str | None, limit: int
) -> dict[str, Any]:
    before = _cursor(after, mapping.EVENT_PREFIX)
    if before is not None and CURSOR_NUMBER.fullmatch(before) is None:
        raise _unknown_cursor(str(after))
    with plane.sessions() as session:
        owned_run(session, account_id, job_id)
        query = select(RunEvent).where(RunEvent.run_id == job_id)
        if before is not None:
            query = query.where(RunEvent.id < int(before))
        rows = list(session.scalars(query.order_by(RunEvent.id.desc()).limit(limit + 1)))
    items = [_event(row) for row in rows[:limit]]
    return page_of(items, has_more=len(rows) > limit)


def _event(row: RunEvent) -> JobEvent:
    metrics = row.kind in STEP_KINDS
    data: dict[str, Any] | None
    if row.kind == EventKind.METRICS:
        data = mapping.metrics_data(row.data)
    elif row.kind == EventKind.EVALUATION:
        data = mapping.evaluation_data(row.data)
    elif row.kind == EventKind.STATUS and row.data.get("error"):
        data = {"error": row.data["error"]}
    else:
        data = None
    return JobEvent(
        id=f"{mapping.EVENT_PREFIX}{row.id}",
        created_at=int(row.created_at),
        level=mapping.event_level(row.kind, row.data),
        message=mapping.event_message(row.kind, row.data),
        data=data,
        type="metrics" if metrics else "message",
    )


def list_checkpoints(
    plane: ControlPlane, account_id: str, job_id: str, *, after: str | None, limit: int
) -> dict[str, Any]:
    with plane.sessions() as session:
        run = owned_run(session, account_id, job_id)
        reports = session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == job_id, RunEvent.kind == EventKind.METRICS)
            .order_by(RunEvent.id)
        )
        # A resumed attempt retrains steps after its checkpoint: the newest report counts.
        by_step = {event.data.get("step"): event for event in reports}
        rows = {row["step"]: row for row in history.step_rows(session, job_id)}
    steps = sorted(step for step in by_step if isinstance(step, int))
    every = mapping.stored_training(run.config).checkpoint_every_steps
    completed = run.status == RunStatus.COMPLETED
    kept = mapping.checkpoint_steps([by_step[s].data for s in steps], every, completed)
    model = model_names.fine_tuned_model_name(
        run.config["base_model"], run.account_id, run.name, run.id
    )
    newest_first = sorted(kept, reverse=True)
    start_at = _cursor(after, mapping.CHECKPOINT_PREFIX)
    if start_at is not None:
        run_part, _, step = start_at.rpartition("-")
        if run_part != job_id or CURSOR_NUMBER.fullmatch(step) is None:
            raise _unknown_cursor(str(after))
        newest_first = [s for s in newest_first if s < int(step)]
    items = [
        Checkpoint(
            id=f"{mapping.CHECKPOINT_PREFIX}{job_id}-{step}",
            created_at=int(by_step[step].created_at),
            fine_tuned_model_checkpoint=f"{model}:ckpt-step-{step}",
            fine_tuning_job_id=job_id,
            metrics=mapping.checkpoint_metrics(rows[step]),
            step_number=step,
        )
        for step in newest_first[:limit]
    ]
    return page_of(items, has_more=len(newest_first) > limit)
