"""Read models: runs, credits and tiers as the API returns them.

Every read the routes need lives here (or in ``history``, ``datasets``, ``hub``), so routes
hold no SQL. A list of runs costs four queries whatever its length: newest event ids, the
runs, their attempts, the queues they wait in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from tunery.db import Attempt, LedgerEntry, Run, RunEvent, now
from tunery.lifecycle import SHOWS_ERROR, TERMINAL, RunStatus
from tunery.pipeline.reporting import current_epoch
from tunery.runs import billing, estimate, hub, queue, store
from tunery.runs.plane import ControlPlane, NotFound
from tunery.wire.events import RunSnapshot, SnapshotEvent, TierSnapshot
from tunery.wire.model_names import fine_tuned_model_name
from tunery.wire.rest import CreditsPublic, LedgerEntryPublic, RunMetrics, RunPublic, TierPublic
from tunery.wire.timefmt import iso

# What the Run panel shows before the first step.
BEFORE_FIRST_STEP: dict[str, Any] = {
    "epoch": None,
    "epochs": None,
    "step": 0,
    "total_steps": None,
    "loss": None,
    "progress": 0.0,
    "eta_seconds": None,
}


def get_run(session: Session, account_id: str, run_id: str) -> Run:
    """The account's run; raises NotFound for unknown ids and other accounts' runs."""
    run = session.scalar(select(Run).where(Run.id == run_id, Run.account_id == account_id))
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    return run


def run_name(plane: ControlPlane, account_id: str, run_id: str) -> str:
    """The account's run's name (letters, digits, ``.``, ``_``, ``-``); raises NotFound."""
    with plane.sessions() as session:
        return get_run(session, account_id, run_id).name


def require_run(plane: ControlPlane, account_id: str, run_id: str) -> None:
    """Raises NotFound unless the account has the run."""
    with plane.sessions() as session:
        get_run(session, account_id, run_id)


def run_status(session: Session, run_id: str) -> str | None:
    """The run's status, or None once it was deleted."""
    return session.scalar(select(Run.status).where(Run.id == run_id))


def price_of(plane: ControlPlane, tier_id: str) -> float:
    tier = plane.settings.tier(tier_id)
    return tier.credits_per_minute if tier else 0.0


def live_metrics(plane: ControlPlane, run: Run, attempts: Iterable[Attempt]) -> dict[str, Any]:
    """The Run panel numbers: the worker's latest step plus duration and credits now."""
    at = run.finished_at or now()
    seconds = billing.billable_seconds(attempts, at)
    price = price_of(plane, run.tier)
    stored = run.metrics or {}
    metrics = {
        **BEFORE_FIRST_STEP,
        **stored,
        "current_epoch": current_epoch(stored.get("epoch"), stored.get("epochs")),
        "duration_seconds": round(at - run.created_at, 1),
        "billable_seconds": round(seconds, 1),
        "credits": billing.credits_for(
            seconds, price, whole_minutes=run.status == RunStatus.CANCELLED
        ),
        "cancel_credits": None
        if run.status in TERMINAL
        else billing.credits_for(seconds, price, whole_minutes=True),
    }
    if run.status == RunStatus.COMPLETED:
        metrics["eta_seconds"] = 0.0
    return metrics


def live_metrics_of(plane: ControlPlane, session: Session, run: Run) -> dict[str, Any]:
    """``live_metrics`` of one run, reading its attempts."""
    return live_metrics(plane, run, attempts_by_run(session, [run.id]).get(run.id, []))


