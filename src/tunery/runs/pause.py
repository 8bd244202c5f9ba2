"""Pause and resume: a run stops at a checkpoint, frees its node, and later goes on from it.

A run that holds no node (``queued``, ``retrying``) moves to ``paused`` at once. A run whose
attempt runs gets ``pause_requested``, which the worker's next report answer carries
(``pause: true``, beside ``cancel`` and ``finish``, so every rank stops the way cancel and
Finish now stop them); the pipeline saves a checkpoint after its current step and reports
``paused``, and ``runs.attempts`` ends the attempt (its node is free, its billed time stops)
and moves the run to ``paused``. Resume moves it back to ``queued`` through the intake,
checked as a submission is (``intake.requeue_paused``); its next attempt resumes from that
checkpoint, so every step is trained once.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from tunery.event_kinds import EventKind
from tunery.lifecycle import PAUSABLE, RESUMABLE, RunStatus
from tunery.phases import Phase
from tunery.runs import intake, store
from tunery.runs.plane import Conflict, ControlPlane
from tunery.runs.queries import get_run

HOLDS_NO_NODE = frozenset({RunStatus.QUEUED, RunStatus.RETRYING})


def pause_run(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Pause a run; asking twice (or once it is paused) is harmless.

    Raises NotFound, or Conflict once the run is completed, failed or cancelled.
    """
    while True:
        try:
            with plane.sessions.begin() as session:
                run = get_run(session, account_id, run_id)
                status = RunStatus(run.status)
                if status == RunStatus.PAUSED or run.pause_requested:
                    return
                if status not in PAUSABLE:
                    raise Conflict(f"run {run_id} is {run.status}; only an unfinished run pauses")
                if status in HOLDS_NO_NODE:
                    store.move(
                        session,
                        run.id,
                        expected=status,
                        to=RunStatus.PAUSED,
                        phase=Phase.PAUSED,
                        retry_at=None,
                    )
                    _log(session, run.id, "paused: it holds no node; resume queues it again")
                else:
                    run.pause_requested = True
                    _log(
                        session,
                        run.id,
                        "pause requested: training saves a checkpoint after the current step "
                        "and stops; resume continues from that checkpoint",
                    )
        except store.TransitionConflict:
            continue  # the scheduler or the worker moved the run meanwhile: look again
        break
    plane.changed()


def resume_run(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Queue a paused run again through the intake (``intake.requeue_paused``: checked as a
    submission is; it continues from its checkpoint), or withdraw a pause that has not taken
    effect yet. Raises NotFound, Conflict for a run that is not paused, and what the intake
    raises."""
    with plane.sessions.begin() as session:
        run = get_run(session, account_id, run_id)
        withdrawn = run.pause_requested and run.status != RunStatus.PAUSED
        if withdrawn:
            run.pause_requested = False
            _log(session, run.id, "pause withdrawn: training goes on")
        elif RunStatus(run.status) not in RESUMABLE:
            raise Conflict(f"run {run_id} is {run.status}, not paused; nothing to resume")
    if withdrawn:
        plane.changed()
    else:
        intake.requeue_paused(plane, account_id=account_id, run_id=run_id)


def _log(session: Session, run_id: str, message: str) -> None:
    store.append_event(session, run_id, EventKind.LOG, {"message": message})
