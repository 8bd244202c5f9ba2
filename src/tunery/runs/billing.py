"""What a run costs, and whether it is refunded: the rules, written down once.

Queued, waiting for a node, retry back-off and loading are free: an attempt's billable time
runs from its first gradient step (``training_started_at``) to its end. A cancelled run is
billed for whole minutes only, rounded down. ``refund_decision`` is the one refund rule:
settlement applies it and the run object shows it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.catalog.models import find as catalog_find
from tunery.db import Attempt, LedgerEntry
from tunery.lifecycle import TERMINAL, RunStatus

OUT_OF_CREDITS_CODE = "out_of_credits"
DIVERGED_CODE = "diverged"
"""The divergence guard's code (``tunery.pipeline.divergence``)."""
CAUSED_BY_THE_RUN = {
    OUT_OF_CREDITS_CODE: "the run stopped because the account ran out of credits",
    DIVERGED_CODE: "the run's loss diverged, which its own settings cause (the same recipe "
    "diverges again)",
}
"""Failures the run's owner caused, by error code: billed and never refunded."""
REFUND_RULES = (
    "Nothing is billed before a run's first gradient step: queueing, waiting for a node, "
    "loading and retry back-off are free.",
    "A completed run is billed for its exact training time.",
    "A cancelled run is billed for whole minutes of training, rounded down.",
    "A failed run on a verified catalog model is refunded, unless its owner caused the "
    "failure (the account ran out of credits, or the loss diverged) or its LoRA was delivered.",
    "A run whose loss diverged fails with the code diverged: it is billed for its training "
    "time and not refunded, and the adapter of its best step before the loss rose is delivered "
    "to the Hub.",
    "A run whose LoRA reached the Hub is billed even if a later step (the GGUF export) failed: "
    "the training was delivered, and the export can be rerun without retraining.",
    "A failed run on a custom model is billed and not refunded.",
)
"""The refund and billing rules as ``GET /api/v1/meta`` states them."""


@dataclass(frozen=True)
class Refund:
    refunded: bool | None
    """None while the run is not finished, and for a run that was billed nothing."""
    note: str
    """One sentence saying whether and why."""


def refund_decision(
    status: str,
    base_model: str,
    error: dict[str, Any] | None,
    *,
    delivered: bool = False,
    billed_seconds: float | None = None,
) -> Refund:
    """Whether a run in ``status`` is refunded, and why (the rule of ``REFUND_RULES``).

    ``delivered``: the run's LoRA reached the Hub (it has an entry). ``billed_seconds``: its
    billable training time (0: it never reached a gradient step, so there is nothing to
    refund); None when unknown.
    """
    if status not in TERMINAL:
        return Refund(
            None,
            "Not finished: if it fails on a verified catalog model before its LoRA reaches "
            "the Hub, its training time is refunded, unless its owner caused the failure.",
        )
    if status == RunStatus.COMPLETED:
        return Refund(False, "Completed: billed for its exact training time.")
    if billed_seconds is not None and billed_seconds <= 0:
        return Refund(None, "Nothing billed: the run ended before its first gradient step.")
    if status == RunStatus.CANCELLED:
        return Refund(False, "Cancelled: billed for whole minutes of training, not refunded.")
    caused = CAUSED_BY_THE_RUN.get((error or {}).get("code", ""))
    if caused is not None:
        kept = " Its best step's LoRA was delivered to the Hub." if delivered else ""
        return Refund(False, f"Not refunded: {caused}.{kept}")
    if delivered:
        return Refund(
            False,
            "Not refunded: the LoRA was delivered to the Hub; only a later step failed "
            "(rerun the export without retraining).",
        )
    entry = catalog_find(base_model)
    if entry is None or not entry.verified:
        return Refund(False, "Not refunded: runs on custom models are not refunded.")
    return Refund(True, "Refunded: the run failed on a verified catalog model.")


def billable_seconds(attempts: Iterable[Attempt], at: float) -> float:
    total = 0.0
    for attempt in attempts:
        if attempt.training_started_at is None:
            continue
        end = attempt.ended_at if attempt.ended_at is not None else at
        total += max(0.0, end - attempt.training_started_at)
    return total


def credits_for(seconds: float, credits_per_minute: float, *, whole_minutes: bool) -> float:
    minutes = math.floor(seconds / 60) if whole_minutes else seconds / 60
    return round(minutes * credits_per_minute, 4)


def balance(session: Session, account_id: str) -> float:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0.0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return round(float(total or 0.0), 4)


def record(
    session: Session,
    *,
    account_id: str,
    kind: str,
    amount: float,
    run_id: str | None = None,
    note: str = "",
) -> None:
    session.add(
        LedgerEntry(
            account_id=account_id,
            run_id=run_id,
            kind=kind,
            amount=round(amount, 4),
            note=note,
            created_at=time.time(),
        )
    )


def settle(
    session: Session,
    *,
    account_id: str,
    run_id: str,
    seconds: float,
    credits_per_minute: float,
    cancelled: bool,
    refund: bool,
) -> float:
    """Charge a finished run (never below a zero balance); refund it when ``refund``.

    Returns the net amount charged.
    """
    charge = credits_for(seconds, credits_per_minute, whole_minutes=cancelled)
    charge = min(charge, max(balance(session, account_id), 0.0))
    if charge <= 0:
        return 0.0
    minutes = f"{seconds / 60:.2f} min" if not cancelled else f"{math.floor(seconds / 60)} min"
    record(
        session,
        account_id=account_id,
        kind="charge",
        amount=-charge,
        run_id=run_id,
        note=f"training {minutes} at {credits_per_minute} credits/min",
    )
    if refund:
        record(
            session,
            account_id=account_id,
            kind="refund",
            amount=charge,
            run_id=run_id,
            note="failed run on a verified catalog model",
        )
        return 0.0
    return charge
