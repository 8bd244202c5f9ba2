"""The only writer of ``runs.status``; every move is a guarded update with an event.

``move`` runs ``UPDATE runs SET status=:to … WHERE id=:id AND status IN (:from)`` and, in
the same transaction, appends a ``status`` event. If the row was not in an expected state,
nothing changes and ``TransitionConflict`` is raised, so two actors racing (a cancel and a
completion, a reaper and a late heartbeat) end with exactly one winner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tunery.db import Run, RunEvent, now
from tunery.runs.lifecycle import RunStatus, can_move


class TransitionConflict(Exception):
    """The run was not in any of the expected states."""

    def __init__(self, run_id: str, expected: Iterable[RunStatus], actual: str | None) -> None:
        self.run_id = run_id
        self.actual = actual
        names = ", ".join(sorted(status.value for status in expected))
        super().__init__(f"run {run_id} is {actual}, not {names}")


class EventNotifier:
    """Wakes event-stream readers after commits; subscribers are called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()


def append_event(session: Session, run_id: str, kind: str, data: dict[str, Any]) -> None:
    """Add an event row to the session's transaction (it commits with the caller)."""
    session.add(RunEvent(run_id=run_id, kind=kind, data=data, created_at=now()))


def move(
    session: Session,
    run_id: str,
    *,
    expected: RunStatus | Iterable[RunStatus],
    to: RunStatus,
    phase: str,
    **fields: Any,
) -> None:
    """Guarded status change plus its event, inside the caller's transaction.

    ``fields`` are other columns set in the same UPDATE (``finished_at``, ``error``…).
    Raises TransitionConflict if the run is in none of ``expected``; ValueError if a move
    from an expected state to ``to`` is not in the lifecycle table.
    """
    sources = {expected} if isinstance(expected, RunStatus) else set(expected)
    illegal = [source for source in sources if not can_move(source, to)]
    if illegal:
        raise ValueError(f"{', '.join(sorted(illegal))} → {to} is not a legal move")
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([source.value for source in sources]))
        .values(status=to.value, phase=phase, **fields)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        actual = session.scalar(select(Run.status).where(Run.id == run_id))
        raise TransitionConflict(run_id, sources, actual)
    data: dict[str, Any] = {"status": to.value, "phase": phase}
    if fields.get("error"):
        data["error"] = fields["error"]
    append_event(session, run_id, "status", data)


def set_phase(session: Session, run_id: str, phase: str) -> None:
    """Change the phase inside the current state (never the status) and record it."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(phase=phase)
        .execution_options(synchronize_session=False)
    )
    append_event(session, run_id, "phase", {"phase": phase})
