"""Billing invariants as properties: any mix of grants and finished runs, on a real ledger.

For every sequence hypothesis draws: a balance never goes negative; a charge never exceeds
what the run's training time costs at its price (whole minutes for a cancel) nor the
balance before it; a refund gives back exactly the charge; the balance is always the sum
of the ledger; and the refund rule never refunds a completed, cancelled, out-of-credits or
delivered run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tunery.db import Account, LedgerEntry
from tunery.runs import billing
from tunery.runs.plane import ControlPlane

FINISHED = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["completed", "failed", "cancelled"]),
        "seconds": st.floats(0, 6 * 3600, allow_nan=False),
        "price": st.sampled_from([0.0, 0.25, 1.0, 3.5]),
        "verified": st.booleans(),
        "out_of_credits": st.booleans(),
        "delivered": st.booleans(),
    }
)
STEP = st.one_of(st.floats(0, 500, allow_nan=False).map(lambda amount: {"grant": amount}), FINISHED)
accounts = itertools.count()


@pytest.fixture
def plane(make_plane: Callable[..., ControlPlane]) -> ControlPlane:
    """One database for every example of a test; each example has an account of its own."""
    return make_plane()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(STEP, max_size=15))
def test_the_ledger_never_goes_negative_and_charges_follow_the_rules(
    plane: ControlPlane, steps: list[dict], figures
) -> None:
    account = f"acc_{next(accounts)}"
    with plane.sessions.begin() as session:
        session.add(Account(id=account, name=account))
    for number, step in enumerate(steps):
        with plane.sessions.begin() as session:
            before = billing.balance(session, account)
            if "grant" in step:
                billing.record(session, account_id=account, kind="grant", amount=step["grant"])
                continue
            refund = refund_of(step).refunded is True
            charged = billing.settle(
                session,
                account_id=account,
                run_id=f"run_{number}",
                seconds=step["seconds"],
                credits_per_minute=step["price"],
                cancelled=step["status"] == "cancelled",
                refund=refund,
            )
            session.flush()
            after = billing.balance(session, account)
            ledger = session.scalar(
                select(func.sum(LedgerEntry.amount)).where(LedgerEntry.account_id == account)
            )
        cost = billing.credits_for(
            step["seconds"], step["price"], whole_minutes=step["status"] == "cancelled"
        )
        held = (
            after >= 0
            and charged <= min(cost, max(before, 0)) + 1e-6
            and (not refund or charged == 0)
            and math.isclose(after, before - charged, abs_tol=1e-3)
            and math.isclose(after, ledger or 0.0, abs_tol=1e-3)
        )
        if not held:
            figures.attack("billing invariants", refused=False, lost=1)
        assert held, (step, before, charged, after)
    figures.attack("billing invariants", refused=True)  # one drawn sequence, every step held


def refund_of(step: dict) -> billing.Refund:
    error = {"code": billing.OUT_OF_CREDITS_CODE} if step["out_of_credits"] else {"code": "x"}
    model = "tunery/demo-tiny" if step["verified"] else "someone/custom-model"
    decision = billing.refund_decision(step["status"], model, error, delivered=step["delivered"])
    never = (
        step["status"] != "failed"
        or step["out_of_credits"]
        or step["delivered"]
        or not step["verified"]
    )
    assert not (never and decision.refunded), (step, decision)
    return decision
