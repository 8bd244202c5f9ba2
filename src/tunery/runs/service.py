"""Runs as the API and workers see them: submit, cancel, report, read.

Plain functions over a ``ControlPlane`` (settings, database sessions, backend, notifier).
Status changes go through ``tunery.runs.store.move``; nothing here writes the status column.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tunery.backends.base import Backend, Handle
from tunery.catalog.models import find as catalog_find
from tunery.db import Account, ApiToken, Attempt, Dataset, Run, RunEvent, new_id, now
from tunery.errors import ConfigError, FieldProblem, TuneryError
from tunery.hub.storage import Storage, open_storage
from tunery.pipeline.config import RunRecipe, parse_recipe
from tunery.pipeline.load import parse_model_reference
from tunery.runs import billing, hub, store
from tunery.runs.lifecycle import ACTIVE, TERMINAL, RunStatus
from tunery.settings import Settings


class NotFound(TuneryError):
    code = "not_found"


class Conflict(TuneryError):
    code = "conflict"


class StaleAttempt(TuneryError):
    """A write from an attempt that no longer owns its run (fencing)."""

    code = "stale_attempt"


@dataclass
class ControlPlane:
    settings: Settings
    sessions: sessionmaker
    backend: Backend
    notifier: store.EventNotifier
    server_url: str = ""

    def __post_init__(self) -> None:
        self.wake_scheduler = threading.Event()

    @property
    def runs_dir(self) -> Path:
        return self.settings.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.settings.data_dir / "datasets"

    @functools.cached_property
    def storage(self) -> Storage:
        """The Hub store the settings name, built on first use (processes that never touch
        the Hub, such as account commands, need neither boto3 nor S3 credentials)."""
        return open_storage(self.settings)


# Accounts and tokens -----------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_account(plane: ControlPlane, *, name: str, is_admin: bool = False) -> tuple[str, str]:
    """Create an account and its first API token; returns (account id, token)."""
    token = f"tny_{secrets.token_urlsafe(32)}"
    with plane.sessions.begin() as session:
        if session.scalar(select(Account).where(Account.name == name)) is not None:
            raise Conflict(f"an account named {name!r} already exists")
        account = Account(id=new_id("acc"), name=name, is_admin=is_admin)
        session.add(account)
        session.flush()
        session.add(ApiToken(id=new_id("tok"), account_id=account.id, token_hash=hash_token(token)))
    return account.id, token


def issue_token(plane: ControlPlane, *, account_id: str) -> str:
    """A new API token for an existing account (stored hashed); returns it once."""
    token = f"tny_{secrets.token_urlsafe(32)}"
    with plane.sessions.begin() as session:
        session.add(ApiToken(id=new_id("tok"), account_id=account_id, token_hash=hash_token(token)))
    return token


def account_for_token(plane: ControlPlane, token: str) -> Account | None:
    with plane.sessions() as session:
        return session.scalar(
            select(Account)
            .join(ApiToken, ApiToken.account_id == Account.id)
            .where(ApiToken.token_hash == hash_token(token))
        )


# Submission --------------------------------------------------------------------------


def default_tier(plane: ControlPlane) -> str:
    return plane.settings.nodes[0].tier


def validate_submission(
    plane: ControlPlane, session: Session, account_id: str, payload: Any
) -> tuple[RunRecipe, str]:
    """Every reason a submission is blocked, at once; returns the recipe and its tier.

    Schema problems (types, ranges, unknown fields) and the checks against this server
    (datasets, attestations, tier, base model, credits) are reported together; a field
    whose schema is wrong is not checked again.
    """
    problems: list[FieldProblem] = []
    recipe: RunRecipe | None = None
    try:
        recipe = parse_recipe(payload)
    except ConfigError as error:
        problems.extend(error.problems)
    raw = payload if isinstance(payload, dict) else {}
    broken = {problem.field.split(".")[0] for problem in problems}

    def field(name: str, default: Any) -> Any:
        if recipe is not None:
            return getattr(recipe, name)
        return default if name in broken else raw.get(name, default)

    if field("datasets", []):
        problems.append(
            FieldProblem(
                "datasets",
                "the server takes uploaded dataset ids: upload with POST /datasets "
                "and list them under dataset_ids",
            )
        )
    dataset_ids = field("dataset_ids", [])
    if "dataset_ids" not in broken and isinstance(dataset_ids, list):
        if not dataset_ids:
            problems.append(FieldProblem("dataset_ids", "list at least one uploaded dataset id"))
        for index, dataset_id in enumerate(dataset_ids):
            owned = session.scalar(
                select(Dataset.id).where(
                    Dataset.id == str(dataset_id), Dataset.account_id == account_id
                )
            )
            if owned is None:
                problems.append(
                    FieldProblem(f"dataset_ids.{index}", f"unknown dataset id {dataset_id!r}")
                )
    attestations = field("attestations", {})
    if recipe is not None:
        attestations = recipe.attestations.model_dump()
    if "attestations" not in broken and isinstance(attestations, dict):
        if attestations.get("dataset_rights") is not True:
            problems.append(
                FieldProblem(
                    "attestations.dataset_rights",
                    "confirm that you hold the rights to train on the data",
                )
            )
        if attestations.get("model_license") is not True:
            problems.append(
                FieldProblem(
                    "attestations.model_license", "confirm that you accept the base model's license"
                )
            )
    tier = field("gpu_tier", None) or default_tier(plane)
    tier_settings = plane.settings.tier(str(tier))
    if "gpu_tier" not in broken:
        if tier_settings is None:
            known = ", ".join(t.id for t in plane.settings.tiers)
            problems.append(FieldProblem("gpu_tier", f"unknown tier {tier!r}; tiers: {known}"))
        elif not any(node.tier == tier for node in plane.settings.nodes):
            problems.append(FieldProblem("gpu_tier", f"no node serves tier {tier!r}"))
    base_model = field("base_model", None)
    if "base_model" not in broken and isinstance(base_model, str):
        try:
            parse_model_reference(base_model)
        except ConfigError as error:
            problems.extend(error.problems)
    price = tier_settings.credits_per_minute if tier_settings else 0.0
    available = billing.balance(session, account_id)
    if price > 0 and available < price:
        problems.append(
            FieldProblem(
                "credits",
                f"the balance ({available:.2f} credits) does not cover the first "
                f"minute on {tier} ({price:g} credits/min)",
            )
        )
    if problems or recipe is None:
        raise ConfigError(problems)
    return recipe, str(tier)


def submit_run(
    plane: ControlPlane, *, account_id: str, payload: Any, idempotency_key: str | None
) -> Run:
    """Queue a run, or return the run an earlier submission with the same key created."""
    if idempotency_key:
        existing = _run_by_key(plane, account_id, idempotency_key)
        if existing is not None:
            return existing
    try:
        with plane.sessions.begin() as session:
            recipe, tier = validate_submission(plane, session, account_id, payload)
            run = Run(
                id=new_id("run"),
                account_id=account_id,
                name=recipe.name,
                status=RunStatus.QUEUED.value,
                phase="queued",
                tier=tier,
                config=recipe.model_dump(mode="json"),
                created_at=now(),
                idempotency_key=idempotency_key,
                metrics={},
                samples=[],
            )
            session.add(run)
            session.flush()
            store.append_event(session, run.id, "status", {"status": "queued", "phase": "queued"})
    except IntegrityError:
        # Two retries of one submission raced; the first insert won.
        existing = _run_by_key(plane, account_id, idempotency_key or "")
        if existing is None:
            raise
        return existing
    plane.notifier.notify()
    plane.wake_scheduler.set()
    return run


def _run_by_key(plane: ControlPlane, account_id: str, key: str) -> Run | None:
    with plane.sessions() as session:
        return session.scalar(
            select(Run).where(Run.account_id == account_id, Run.idempotency_key == key)
        )


# Reading -----------------------------------------------------------------------------


def get_run(session: Session, account_id: str, run_id: str) -> Run:
    run = session.scalar(select(Run).where(Run.id == run_id, Run.account_id == account_id))
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    return run


def queue_position(session: Session, run: Run) -> int | None:
    """1-based place among the queued runs of its tier, or None when not queued."""
    if run.status != RunStatus.QUEUED.value:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(
            Run.tier == run.tier,
            Run.status == RunStatus.QUEUED.value,
            (Run.created_at < run.created_at)
            | ((Run.created_at == run.created_at) & (Run.id < run.id)),
        )
    )
    return int(ahead or 0) + 1


def live_metrics(plane: ControlPlane, session: Session, run: Run) -> dict[str, Any]:
    """The Run panel numbers: the worker's latest step plus duration and credits now."""
    at = run.finished_at or now()
    attempts = session.scalars(select(Attempt).where(Attempt.run_id == run.id)).all()
    seconds = billing.billable_seconds(attempts, at)
    tier = plane.settings.tier(run.tier)
    price = tier.credits_per_minute if tier else 0.0
    whole = run.status == RunStatus.CANCELLED.value
    metrics = {
        "epoch": None,
        "epochs": None,
        "step": 0,
        "total_steps": None,
        "loss": None,
        "progress": 0.0,
        "eta_seconds": None,
        **run.metrics,
        "duration_seconds": round(at - run.created_at, 1),
        "billable_seconds": round(seconds, 1),
        "credits": billing.credits_for(seconds, price, whole_minutes=whole),
    }
    if run.status in (RunStatus.COMPLETED.value,):
        metrics["eta_seconds"] = 0.0
    return metrics


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


