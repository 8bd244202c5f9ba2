"""Settlement rules on a real database: refunds, whole minutes, no overdraw, out of credits."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tunery.backends.fake import FakeBackend
from tunery.db import Account, Attempt, LedgerEntry, Run, now
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.runs import billing, queries, store
from tunery.runs.plane import ControlPlane
from tunery.runs.settle import finish as settle_finish
from tunery.scheduler.scheduler import enforce_credits
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings


@pytest.fixture
def plane(tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        tiers=[
            TierSettings(id="cpu", name="CPU", credits_per_minute=1.0),
            TierSettings(id="gpu", name="GPU", credits_per_minute=60.0),
        ],
        nodes=[NodeSettings(name="n0", tier="cpu"), NodeSettings(name="n1", tier="gpu")],
    )
    plane = ControlPlane.open(settings, backend=FakeBackend.for_settings(settings))
    with plane.sessions.begin() as session:
        session.add(Account(id="acc_1", name="a"))
    yield plane
    plane.close()


def training_run(
    plane,
    run_id: str,
    *,
    base_model: str = "tunery/demo-tiny",
    tier: str = "cpu",
    trained_seconds: float | None = 150.0,
    grant: float = 0,
) -> None:
    with plane.sessions.begin() as session:
        if grant:
            billing.record(session, account_id="acc_1", kind="grant", amount=grant)
        session.add(
            Run(
                id=run_id,
                account_id="acc_1",
                name=run_id,
                status="training",
                phase="training",
                tier=tier,
                config={"base_model": base_model},
                created_at=now() - (trained_seconds or 0) - 10,
                attempt=1,
                metrics={},
                samples=[],
            )
        )
        session.flush()
        session.add(
            Attempt(
                id=f"att_{run_id}",
                run_id=run_id,
                number=1,
                node="n0",
                token_hash=store.token_digest("t"),
                lease_expires_at=now() + 60,
                training_started_at=None if trained_seconds is None else now() - trained_seconds,
            )
        )


def finish(plane, run_id: str, to: RunStatus, error: dict | None = None) -> None:
    with plane.sessions.begin() as session:
        run = session.get(Run, run_id)
        settle_finish(plane, session, run, to=to, phase=Phase.DONE, at=now(), error=error)


def ledger(plane) -> list[tuple[str, float]]:
    with plane.sessions() as session:
        rows = session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))
        return [(row.kind, round(row.amount, 2)) for row in rows]


def balance(plane) -> float:
    with plane.sessions() as session:
        return billing.balance(session, "acc_1")


FAILURE = {"code": "internal_error", "message": "boom", "hint": ""}


def test_failed_run_on_a_verified_model_is_refunded(plane):
    training_run(plane, "r1", grant=10)
    finish(plane, "r1", RunStatus.FAILED, FAILURE)
    assert ledger(plane) == [("grant", 10.0), ("charge", -2.5), ("refund", 2.5)]
    assert balance(plane) == 10


def test_failed_run_on_a_custom_model_is_not_refunded(plane):
    training_run(plane, "r1", base_model="someone/custom-model", grant=10)
    finish(plane, "r1", RunStatus.FAILED, FAILURE)
    assert ledger(plane) == [("grant", 10.0), ("charge", -2.5)]


def test_cancel_pays_whole_minutes_and_completion_pays_exact_time(plane):
    training_run(plane, "r1", grant=10)
    training_run(plane, "r2")
    finish(plane, "r1", RunStatus.CANCELLED)
    finish(plane, "r2", RunStatus.COMPLETED)
    assert ledger(plane) == [("grant", 10.0), ("charge", -2.0), ("charge", -2.5)]


def test_concurrent_runs_never_overdraw(plane):
    training_run(plane, "r1", grant=3)
    training_run(plane, "r2")
    finish(plane, "r1", RunStatus.COMPLETED)
    finish(plane, "r2", RunStatus.COMPLETED)
    assert balance(plane) == 0
    assert ledger(plane) == [("grant", 3.0), ("charge", -2.5), ("charge", -0.5)]


def test_runs_are_stopped_when_their_credits_reach_the_balance(plane):
    # 60 credits/min: two runs that trained 2 s each have used 4 credits of a balance of 3.
    training_run(plane, "r1", tier="gpu", trained_seconds=2, grant=3)
    training_run(plane, "r2", tier="gpu", trained_seconds=2)
    enforce_credits(plane)
    with plane.sessions() as session:
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        assert [(run.status, run.error["code"]) for run in runs] == [
            ("failed", "out_of_credits"),
            ("failed", "out_of_credits"),
        ]
        assert not session.scalars(select(Attempt).where(Attempt.active.is_(True))).all()
    assert balance(plane) == 0
    assert all(kind != "refund" for kind, _ in ledger(plane))


def test_runs_within_their_balance_keep_training(plane):
    training_run(plane, "r1", tier="gpu", trained_seconds=2, grant=100)
    enforce_credits(plane)
    with plane.sessions() as session:
        assert session.get(Run, "r1").status == "training"


def refund(plane, run_id: str) -> tuple[bool | None, str]:
    run = queries.view_run(plane, "acc_1", run_id)
    return run.refunded, run.refund_note


def test_the_run_says_whether_it_is_refunded_as_settlement_did(plane):
    training_run(plane, "r1", grant=10)
    assert refund(plane, "r1")[0] is None
    finish(plane, "r1", RunStatus.FAILED, FAILURE)
    assert refund(plane, "r1") == (True, "Refunded: the run failed on a verified catalog model.")
    training_run(plane, "r2", base_model="someone/custom-model")
    finish(plane, "r2", RunStatus.FAILED, FAILURE)
    assert refund(plane, "r2")[0] is False and "custom" in refund(plane, "r2")[1]
    training_run(plane, "r3")
    finish(plane, "r3", RunStatus.FAILED, {**FAILURE, "code": billing.OUT_OF_CREDITS_CODE})
    assert refund(plane, "r3")[0] is False and "out of credits" in refund(plane, "r3")[1]
    refunds = [kind for kind, _ in ledger(plane) if kind == "refund"]
    assert refunds == ["refund"]  # r1 only, as its note says


def test_metrics_show_what_cancelling_now_would_bill(plane):
    training_run(plane, "r1", trained_seconds=150.0, grant=10)
    metrics = queries.view_run(plane, "acc_1", "r1").metrics
    assert (round(metrics.credits, 1), metrics.cancel_credits) == (2.5, 2.0)


def test_a_diverged_run_is_billed_like_every_failure_its_owner_caused(plane):
    # On a verified model, where a failure of the system is refunded: the divergence is the
    # recipe's doing, so the training time is billed, and the note says why.
    training_run(plane, "r1", grant=10)
    diverged = {"code": billing.DIVERGED_CODE, "message": "training diverged", "hint": ""}
    finish(plane, "r1", RunStatus.FAILED, diverged)
    assert ledger(plane) == [("grant", 10.0), ("charge", -2.5)]
    refunded, note = refund(plane, "r1")
    assert refunded is False and note.startswith("Not refunded: the run's loss diverged")
    assert any("diverged" in rule for rule in billing.REFUND_RULES)


def test_a_run_that_never_trained_is_not_said_to_be_unrefunded(plane):
    training_run(plane, "r1", base_model="someone/made-up-model", trained_seconds=None, grant=10)
    finish(plane, "r1", RunStatus.FAILED, FAILURE)
    assert ledger(plane) == [("grant", 10.0)]
    refunded, note = refund(plane, "r1")
    assert refunded is None
    assert note == "Nothing billed: the run ended before its first gradient step."