def attempts_by_run(session: Session, run_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    grouped: dict[str, list[Attempt]] = defaultdict(list)
    if run_ids:
        for attempt in session.scalars(select(Attempt).where(Attempt.run_id.in_(run_ids))):
            grouped[attempt.run_id].append(attempt)
    return grouped


def queue_standing(plane: ControlPlane, session: Session, runs: Iterable[Run]) -> queue.Standing:
    """The queue as ``runs`` stand in it (``tunery.runs.queue``): the 1-based place of each
    queued run in its tier's queue, in the order the scheduler starts them, and why each
    waiting (queued or retrying) run its account cannot pay for yet has none."""
    waiting = {run.id: run for run in runs if run.status in queue.WAITING}
    if not waiting:
        return queue.Standing(places={}, reasons={})
    standing = queue.standing(plane, session, {run.tier for run in waiting.values()})
    return queue.Standing(
        places={
            run_id: place
            for run_id, place in standing.places.items()
            if run_id in waiting and waiting[run_id].status == RunStatus.QUEUED
        },
        reasons={
            run_id: reason for run_id, reason in standing.reasons.items() if run_id in waiting
        },
    )


def queue_positions(plane: ControlPlane, session: Session, runs: Iterable[Run]) -> dict[str, int]:
    """``queue_standing``'s places."""
    return queue_standing(plane, session, runs).places


def _run_views(
    plane: ControlPlane, session: Session, *where: ColumnElement[bool]
) -> list[RunPublic]:
    # Each SELECT sees the newest commit: the newest event ids are read before the runs, so
    # every run is at least as new as its ``last_event_id`` says.
    newest = session.execute(
        select(RunEvent.run_id, func.max(RunEvent.id))
        .join(Run, Run.id == RunEvent.run_id)
        .where(*where)
        .group_by(RunEvent.run_id)
    )
    last_event = {run_id: event_id for run_id, event_id in newest}
    runs = list(
        session.scalars(
            select(Run)
            .where(*where)
            .order_by(Run.created_at.desc())
            .execution_options(populate_existing=True)
        )
    )
    attempts = attempts_by_run(session, [run.id for run in runs])
    standing = queue_standing(plane, session, runs)
    gone = hub.deleted_entries(session, runs)
    return [
        run_view(
            plane,
            run,
            attempts[run.id],
            standing.places.get(run.id),
            last_event.get(run.id),
            queue_reason=standing.reasons.get(run.id),
            hub_entry_deleted=run.hub_entry_id in gone,
        )
        for run in runs
    ]


def run_view(
    plane: ControlPlane,
    run: Run,
    attempts: Iterable[Attempt],
    queue_position: int | None,
    last_event_id: int | None,
    *,
    queue_reason: str | None = None,
    hub_entry_deleted: bool = False,
) -> RunPublic:
    """A run as the API shows it, from rows already read.

    Its ``waiting_reason`` is why the cluster has not placed it (``waiting_for_gpu``), else
    ``queue_reason``: why the queue does not start it yet (``queue_standing``'s reason).
    """
    attempts = list(attempts)
    artifacts = (run.summary or {}).get("artifacts") or {}
    base_model = run.config.get("base_model", "")
    metrics = live_metrics(plane, run, attempts)
    refund = billing.refund_decision(
        run.status,
        base_model,
        run.error,
        delivered=run.hub_entry_id is not None,
        # Exact, as settlement had it: the displayed seconds are rounded.
        billed_seconds=billing.billable_seconds(attempts, run.finished_at or now()),
    )
    current = max(attempts, key=lambda attempt: attempt.number, default=None)
    placing = current is not None and current.active and run.status == RunStatus.WAITING_FOR_GPU
    waiting_reason = current.waiting_reason if placing and current is not None else queue_reason
    return RunPublic(
        id=run.id,
        name=run.name,
        status=run.status,
        phase=run.phase,
        tier=run.tier,
        created_at=iso(run.created_at),
        started_at=iso(run.started_at),
        finished_at=iso(run.finished_at),
        config=run.config,
        metrics=RunMetrics.model_validate(metrics),
        error=run.error if run.status in SHOWS_ERROR else None,
        attempt=run.attempt,
        node=(current.node or None) if current is not None else None,
        waiting_reason=waiting_reason,
        queue_position=queue_position,
        cancel_requested=run.cancel_requested,
        finish_requested=run.finish_requested,
        pause_requested=run.pause_requested,
        evaluation=(run.summary or {}).get("evaluation") or run.evaluation,
        estimate=run.estimate,
        estimate_check=estimate.check(
            run.estimate, run.summary or {}, metrics["billable_seconds"], metrics["credits"]
        )
        if run.status == RunStatus.COMPLETED and run.estimate is not None
        else None,
        kept=(run.summary or {}).get("kept"),
        samples=run.samples or [],
        artifacts=artifacts or None,
        hub_entry_id=run.hub_entry_id,
        hub_entry_deleted=hub_entry_deleted,
        openai_model=(
            fine_tuned_model_name(base_model, run.account_id, run.name, run.id)
            if artifacts.get("gguf") and not hub_entry_deleted
            else None
        ),
        tags=run.tags or [],
        note=run.note or "",
        last_event_id=last_event_id,
        refunded=refund.refunded,
        refund_note=refund.note,
    )


def run_payload(plane: ControlPlane, account_id: str, run_id: str) -> dict[str, Any]:
    """The submission payload of the account's run, for a rerun; raises NotFound.

    The recipe as it was submitted (normalised), with the run's tags and note as they are
    now, and the attestations and an accepted warning unset: a rerun is a new submission,
    attested and accepted anew.
    """
    with plane.sessions() as session:
        run = get_run(session, account_id, run_id)
        config = {**run.config, "tags": list(run.tags or []), "note": run.note or ""}
    config.pop("attestations", None)
    config.pop("accept_warnings", None)
    return config


def view_run(plane: ControlPlane, account_id: str, run_id: str) -> RunPublic:
    """The account's run as the API shows it; raises NotFound."""
    with plane.sessions() as session:
        views = _run_views(plane, session, Run.id == run_id, Run.account_id == account_id)
    if not views:
        raise NotFound(f"no run {run_id!r}")
    return views[0]


def list_runs(plane: ControlPlane, account_id: str) -> list[RunPublic]:
    """The account's runs, newest first."""
    with plane.sessions() as session:
        return _run_views(plane, session, Run.account_id == account_id)


def snapshot(plane: ControlPlane, account_id: str, *, with_tiers: bool) -> SnapshotEvent:
    """Live numbers of the account: each unfinished run's (duration, credits, queue
    position), the balance and, ``with_tiers``, each tier's free nodes (which asks the
    backend)."""
    with plane.sessions() as session:
        views = _run_views(
            plane,
            session,
            Run.account_id == account_id,
            Run.status.not_in([status.value for status in TERMINAL]),
        )
        balance = billing.balance(session, account_id)
    return SnapshotEvent(
        runs=[
            RunSnapshot(
                id=view.id,
                status=view.status,
                phase=view.phase,
                metrics=view.metrics,
                queue_position=view.queue_position,
                waiting_reason=view.waiting_reason,
            )
            for view in views
        ],
        balance=balance,
        tiers=[
            TierSnapshot(id=tier.id, nodes_free=tier.nodes_free, nodes_total=tier.nodes_total)
            for tier in tiers_view(plane)
        ]
        if with_tiers
        else None,
    )


def credits_view(plane: ControlPlane, account_id: str) -> CreditsPublic:
    """The account's balance and its ledger, oldest movement first."""
    with plane.sessions() as session:
        rows = session.scalars(
            select(LedgerEntry).where(LedgerEntry.account_id == account_id).order_by(LedgerEntry.id)
        )
        ledger = [
            LedgerEntryPublic(
                id=row.id,
                kind=row.kind,
                amount=row.amount,
                run_id=row.run_id,
                note=row.note,
                created_at=iso(row.created_at),
            )
            for row in rows
        ]
        return CreditsPublic(balance=billing.balance(session, account_id), ledger=ledger)


def tiers_view(plane: ControlPlane) -> list[TierPublic]:
    """GPU tiers with their prices and their nodes, total and free now, as the backend
    counts them (the configured nodes, or the cluster's)."""
    with plane.sessions() as session:
        busy = store.busy_nodes(session)
    rows = []
    for tier in plane.settings.tiers:
        capacity = plane.workers.capacity(tier.id, busy)
        rows.append(
            TierPublic(
                id=tier.id,
                name=tier.name,
                credits_per_minute=tier.credits_per_minute,
                gpu_memory_gib=tier.memory_gib,
                gpus=tier.gpus_per_attempt,
                devices=tier.devices,
                nodes_total=capacity.total,
                nodes_free=capacity.free,
            )
        )
    return rows
