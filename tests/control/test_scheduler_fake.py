"""The scheduler and the worker protocol on the in-memory backend: no subprocess, no server.

Workers are played by the tests: ``FakeBackend`` records launches and can lose a worker or
refuse to start one; reports go through ``tunery.runs.attempts.report`` as a worker's
would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tunery.backends.fake import FakeBackend
from tunery.db import Account, Attempt, Run
from tunery.errors import ConfigError
from tunery.runs import attempts, billing, queries, settle, store
from tunery.runs.plane import ControlPlane, StaleAttempt
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings
from tunery.wire.reports import (
    LogData,
    LogReport,
    MetricsReport,
    ReportBatch,
    ResultData,
    ResultReport,
    StepData,
    encode,
    parse_batch,
)

ACCOUNT = "acc_1"


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(nodes=[("s0", "small"), ("s1", "small"), ("b0", "big")])


@pytest.fixture
def plane(tmp_path, backend) -> Iterator[ControlPlane]:
    settings = Settings(
        data_dir=tmp_path,
        tiers=[
            TierSettings(id="small", name="Small", credits_per_minute=0.0),
            TierSettings(id="big", name="Big", credits_per_minute=0.0),
        ],
        nodes=[
            NodeSettings(name="s0", tier="small"),
            NodeSettings(name="s1", tier="small"),
            NodeSettings(name="b0", tier="big"),
        ],
        retry_backoff_seconds=0,
    )
    plane = ControlPlane.open(settings, backend=backend)
    with plane.sessions.begin() as session:
        session.add(Account(id=ACCOUNT, name="a"))
        session.add(Account(id="acc_2", name="b"))
    yield plane
    plane.close()


def queue(plane: ControlPlane, tier: str, *, account: str = ACCOUNT) -> str:
    with plane.sessions.begin() as session:
        run = store.create_run(
            session,
            account_id=account,
            name=f"r-{tier}",
            tier=tier,
            config={"base_model": "tunery/demo-tiny", "dataset_ids": []},
            idempotency_key=None,
        )
        return run.id


def status(plane: ControlPlane, run_id: str) -> str:
    with plane.sessions() as session:
        return session.get(Run, run_id).status


def live(plane: ControlPlane, run_id: str) -> Attempt | None:
    with plane.sessions() as session:
        return store.active_attempt(session, run_id)


def busy(plane: ControlPlane) -> set[str]:
    with plane.sessions() as session:
        return store.busy_nodes(session)


def test_runs_wait_for_a_node_of_their_tier(plane, backend):
    small = [queue(plane, "small") for _ in range(3)]
    big = [queue(plane, "big") for _ in range(2)]
    tick(plane)
    assert [status(plane, run_id) for run_id in small] == ["waiting_for_gpu"] * 2 + ["queued"]
    assert [status(plane, run_id) for run_id in big] == ["waiting_for_gpu", "queued"]
    assert busy(plane) == {"s0", "s1", "b0"}
    assert len(backend.launches) == 3
    assert queries.view_run(plane, ACCOUNT, small[2]).queue_position == 1
    assert [tier.nodes_free for tier in queries.tiers_view(plane)] == [0, 0]


def test_placement_is_fair_across_accounts(plane, backend):
    first, second = queue(plane, "small"), queue(plane, "small")
    other = queue(plane, "small", account="acc_2")
    tick(plane)
    # Once acc_1 holds a node, acc_2 (holding none) goes before acc_1's older second run.
    assert [status(plane, run_id) for run_id in (first, second, other)] == [
        "waiting_for_gpu",
        "queued",
        "waiting_for_gpu",
    ]


def test_cancel_frees_the_node_for_the_next_run(plane, backend):
    first, second = queue(plane, "big"), queue(plane, "big")
    tick(plane)
    attempt = live(plane, first)
    settle.cancel_run(plane, account_id=ACCOUNT, run_id=first)
    assert status(plane, first) == "cancelled"
    assert live(plane, first) is None and busy(plane) == set()
    tick(plane)
    assert status(plane, second) == "waiting_for_gpu"
    assert attempt.id not in backend.running()
    with pytest.raises(StaleAttempt):
        attempts.report(
            plane, attempt_id=attempt.id, token=token_of(plane, attempt), batch=ReportBatch()
        )


def test_a_lost_worker_sends_its_run_to_retrying_then_back_to_a_node(plane, backend):
    run_id = queue(plane, "big")
    tick(plane)
    attempt = live(plane, run_id)
    backend.lose(attempt.id)
    plane.settings.retry_backoff_seconds = 60  # hold the run in retrying for the assertions
    tick(plane)
    run = queries.view_run(plane, ACCOUNT, run_id)
    assert (run.status, run.phase, run.error.code) == ("retrying", "backoff", "worker_lost")
    with plane.sessions() as session:
        ended = session.get(Attempt, attempt.id)
    assert (ended.active, ended.end_reason) == (False, "process exited")
    plane.settings.retry_backoff_seconds = 0
    with plane.sessions.begin() as session:
        session.get(Run, run_id).retry_at = 0
    tick(plane)
    assert status(plane, run_id) == "waiting_for_gpu"
    assert live(plane, run_id).number == 2


def test_a_worker_that_cannot_start_is_retried(plane, backend):
    backend.fail_starts = 1
    run_id = queue(plane, "big")
    tick(plane)
    assert status(plane, run_id) == "retrying"
    assert busy(plane) == set()
    tick(plane)
    assert status(plane, run_id) == "waiting_for_gpu"
    assert len(backend.launches) == 1


def token_of(plane: ControlPlane, attempt: Attempt) -> str:
    """The token the attempt's worker was started with (the database keeps only its hash)."""
    launches = plane.workers.launches  # type: ignore[attr-defined]
    return next(launch.token for launch in launches if launch.attempt_id == attempt.id)


