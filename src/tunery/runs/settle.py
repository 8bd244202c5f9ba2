"""Ending runs: cancel, the move to a terminal state with its bill, runs that can never
start, and deletion."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.backends.base import Handle
from tunery.db import Attempt, Dataset, Run, RunEvent, now
from tunery.lifecycle import TERMINAL, RunStatus
from tunery.phases import Phase
from tunery.runs import billing, queue, retention, store
from tunery.runs.leftovers import remove_served_copy
from tunery.runs.plane import Conflict, ControlPlane
from tunery.runs.queries import get_run


def cancel_run(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Stop a run in any non-terminal state; cancelling twice is harmless.

    The run is ``cancelled`` (and billed) when this returns; its worker is stopped on a
    background thread (terminate, then kill after the grace). Raises NotFound, or Conflict
    once the run is completed or failed.
    """
    while True:
        handle: Handle | None = None
        try:
            with plane.sessions.begin() as session:
                run = get_run(session, account_id, run_id)
                if run.status == RunStatus.CANCELLED:
                    return
                if run.status in TERMINAL:
                    raise Conflict(f"run {run_id} is already {run.status}; it cannot be cancelled")
                at = now()
                attempt = store.active_attempt(session, run.id)
                if attempt is not None and store.end_attempt(session, attempt, at, "cancelled"):
                    handle = store.handle_of(attempt)
                finish(
                    plane,
                    session,
                    run,
                    to=RunStatus.CANCELLED,
                    phase=Phase.CANCELLED,
                    at=at,
                    cancel_requested=True,
                    retry_at=None,
                )
        except store.TransitionConflict:
            # The scheduler or the worker moved the run meanwhile (the transaction rolled
            # back); look again. A run that became terminal answers the conflict above.
            continue
        break
    if handle is not None:
        threading.Thread(
            target=plane.workers.cancel,
            args=(handle,),
            kwargs={"grace_seconds": plane.settings.cancel_grace_seconds},
            daemon=True,
        ).start()
    plane.changed()


def finish(
    plane: ControlPlane,
    session: Session,
    run: Run,
    *,
    to: RunStatus,
    phase: Phase,
    at: float,
    **fields: Any,
) -> None:
    """Move a run to a terminal state and settle its bill in the same transaction.

    ``fields`` are other run columns set with the move (``error``, ``summary``…); the refund
    follows ``billing.refund_decision``.
    """
    store.move(
        session,
        run.id,
        expected=RunStatus(run.status),
        to=to,
        phase=phase,
        finished_at=at,
        **fields,
    )
    attempts = session.scalars(select(Attempt).where(Attempt.run_id == run.id)).all()
    seconds = billing.billable_seconds(attempts, at)
    refund = billing.refund_decision(
        to,
        run.config.get("base_model", ""),
        fields.get("error"),
        delivered=fields.get("hub_entry_id") is not None,
        billed_seconds=seconds,
    )
    tier = plane.settings.tier(run.tier)
    billing.settle(
        session,
        account_id=run.account_id,
        run_id=run.id,
        seconds=seconds,
        credits_per_minute=tier.credits_per_minute if tier else 0.0,
        cancelled=to == RunStatus.CANCELLED,
        refund=refund.refunded is True,
    )


def fail_stranded(plane: ControlPlane) -> int:
    """Fail, once and with the reason, waiting runs that can never start as things stand.

    A run whose dataset is gone (its record or its file) fails with ``dataset_missing``
    instead of starting workers that cannot read it. A run whose account cannot pay its first
    minute, with no active run left to free credits, fails with ``out_of_credits``; nothing
    is charged for it. Returns how many runs failed.
    """
    at = now()
    with plane.sessions.begin() as session:
        stranded = {run.id: (run, _unpaid(plane, run)) for run in queue.unpayable(plane, session)}
        for run in _without_inputs(plane, session):
            stranded[run.id] = (run, _inputs_gone())
        for run, error in stranded.values():
            finish(plane, session, run, to=RunStatus.FAILED, phase=Phase.DONE, at=at, error=error)
    if stranded:
        plane.changed()
    return len(stranded)


def _without_inputs(plane: ControlPlane, session: Session) -> list[Run]:
    waiting = list(session.scalars(select(Run).where(Run.status.in_(queue.WAITING))))
    wanted = {dataset_id for run in waiting for dataset_id in run.config.get("dataset_ids", [])}
    present = {
        dataset.id
        for dataset in session.scalars(select(Dataset).where(Dataset.id.in_(wanted)))
        if (plane.datasets_dir / dataset.filename).is_file()
    }
    return [run for run in waiting if not set(run.config.get("dataset_ids", [])) <= present]


def _inputs_gone() -> dict[str, str]:
    return {
        "code": "dataset_missing",
        "message": "a dataset of the run is no longer on the server (deleted, or its file is "
        "missing)",
        "hint": "upload the dataset again and submit the run again",
    }


def _unpaid(plane: ControlPlane, run: Run) -> dict[str, str]:
    price = queue.minute_price(plane, run.tier)
    return {
        "code": billing.OUT_OF_CREDITS_CODE,
        "message": f"the balance does not cover the first minute on {run.tier} "
        f"({price:g} credits/min), and no other run of the account holds credits",
        "hint": "ask an admin for credits (tunery accounts grant), then submit the run again",
    }


def delete_run(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Delete a finished run's record, history and folder on the server (never its Hub
    entry).

    Raises NotFound, or Conflict while the run is not terminal.
    """
    with plane.sessions.begin() as session:
        run = get_run(session, account_id, run_id)
        if run.status not in TERMINAL:
            raise Conflict(f"run {run_id} is {run.status}; cancel it before deleting it")
        for model in (RunEvent, Attempt):
            for row in session.scalars(select(model).where(model.run_id == run_id)):
                session.delete(row)
        served = run.hub_entry_id
        session.delete(run)
    retention.remove_run_folder(plane, run_id)
    if served:  # chat finds a model by its run: the entry stays, its served copy goes
        remove_served_copy(plane, served)
