"""The only writer of ``runs.status`` and of attempt liveness.

``create_run`` inserts a run as ``queued`` with its first event. ``move`` runs ``UPDATE runs
SET status=:to … WHERE id=:id AND status IN (:from)`` and, in the same transaction, appends
a ``status`` event. If the row was not in an expected state, nothing changes and
``TransitionConflict`` is raised, so two actors racing (a cancel and a completion, a reaper
and a late heartbeat) end with exactly one winner.

Attempts follow the same rule: ``open_attempt`` makes one live, ``end_attempt`` ends it with a
guarded update (only one of two racing enders wins), and ``active_attempt`` /
``busy_nodes`` are the only questions asked about liveness. Where an attempt runs, or why
a cluster has not placed it yet, reaches the run's log when it changes (``open_attempt``,
``record_placement``). Everything here runs inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.orm import Session

from tunery.backends.base import Handle
from tunery.db import Attempt, Run, RunEvent, new_id, now
from tunery.event_kinds import EventKind
from tunery.lifecycle import RunStatus, can_move
from tunery.phases import Phase
from tunery.runs.redact import redact_error

PAUSED_END = "paused"
"""The end reason of an attempt a pause ended (it does not count against retries)."""


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


def append_event(session: Session, run_id: str, kind: EventKind, data: dict[str, Any]) -> None:
    """Add an event row to the session's transaction (it commits with the caller)."""
    session.add(RunEvent(run_id=run_id, kind=kind, data=data, created_at=now()))


def move(
    session: Session,
    run_id: str,
    *,
    expected: RunStatus | Iterable[RunStatus],
    to: RunStatus,
    phase: Phase,
    **fields: Any,
) -> None:
    """Guarded status change plus its event, inside the caller's transaction.

    ``fields`` are other columns set in the same UPDATE (``finished_at``, ``error``…); an
    error is stored without server paths (``redact.redact_error``).
    Raises TransitionConflict if the run is in none of ``expected``; ValueError if a move
    from an expected state to ``to`` is not in the lifecycle table.
    """
    phase = Phase(phase)  # a phase outside the vocabulary is a bug: fail before writing
    if fields.get("error"):
        fields["error"] = redact_error(fields["error"])
    sources = {expected} if isinstance(expected, RunStatus) else set(expected)
    illegal = [source for source in sources if not can_move(source, to)]
    if illegal:
        raise ValueError(f"{', '.join(sorted(illegal))} → {to} is not a legal move")
    moved = _rows_changed(
        session,
        update(Run)
        .where(Run.id == run_id, Run.status.in_([source.value for source in sources]))
        .values(status=to.value, phase=phase.value, **fields)
        .execution_options(synchronize_session=False),
    )
    if moved != 1:
        actual = session.scalar(select(Run.status).where(Run.id == run_id))
        raise TransitionConflict(run_id, sources, actual)
    data: dict[str, Any] = {"status": to.value, "phase": phase.value}
    if fields.get("error"):
        data["error"] = fields["error"]
    append_event(session, run_id, EventKind.STATUS, data)


def set_phase(session: Session, run_id: str, phase: Phase) -> None:
    """Change the phase inside the current state (never the status) and record it."""
    phase = Phase(phase)
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(phase=phase.value)
        .execution_options(synchronize_session=False)
    )
    append_event(session, run_id, EventKind.PHASE, {"phase": phase.value})


def create_run(
    session: Session,
    *,
    account_id: str,
    name: str,
    tier: str,
    config: dict[str, Any],
    idempotency_key: str | None,
    payload_hash: str | None = None,
    estimate: dict[str, Any] | None = None,
) -> Run:
    """Insert a ``queued`` run and its first status event; returns it (flushed).

    ``payload_hash`` is the digest of the payload ``idempotency_key`` stands for. Raises
    IntegrityError at flush when the account already used ``idempotency_key``.
    """
    run = Run(
        id=new_id("run"),
        account_id=account_id,
        name=name,
        status=RunStatus.QUEUED.value,
        phase=Phase.QUEUED.value,
        tier=tier,
        config=config,
        created_at=now(),
        idempotency_key=idempotency_key,
        idempotency_payload_hash=payload_hash,
        metrics={},
        samples=[],
        estimate=estimate,
    )
    session.add(run)
    session.flush()
    append_event(
        session,
        run.id,
        EventKind.STATUS,
        {"status": RunStatus.QUEUED.value, "phase": Phase.QUEUED.value},
    )
    return run


