"""Finish now: a training run stops at the next step and delivers what it learned.

Unlike a cancel, the run goes on to save, export and sample, and ends ``completed``, billed
like any completed run. The request is a flag on the run that the worker's next report
answer carries (``finish: true``), so it reaches the worker as fast as a cancel does.
"""

from __future__ import annotations

from tunery.event_kinds import EventKind
from tunery.lifecycle import FINISHABLE, RunStatus
from tunery.runs import store
from tunery.runs.plane import Conflict, ControlPlane
from tunery.runs.queries import get_run


def finish_run(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Ask a training run to finish now; asking twice is harmless.

    Raises NotFound, or Conflict when the run is not training (nothing learned yet to
    deliver: cancel a queued run instead; a finished run has nothing left to stop).
    """
    with plane.sessions.begin() as session:
        run = get_run(session, account_id, run_id)
        if run.status not in FINISHABLE:
            hint = (
                "cancel it instead: it has not trained yet"
                if run.status in (RunStatus.QUEUED, RunStatus.WAITING_FOR_GPU)
                else ""
            )
            raise Conflict(
                f"run {run_id} is {run.status}; only a training run can finish now", hint=hint
            )
        if run.finish_requested:
            return
        run.finish_requested = True
        store.append_event(
            session,
            run.id,
            EventKind.LOG,
            {
                "message": "finish now requested: training stops after the current step, then "
                "the adapter is saved, exported and sampled"
            },
        )
    plane.changed()