# Cancel ------------------------------------------------------------------------------


def cancel_run(plane: ControlPlane, *, account_id: str, run_id: str) -> Run:
    """Stop a run in any non-terminal state; cancelling twice is harmless.

    The worker's process group is signalled at once (terminate, then kill after the
    grace) on a background thread; the run is ``cancelled`` as soon as this returns.
    Raises Conflict once the run is completed or failed.
    """
    while True:
        handle: Handle | None = None
        try:
            with plane.sessions.begin() as session:
                run = get_run(session, account_id, run_id)
                if run.status == RunStatus.CANCELLED.value:
                    return run
                if run.status in TERMINAL:
                    raise Conflict(f"run {run_id} is already {run.status}; it cannot be cancelled")
                at = now()
                attempt = _active_attempt(session, run.id)
                if attempt is not None:
                    attempt.active = False
                    attempt.ended_at = at
                    attempt.end_reason = "cancelled"
                    if attempt.pid is not None:
                        handle = Handle(attempt.pid, attempt.process_started or "")
                finish(
                    plane,
                    session,
                    run,
                    to=RunStatus.CANCELLED,
                    phase="cancelled",
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
            target=plane.backend.cancel,
            args=(handle,),
            kwargs={"grace_seconds": plane.settings.cancel_grace_seconds},
            daemon=True,
        ).start()
    plane.notifier.notify()
    plane.wake_scheduler.set()
    with plane.sessions() as session:
        return get_run(session, account_id, run_id)