# Attempts ------------------------------------------------------------------------------


def open_attempt(
    session: Session, run: Run, *, number: int, node: str, lease_until: float
) -> tuple[Attempt, str]:
    """Record a live attempt of ``run`` on ``node``; returns it and its fencing token.

    The token exists only in the returned value: the row keeps its SHA-256.
    """
    token = secrets.token_urlsafe(32)
    attempt = Attempt(
        id=new_id("att"),
        run_id=run.id,
        number=number,
        node=node,
        token_hash=token_digest(token),
        lease_expires_at=lease_until,
    )
    session.add(attempt)
    if node:
        _log_placed(session, run.id, node)
    return attempt, token


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(attempt: Attempt, token: str) -> bool:
    """Whether ``token`` is the attempt's (constant-time)."""
    return secrets.compare_digest(attempt.token_hash, token_digest(token))


def record_placement(
    session: Session, attempt: Attempt, *, node: str | None, waiting_reason: str | None
) -> bool:
    """Where a cluster placed the attempt, or why it has not yet; True if anything changed.

    Each change is logged once, not each time the scheduler asks: "waiting: REASON" when the
    reason changes, "placed on node NODE" when the attempt gets a node or stops waiting on
    the one it has. ``node`` None keeps the node recorded so far.
    """
    node = node if node is not None else attempt.node
    if (attempt.node, attempt.waiting_reason) == (node, waiting_reason):
        return False
    waits_anew = waiting_reason is not None and waiting_reason != attempt.waiting_reason
    placed_now = (
        bool(node)
        and waiting_reason is None
        and (node != attempt.node or attempt.waiting_reason is not None)
    )
    if waits_anew:
        _log(session, attempt.run_id, f"waiting: {waiting_reason}")
    elif placed_now:
        _log_placed(session, attempt.run_id, node)
    attempt.node, attempt.waiting_reason = node, waiting_reason
    return True


def _log_placed(session: Session, run_id: str, node: str) -> None:
    _log(session, run_id, f"placed on node {node}")


def _log(session: Session, run_id: str, message: str) -> None:
    """A line of the run's log written by the control plane (a worker's come as reports)."""
    append_event(session, run_id, EventKind.LOG, {"message": message})


def end_attempt(session: Session, attempt: Attempt, at: float, reason: str) -> bool:
    """End an attempt's liveness (its node is free again); False if it had already ended.

    A guarded update, so of two actors ending the same attempt (a report and the reaper, a
    cancel and a failed start) exactly one gets True.
    """
    ended = _rows_changed(
        session,
        update(Attempt)
        .where(Attempt.id == attempt.id, Attempt.active.is_(True))
        .values(active=False, ended_at=at, end_reason=reason),
    )
    return ended == 1


def _rows_changed(session: Session, statement: Update) -> int:
    """How many rows a guarded UPDATE changed (0 when its guard no longer held)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def renew_lease(attempt: Attempt, until: float) -> None:
    """The worker reported in: it is not lost before ``until``."""
    attempt.lease_expires_at = until


def record_handle(attempt: Attempt, handle: Handle) -> None:
    """Remember where the attempt's worker runs (opaque to everyone but its backend)."""
    attempt.process_started = handle.encode()


def handle_of(attempt: Attempt) -> Handle | None:
    """The handle ``record_handle`` stored, or None before the worker was started."""
    if attempt.pid is not None:
        # Rows written before handles were opaque name a local process by its columns.
        return Handle("local", f"{attempt.pid}:{attempt.process_started or ''}")
    if attempt.process_started:
        return Handle.decode(attempt.process_started)
    return None


def active_attempt(session: Session, run_id: str) -> Attempt | None:
    """The run's live attempt (at most one), if any."""
    return session.scalar(select(Attempt).where(Attempt.run_id == run_id, Attempt.active.is_(True)))


def active_attempts(session: Session) -> list[Attempt]:
    return list(session.scalars(select(Attempt).where(Attempt.active.is_(True))))


def busy_nodes(session: Session) -> set[str]:
    """Nodes that hold a live attempt ("" stands for attempts a cluster has not placed)."""
    return set(session.scalars(select(Attempt.node).where(Attempt.active.is_(True))))