def report(plane: ControlPlane, attempt: Attempt, *reports) -> bool:
    batch = parse_batch({"events": [json.loads(encode(r)) for r in reports]})
    return attempts.report(
        plane, attempt_id=attempt.id, token=token_of(plane, attempt), batch=batch
    ).cancel


def step(number: int, **values) -> MetricsReport:
    fields = {"step": number, "total_steps": 4, "epoch": number / 2, "epochs": 2, "loss": 1.0}
    return MetricsReport(data=StepData(**{**fields, **values}))


def test_reports_move_the_run_and_a_result_frees_the_node(plane, backend):
    run_id = queue(plane, "big")
    tick(plane)
    attempt = live(plane, run_id)
    assert report(plane, attempt, step(1), LogReport(data=LogData(message="hello"))) is False
    run = queries.view_run(plane, ACCOUNT, run_id)
    assert (run.status, run.metrics.step, run.metrics.current_epoch) == ("training", 1, 1)
    assert run.metrics.cancel_credits == 0.0 and run.refunded is None
    report(plane, attempt, step(3), ResultReport(data=ResultData(status="completed")))
    run = queries.view_run(plane, ACCOUNT, run_id)
    assert (run.status, run.metrics.current_epoch, run.refunded) == ("completed", 2, False)
    assert run.metrics.cancel_credits is None
    assert busy(plane) == set()


def test_non_finite_numbers_arrive_as_null(plane, backend):
    run_id = queue(plane, "big")
    tick(plane)
    text = encode(step(1, loss=math.nan, grad_norm=math.inf))
    assert "NaN" not in text and "Infinity" not in text
    report(plane, live(plane, run_id), step(1, loss=math.nan))
    assert queries.view_run(plane, ACCOUNT, run_id).metrics.loss is None


def test_a_malformed_report_names_its_field():
    with pytest.raises(ConfigError) as refused:
        parse_batch({"events": [{"kind": "metrics", "data": {"step": "x"}}, {"kind": "nope"}]})
    fields = [problem.field for problem in refused.value.problems]
    assert fields[0] == "events.data.step"
    assert len(fields) == 2


def test_out_of_credits_is_not_refunded_and_says_why(plane, backend):
    plane.settings.tiers[1].credits_per_minute = 1.0
    with plane.sessions.begin() as session:  # pays the first minute, not the second
        billing.record(session, account_id=ACCOUNT, kind="grant", amount=1.5)
    run_id = queue(plane, "big")
    tick(plane)
    attempt = live(plane, run_id)
    report(plane, attempt, step(1))
    with plane.sessions.begin() as session:
        session.get(Attempt, attempt.id).training_started_at -= 120  # two minutes trained
    tick(plane)  # the credits so far reach the balance: enforce_credits stops the run
    run = queries.view_run(plane, ACCOUNT, run_id)
    assert (run.status, run.error.code, run.refunded) == ("failed", "out_of_credits", False)
    assert "ran out of credits" in run.refund_note
    assert attempt.id in backend.cancelled
    with plane.sessions() as session:
        assert billing.balance(session, ACCOUNT) == 0
        assert not session.scalars(select(Attempt).where(Attempt.active.is_(True))).all()
