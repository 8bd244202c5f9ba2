"""What the server keeps on disk for runs, and for how long.

A run's folder under ``DATA_DIR/runs`` holds its checkpoints, adapter, ``run.json`` (with
training rows) and worker logs. Deleting a run removes it. A failed or cancelled run's
folder is removed ``failed_run_retention_hours`` after the run ended (it is kept that long
so an export can be rerun and a failure read); a completed run's folder stays until the run
is deleted. Hub entries live in Hub storage and are not touched.
"""

from __future__ import annotations

import shutil

from sqlalchemy import select

from tunery.db import Run, now
from tunery.lifecycle import RunStatus
from tunery.runs.plane import ControlPlane

SWEEP_EVERY_SECONDS = 600.0
"""How often the scheduler looks for expired folders (the retention is counted in hours)."""
EXPIRES = (RunStatus.FAILED.value, RunStatus.CANCELLED.value)


def remove_run_folder(plane: ControlPlane, run_id: str) -> None:
    """Remove the run's folder, if any (a worker still winding down may race: best effort)."""
    shutil.rmtree(plane.runs_dir / run_id, ignore_errors=True)


def sweep(plane: ControlPlane) -> list[str]:
    """Remove the folders of failed and cancelled runs that ended before the retention.

    Returns the ids of the runs whose folders were removed. Cheap when called often: it
    looks at most every ``SWEEP_EVERY_SECONDS``.
    """
    at = now()
    if at - plane.last_sweep_at < SWEEP_EVERY_SECONDS:
        return []
    plane.last_sweep_at = at
    cutoff = at - plane.settings.failed_run_retention_hours * 3600
    with plane.sessions() as session:
        expired = list(
            session.scalars(select(Run.id).where(Run.status.in_(EXPIRES), Run.finished_at < cutoff))
        )
    removed = [run_id for run_id in expired if (plane.runs_dir / run_id).exists()]
    for run_id in removed:
        remove_run_folder(plane, run_id)
    return removed
