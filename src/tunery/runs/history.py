"""A run's stored history: its events, the metrics per step, and its log lines.

Events are appended by ``tunery.runs.store`` and never changed. ``event_payload`` turns a
row into the typed payload both event streams send; ``log_line`` is the one place the text
of a log line is written, for ``GET /runs/{id}/logs`` and the ``line`` of stream events.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Run, RunEvent
from tunery.event_kinds import LOG_KINDS, STEP_KINDS, EventKind
from tunery.pipeline.reporting import PREFERENCE_EVAL_FIELDS
from tunery.runs.plane import ControlPlane
from tunery.runs.queries import get_run
from tunery.wire.events import StoredEvent
from tunery.wire.timefmt import iso

_STORED_EVENT: TypeAdapter[Any] = TypeAdapter(StoredEvent)


def log_line(kind: str, data: dict[str, Any], at: float) -> str | None:
    """The log line of an event (None for kinds that are not part of the log)."""
    if kind == EventKind.LOG:
        text = str(data.get("message", ""))
    elif kind == EventKind.STATUS:
        text = f"status: {data['status']} ({data['phase']})"
        if data.get("error"):
            text += f" — {data['error'].get('message')}"
    elif kind == EventKind.PHASE:
        text = f"phase: {data['phase']}"
    elif kind == EventKind.METRICS:
        text = _step_line(data)
    elif kind == EventKind.EVALUATION:
        text = _evaluation_line(data)
    elif kind == EventKind.HUB:
        text = f"Hub entry {data['hub_entry_id']} deleted: its bundles are gone"
    else:
        return None
    return f"{iso(at)} {text}"


def _number(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _step_line(data: dict[str, Any]) -> str:
    """``step 12/144 · loss 2.1034 · lr 2.00e-04 · grad norm 0.8312 · 5,120 tok/s``."""
    total = f"/{data['total_steps']}" if data.get("total_steps") else ""
    parts = [f"step {data.get('step')}{total}", f"loss {_number(data.get('loss'))}"]
    if data.get("learning_rate") is not None:
        parts.append(f"lr {data['learning_rate']:.2e}")
    if data.get("grad_norm") is not None:
        parts.append(f"grad norm {data['grad_norm']:.4f}")
    if data.get("tokens_per_second") is not None:
        parts.append(f"{data['tokens_per_second']:,.0f} tok/s")
    if data.get("replayed"):
        parts.append("(from the checkpoint's history)")
    return " · ".join(parts)


def _evaluation_line(data: dict[str, Any]) -> str:
    """``eval after step 40: loss 1.9021 · accuracy 0.5120 · best 1.8800 (step 32)``."""
    text = (
        f"eval after step {data.get('step')}: loss {_number(data.get('eval_loss'))} · "
        f"accuracy {_number(data.get('eval_accuracy'))}"
    )
    if data.get("best_eval_loss") is not None:
        text += f" · best {data['best_eval_loss']:.4f} (step {data.get('best_step')})"
    return text


def event_payload(event: RunEvent, *, with_run_id: bool = False) -> StoredEvent:
    """A stored event as the streams send it (``run_id`` on the account stream)."""
    fields: dict[str, Any] = {
        "id": event.id,
        "kind": event.kind,
        "at": iso(event.created_at),
        **event.data,
    }
    if with_run_id:
        fields["run_id"] = event.run_id
    line = log_line(event.kind, event.data, event.created_at)
    if line is not None:
        fields["line"] = line
    return _STORED_EVENT.validate_python(fields)


def events_after(session: Session, run_id: str, after_id: int, limit: int = 500) -> list[RunEvent]:
    return list(
        session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.id > after_id)
            .order_by(RunEvent.id)
            .limit(limit)
        )
    )


def account_events_after(
    session: Session, account_id: str, after_id: int, limit: int = 500
) -> list[RunEvent]:
    """Events of every run of the account after ``after_id``, oldest first."""
    return list(
        session.scalars(
            select(RunEvent)
            .join(Run, Run.id == RunEvent.run_id)
            .where(Run.account_id == account_id, RunEvent.id > after_id)
            .order_by(RunEvent.id)
            .limit(limit)
        )
    )


def latest_account_event(session: Session, account_id: str) -> int:
    """The id of the account's newest event (0 when it has none): a stream cursor for "now"."""
    newest = session.scalar(
        select(func.max(RunEvent.id))
        .join(Run, Run.id == RunEvent.run_id)
        .where(Run.account_id == account_id)
    )
    return newest or 0


def reported_steps(session: Session, run_id: str) -> set[Any]:
    """Steps that have a metrics event already."""
    return {
        event.data.get("step")
        for event in session.scalars(
            select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == EventKind.METRICS)
        )
    }


def step_rows(session: Session, run_id: str) -> list[dict[str, Any]]:
    """One row per optimizer step, with the evaluation after it where there was one
    (``eval_loss``, ``eval_accuracy``, a DPO run's eval rewards). A resumed attempt
    retrains the steps after its checkpoint; the newest report of each step is the one kept."""
    rows = session.scalars(
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.kind.in_(STEP_KINDS))
        .order_by(RunEvent.id)
    )
    by_step: dict[Any, dict[str, Any]] = {}
    evaluations: dict[Any, dict[str, Any]] = {}
    for event in rows:
        step = event.data.get("step")
        if event.kind == EventKind.METRICS:
            by_step[step] = event.data
        else:
            evaluations[step] = {
                "eval_loss": event.data.get("eval_loss"),
                "eval_accuracy": event.data.get("eval_accuracy"),
                **{name: event.data[name] for name in PREFERENCE_EVAL_FIELDS if name in event.data},
            }
    return [
        {**by_step[step], **evaluations.get(step, {})}
        for step in sorted(by_step, key=lambda step: step or 0)
    ]


EXPORT_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "trained_tokens",
    "training_seconds",
    "reward_margin",
    "reward_accuracy",
    "eval_loss",
    "eval_accuracy",
    *PREFERENCE_EVAL_FIELDS,
)
"""The columns of a metrics export: what the worker measured at each step (token accuracy;
DPO runs: the reward margin and accuracy), and the evaluation after it (empty where there
was none)."""
EXPORT_FORMATS = ("csv", "jsonl")


def export_metrics(rows: list[dict[str, Any]], export_format: str) -> str:
    """Step rows (``step_rows``) as CSV with a header line, or as JSON Lines: one object per
    step with every column of ``EXPORT_COLUMNS`` (null where not measured)."""
    picked = [{column: row.get(column) for column in EXPORT_COLUMNS} for row in rows]
    if export_format == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in picked)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(picked)
    return buffer.getvalue()


def log_text(session: Session, run_id: str) -> str:
    """The run's log: one line per status change, phase, log message, step and evaluation."""
    rows = session.scalars(
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.kind.in_(LOG_KINDS))
        .order_by(RunEvent.id)
    )
    lines = [log_line(event.kind, event.data, event.created_at) for event in rows]
    return "".join(f"{line}\n" for line in lines if line is not None)


def run_steps(plane: ControlPlane, account_id: str, run_id: str) -> list[dict[str, Any]]:
    """``step_rows`` of the account's run; raises NotFound."""
    with plane.sessions() as session:
        get_run(session, account_id, run_id)
        return step_rows(session, run_id)


def run_log(plane: ControlPlane, account_id: str, run_id: str) -> str:
    """``log_text`` of the account's run; raises NotFound."""
    with plane.sessions() as session:
        get_run(session, account_id, run_id)
        return log_text(session, run_id)
