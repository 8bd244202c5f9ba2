"""The worker protocol: a worker's spec, its reports, and what ends an attempt.

A worker knows only its attempt id and fencing token (stored hashed). It asks for its spec
(``tunery.runs.transfers`` serves its datasets and takes its bundles), then posts
batches of reports (``tunery.wire.reports``); each batch renews its lease and answers
whether the owner asked to cancel, to finish now or to pause (``runs.pause``). Writes from
an attempt that no longer owns its run (cancelled, or declared lost and replaced) are
refused with StaleAttempt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Attempt, Dataset, Run, now
from tunery.errors import TuneryError
from tunery.event_kinds import EventKind
from tunery.lifecycle import TERMINAL, RunStatus
from tunery.phases import Phase
from tunery.runs import billing, estimate, history, hub, store
from tunery.runs.plane import ControlPlane, NotFound, StaleAttempt
from tunery.runs.queries import live_metrics_of
from tunery.runs.settle import finish
from tunery.wire.reports import (
    AdapterRef,
    AttemptSpec,
    DatasetRef,
    ErrorData,
    EvaluationReport,
    FailureReport,
    HistoryReport,
    LogReport,
    MetricsReport,
    PausedReport,
    PhaseReport,
    ReportAck,
    ReportBatch,
    ResultData,
    ResultReport,
)


def fenced_attempt(session: Session, attempt_id: str, token: str) -> tuple[Attempt, Run]:
    """The attempt ``token`` belongs to and its run; NotFound for a wrong token, StaleAttempt
    once the attempt no longer owns its run."""
    attempt = session.get(Attempt, attempt_id)
    if attempt is None or not store.token_matches(attempt, token):
        raise NotFound(f"no attempt {attempt_id!r}")
    run = session.get(Run, attempt.run_id)
    if not attempt.active or run is None or run.attempt != attempt.number or run.status in TERMINAL:
        raise StaleAttempt(f"attempt {attempt_id} no longer owns its run")
    return attempt, run


def token_is_valid(plane: ControlPlane, *, attempt_id: str, token: str) -> bool:
    """Whether ``token`` is the fencing token of attempt ``attempt_id`` (live or not): what
    a worker route checks before it reads a byte of the body."""
    with plane.sessions() as session:
        attempt = session.get(Attempt, attempt_id)
        return attempt is not None and store.token_matches(attempt, token)


def attempt_spec(plane: ControlPlane, *, attempt_id: str, token: str) -> AttemptSpec:
    """What the worker runs: the recipe and its datasets by id (no server paths)."""
    with plane.sessions() as session:
        attempt, run = fenced_attempt(session, attempt_id, token)
        validation_ids = (run.config.get("validation") or {}).get("dataset_ids", [])
        wanted = [*run.config["dataset_ids"], *validation_ids]
        datasets = {
            dataset.id: dataset
            for dataset in session.scalars(select(Dataset).where(Dataset.id.in_(wanted)))
        }

        def refs(ids: list[str]) -> list[DatasetRef]:
            return [
                DatasetRef(
                    id=dataset.id,
                    suffix=Path(dataset.filename).suffix,
                    sha256=dataset.sha256,
                    bytes=dataset.bytes,
                )
                for dataset in (datasets[i] for i in ids)
            ]

        node = next((n for n in plane.settings.nodes if n.name == attempt.node), None)
        tier = plane.settings.tier(run.tier)
        recipe = {**run.config, "datasets": []}
        if "validation" in recipe:
            recipe["validation"] = {**recipe["validation"], "datasets": []}
        return AttemptSpec(
            run_id=run.id,
            attempt=attempt.number,
            recipe=recipe,
            datasets=refs(run.config["dataset_ids"]),
            validation_datasets=refs(validation_ids),
            init_adapter=_init_adapter(session, run),
            heartbeat_seconds=plane.settings.heartbeat_seconds,
            threads=node.threads if node is not None else None,
            devices=tier.devices if tier is not None else 1,
            estimate=run.estimate,
            wandb=plane.settings.wandb.access() if run.config.get("integrations") else None,
        )


def _init_adapter(session: Session, run: Run) -> AdapterRef | None:
    source = run.config.get("init_from")
    entry = hub.adapter_entry(session, run.account_id, source) if source else None
    if entry is None:
        return None
    lora = entry.artifacts["lora"]
    return AdapterRef(run_id=source, sha256=lora["sha256"], bytes=lora["size"])


def report(plane: ControlPlane, *, attempt_id: str, token: str, batch: ReportBatch) -> ReportAck:
    """Apply a worker's batch of reports in order (an empty batch is a heartbeat).

    Raises StaleAttempt when the attempt was fenced off (the run was cancelled, or the
    attempt was declared lost and replaced).
    """
    with plane.sessions.begin() as session:
        attempt, run = fenced_attempt(session, attempt_id, token)
        at = now()
        store.renew_lease(attempt, at + plane.settings.lease_seconds)
        for item in batch.events:
            _apply(plane, session, attempt, run, item, at)
        answer = ReportAck(
            cancel=run.cancel_requested,
            finish=run.finish_requested,
            pause=run.pause_requested,
        )
    plane.notifier.notify()
    return answer


def _apply(
    plane: ControlPlane, session: Session, attempt: Attempt, run: Run, item: Any, at: float
) -> None:
    match item:
        case PhaseReport():
            _on_phase(session, attempt, run, item.data.phase, at)
        case MetricsReport():
            _on_phase(session, attempt, run, Phase.TRAINING, at)
            run.metrics = item.data.model_dump(mode="json", exclude_unset=True)
            store.append_event(
                session, run.id, EventKind.METRICS, live_metrics_of(plane, session, run)
            )
        case EvaluationReport():
            evaluation = item.data.model_dump(mode="json", exclude_unset=True)
            run.evaluation = evaluation
            store.append_event(session, run.id, EventKind.EVALUATION, evaluation)
        case LogReport():
            store.append_event(session, run.id, EventKind.LOG, {"message": item.data.message})
        case HistoryReport():
            _on_history(
                session,
                run,
                [s.model_dump(mode="json", exclude_unset=True) for s in item.data.steps],
            )
        case ResultReport():
            _on_result(plane, session, attempt, run, item.data, at)
        case PausedReport():
            _on_paused(plane, session, attempt, run, item.data.step, at)
        case FailureReport():
            store.end_attempt(session, attempt, at, "failed")
            error = item.data.model_dump(include={"code", "message", "hint"})
            retry_or_fail(plane, session, run, error=error, transient=item.data.transient, at=at)


def _on_phase(session: Session, attempt: Attempt, run: Run, phase: Phase, at: float) -> None:
    if phase == Phase.TRAINING and run.status == RunStatus.WAITING_FOR_GPU:
        attempt.training_started_at = at
        store.move(
            session,
            run.id,
            expected=RunStatus.WAITING_FOR_GPU,
            to=RunStatus.TRAINING,
            phase=Phase.TRAINING,
            started_at=run.started_at or at,
        )
        session.refresh(run)
    elif phase != run.phase:
        store.set_phase(session, run.id, phase)
        session.refresh(run)


def _on_history(session: Session, run: Run, steps: list[dict[str, Any]]) -> None:
    """Record the steps of a resumed run's history that no report delivered.

    An attempt killed right after a checkpoint may not have reported its last steps; the
    next attempt sends the checkpoint's history and the missing steps are stored, marked
    ``replayed``, so the run's metrics have every step once.
    """
    reported = history.reported_steps(session, run.id)
    for step in steps:
        if step.get("step") not in reported:
            store.append_event(session, run.id, EventKind.METRICS, {**step, "replayed": True})


def _on_result(
    plane: ControlPlane, session: Session, attempt: Attempt, run: Run, result: ResultData, at: float
) -> None:
    store.end_attempt(session, attempt, at, "finished")
    summary = result.model_dump(mode="json", exclude_unset=True)
    if attempt.training_started_at is not None:
        # What the estimate's startup is checked against: placed to first step, not billed.
        summary["startup_seconds"] = round(attempt.training_started_at - attempt.started_at, 3)
    # The worker's own file names are ignored: what counts is what it uploaded.
    summary["artifacts"] = hub.received_bundles(plane, run)
    error = summary.get("error")
    target = RunStatus.COMPLETED if result.status == "completed" else RunStatus.FAILED
    if result.samples:
        store.append_event(session, run.id, EventKind.SAMPLES, {"samples": summary["samples"]})
    try:
        entry_id = hub.create_entry(plane, session, run)
    except (TuneryError, OSError) as failure:
        # Retrying would not help a misconfigured or full store; say so on the run instead
        # of failing the worker's report over and over.
        entry_id, target, error = None, RunStatus.FAILED, _hub_failure(failure)
    finish(
        plane,
        session,
        run,
        to=target,
        phase=Phase.DONE,
        at=at,
        summary=summary,
        samples=summary.get("samples", []),
        hub_entry_id=entry_id,
        metrics={**run.metrics, **(result.metrics or {})},
        error=error,
    )
    _keep_run_json(plane, session, run, summary, completed=target == RunStatus.COMPLETED, at=at)
    plane.wake_scheduler.set()


def _keep_run_json(
    plane: ControlPlane,
    session: Session,
    run: Run,
    summary: dict[str, Any],
    *,
    completed: bool,
    at: float,
) -> None:
    """The run's ``run.json`` in its folder on the server: the worker's summary, with the
    estimate it was submitted with set beside the billed time and credits when it completed."""
    attempts = session.scalars(select(Attempt).where(Attempt.run_id == run.id)).all()
    seconds = billing.billable_seconds(attempts, at)
    tier = plane.settings.tier(run.tier)
    credits = billing.credits_for(
        seconds, tier.credits_per_minute if tier else 0.0, whole_minutes=False
    )
    check = (
        estimate.check(run.estimate, summary, seconds, credits).model_dump()
        if completed and run.estimate
        else None
    )
    path = plane.runs_dir / run.id / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".run.json.partial")
    body = {**summary, "estimate": run.estimate, "estimate_check": check}
    partial.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def _on_paused(
    plane: ControlPlane, session: Session, attempt: Attempt, run: Run, step: int, at: float
) -> None:
    """The worker saved the checkpoint at ``step`` and stops: the attempt ends (its node is
    free, its billed time stops) and the run is ``paused`` until resumed."""
    store.end_attempt(session, attempt, at, store.PAUSED_END)
    store.move(
        session,
        run.id,
        expected=RunStatus(run.status),
        to=RunStatus.PAUSED,
        phase=Phase.PAUSED,
        pause_requested=False,
    )
    store.append_event(
        session,
        run.id,
        EventKind.LOG,
        {
            "message": f"paused after step {step}: its checkpoint is saved, its node is free "
            "and nothing is charged until it resumes"
        },
    )
    plane.wake_scheduler.set()


def _hub_failure(failure: TuneryError | OSError) -> dict[str, Any]:
    reason = failure.message if isinstance(failure, TuneryError) else str(failure)
    hint = failure.hint if isinstance(failure, TuneryError) else ""
    return ErrorData(
        code="hub_storage_failed",
        message=f"the run finished but its bundles could not be stored in the Hub: {reason}",
        hint=hint
        or "check the storage settings and free space; the bundles stay in the run's "
        "folder on the server",
    ).model_dump()


def retry_or_fail(
    plane: ControlPlane,
    session: Session,
    run: Run,
    *,
    error: dict[str, Any],
    transient: bool,
    at: float,
) -> None:
    """After an attempt ended badly: back off and retry while the budget lasts, else fail.

    The budget counts attempts that ended badly, not those a pause ended. A run whose pause
    was asked is ``paused`` instead of retried: resuming it goes on from its newest
    checkpoint as a retry would.
    """
    current = RunStatus(run.status)
    spent = session.scalar(
        select(func.count())
        .select_from(Attempt)
        .where(Attempt.run_id == run.id, Attempt.end_reason != store.PAUSED_END)
    )
    if transient and run.pause_requested:
        store.move(
            session,
            run.id,
            expected=current,
            to=RunStatus.PAUSED,
            phase=Phase.PAUSED,
            pause_requested=False,
            error=error,
        )
    elif transient and (spent or 0) < plane.settings.max_attempts:
        delay = plane.settings.retry_backoff_seconds * 2 ** (run.attempt - 1)
        store.move(
            session,
            run.id,
            expected=current,
            to=RunStatus.RETRYING,
            phase=Phase.BACKOFF,
            retry_at=at + delay,
            error=error,
        )
    else:
        if transient:
            error = {**error, "message": f"{error['message']} (after {spent} attempts)"}
        finish(plane, session, run, to=RunStatus.FAILED, phase=Phase.DONE, at=at, error=error)
    plane.wake_scheduler.set()