def _active_attempt(session: Session, run_id: str) -> Attempt | None:
    return session.scalar(select(Attempt).where(Attempt.run_id == run_id, Attempt.active.is_(True)))


def finish(
    plane: ControlPlane,
    session: Session,
    run: Run,
    *,
    to: RunStatus,
    phase: str,
    at: float,
    **fields: Any,
) -> None:
    """Move a run to a terminal state and settle its bill in the same transaction."""
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
    tier = plane.settings.tier(run.tier)
    entry = catalog_find(run.config.get("base_model", ""))
    error = fields.get("error") or {}
    billing.settle(
        session,
        account_id=run.account_id,
        run_id=run.id,
        seconds=billing.billable_seconds(attempts, at),
        credits_per_minute=tier.credits_per_minute if tier else 0.0,
        cancelled=to == RunStatus.CANCELLED,
        refund=to == RunStatus.FAILED
        and entry is not None
        and entry.verified
        and error.get("code") != "out_of_credits",
    )


def delete_run(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Delete a finished run's record and history (never its Hub entry)."""
    with plane.sessions.begin() as session:
        run = get_run(session, account_id, run_id)
        if run.status not in TERMINAL:
            raise Conflict(f"run {run_id} is {run.status}; cancel it before deleting it")
        for model in (RunEvent, Attempt):
            for row in session.scalars(select(model).where(model.run_id == run_id)):
                session.delete(row)
        session.delete(run)


# Worker reports ----------------------------------------------------------------------


def _fenced_attempt(session: Session, attempt_id: str, token: str) -> tuple[Attempt, Run]:
    attempt = session.get(Attempt, attempt_id)
    if attempt is None or not secrets.compare_digest(attempt.token, token):
        raise NotFound(f"no attempt {attempt_id!r}")
    run = session.get(Run, attempt.run_id)
    if not attempt.active or run is None or run.attempt != attempt.number or run.status in TERMINAL:
        raise StaleAttempt(f"attempt {attempt_id} no longer owns its run")
    return attempt, run


def attempt_spec(plane: ControlPlane, *, attempt_id: str, token: str) -> dict[str, Any]:
    """What the worker runs: the recipe with dataset files resolved on this machine."""
    with plane.sessions() as session:
        attempt, run = _fenced_attempt(session, attempt_id, token)
        datasets = session.scalars(
            select(Dataset).where(Dataset.id.in_(run.config["dataset_ids"]))
        ).all()
        paths = {dataset.id: str(plane.datasets_dir / dataset.filename) for dataset in datasets}
        recipe = {
            **run.config,
            "datasets": [paths[i] for i in run.config["dataset_ids"]],
            "dataset_ids": [],
        }
        node = next(n for n in plane.settings.nodes if n.name == attempt.node)
        return {
            "run_id": run.id,
            "attempt": attempt.number,
            "recipe": recipe,
            "out_dir": str(plane.runs_dir / run.id),
            "heartbeat_seconds": plane.settings.heartbeat_seconds,
            "threads": node.threads,
        }


def report(
    plane: ControlPlane, *, attempt_id: str, token: str, events: list[dict[str, Any]]
) -> dict[str, bool]:
    """Apply a worker's batch of events (an empty batch is a heartbeat).

    Returns ``{"cancel": bool}``. Raises StaleAttempt when the attempt was fenced off (the
    run was cancelled, or the attempt was declared lost and replaced).
    """
    with plane.sessions.begin() as session:
        attempt, run = _fenced_attempt(session, attempt_id, token)
        at = now()
        attempt.lease_expires_at = at + plane.settings.lease_seconds
        for item in events:
            kind, data = item.get("kind"), item.get("data") or {}
            if kind == "phase":
                _on_phase(session, attempt, run, data["phase"], at)
            elif kind == "metrics":
                _on_phase(session, attempt, run, "training", at)
                run.metrics = data
                store.append_event(session, run.id, "metrics", live_metrics(plane, session, run))
            elif kind == "log":
                store.append_event(session, run.id, "log", {"message": str(data["message"])})
            elif kind == "history":
                steps = data.get("steps")
                if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
                    raise ConfigError.single(
                        "events.data.steps", "a history is a list of step metrics objects"
                    )
                _on_history(session, run, steps)
            elif kind == "result":
                _on_result(plane, session, attempt, run, data, at)
            elif kind == "failure":
                _on_failure(plane, session, attempt, run, data, at)
            else:
                raise ConfigError.single("events.kind", f"unknown event kind {kind!r}")
        cancel = run.cancel_requested
    plane.notifier.notify()
    return {"cancel": cancel}


def _on_phase(session: Session, attempt: Attempt, run: Run, phase: str, at: float) -> None:
    if phase == "training" and run.status == RunStatus.WAITING_FOR_GPU.value:
        attempt.training_started_at = at
        store.move(
            session,
            run.id,
            expected=RunStatus.WAITING_FOR_GPU,
            to=RunStatus.TRAINING,
            phase="training",
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
    reported = {
        event.data.get("step")
        for event in session.scalars(
            select(RunEvent).where(RunEvent.run_id == run.id, RunEvent.kind == "metrics")
        )
    }
    for step in steps:
        if step.get("step") not in reported:
            store.append_event(session, run.id, "metrics", {**step, "replayed": True})


def _end_attempt(attempt: Attempt, at: float, reason: str) -> None:
    attempt.active = False
    attempt.ended_at = at
    attempt.end_reason = reason


def _on_result(
    plane: ControlPlane,
    session: Session,
    attempt: Attempt,
    run: Run,
    summary: dict[str, Any],
    at: float,
) -> None:
    _end_attempt(attempt, at, "finished")
    error = summary.get("error")
    target = RunStatus.COMPLETED if summary.get("status") == "completed" else RunStatus.FAILED
    if summary.get("samples"):
        store.append_event(session, run.id, "samples", {"samples": summary["samples"]})
    try:
        entry_id = hub.create_entry(plane, session, run, summary)
    except (TuneryError, OSError) as failure:
        # Retrying would not help a misconfigured or full store; say so on the run instead
        # of failing the worker's report over and over.
        entry_id, target = None, RunStatus.FAILED
        reason = failure.message if isinstance(failure, TuneryError) else str(failure)
        error = {
            "code": "hub_storage_failed",
            "message": f"the run finished but its bundles could not be stored in the Hub: {reason}",
            "hint": (failure.hint if isinstance(failure, TuneryError) else "")
            or "check the storage settings and free space; the bundles stay in the run's "
            "folder on the server",
        }
    finish(
        plane,
        session,
        run,
        to=target,
        phase="done",
        at=at,
        summary=summary,
        samples=summary.get("samples", []),
        hub_entry_id=entry_id,
        metrics={**run.metrics, **(summary.get("metrics") or {})},
        error=error,
    )
    plane.wake_scheduler.set()


def _on_failure(
    plane: ControlPlane,
    session: Session,
    attempt: Attempt,
    run: Run,
    data: dict[str, Any],
    at: float,
) -> None:
    _end_attempt(attempt, at, "failed")
    error = {key: data.get(key, "") for key in ("code", "message", "hint")}
    retry_or_fail(plane, session, run, error=error, transient=bool(data.get("transient")), at=at)


def retry_or_fail(
    plane: ControlPlane,
    session: Session,
    run: Run,
    *,
    error: dict[str, Any],
    transient: bool,
    at: float,
) -> None:
    """After an attempt ended badly: back off and retry while the budget lasts, else fail."""
    current = RunStatus(run.status)
    if transient and run.attempt < plane.settings.max_attempts:
        delay = plane.settings.retry_backoff_seconds * 2 ** (run.attempt - 1)
        store.move(
            session,
            run.id,
            expected=current,
            to=RunStatus.RETRYING,
            phase="backoff",
            retry_at=at + delay,
            error=error,
        )
    else:
        if transient:
            error = {**error, "message": f"{error['message']} (after {run.attempt} attempts)"}
        finish(plane, session, run, to=RunStatus.FAILED, phase="done", at=at, error=error)
    plane.wake_scheduler.set()


def is_active(status: str) -> bool:
    return RunStatus(status) in ACTIVE
