"""Check-then-act races, a fair and paid-for queue, and submissions retried with one key.

In-process on the in-memory backend: submissions and deletions race on real threads and a
real SQLite database; the scheduler's ``tick`` is called by the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from control_harness import payload
from plane_kit import grant, upload
from sqlalchemy import select

from tunery.db import Attempt, Dataset, Run
from tunery.errors import ConfigError
from tunery.runs import datasets, queries, settle
from tunery.runs.intake import submit_run
from tunery.runs.plane import Conflict, ControlPlane, TooManyQueued
from tunery.scheduler.scheduler import tick

MakePlane = Callable[..., ControlPlane]


def submit(plane: ControlPlane, account: str, dataset_id: str, key: str | None = None, **over):
    return submit_run(
        plane, account_id=account, payload=payload(dataset_id, **over), idempotency_key=key
    )


def started(plane: ControlPlane) -> list[str]:
    """Run ids in the order their first attempt started."""
    with plane.sessions() as session:
        rows = session.scalars(select(Attempt).order_by(Attempt.started_at, Attempt.id)).all()
    return list(dict.fromkeys(attempt.run_id for attempt in rows))


def race_submit_and_delete(plane: ControlPlane, dataset_id: str) -> dict[str, object]:
    """Submit a run on ``dataset_id`` and delete it at the same moment; both outcomes."""
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def submit_it() -> None:
        barrier.wait()
        try:
            outcomes["run"] = submit(plane, "a", dataset_id).id
        except ConfigError as error:
            outcomes["run"] = error

    def delete_it() -> None:
        barrier.wait()
        try:
            datasets.delete_dataset(plane, account_id="a", dataset_id=dataset_id)
            outcomes["delete"] = "deleted"
        except Conflict as error:
            outcomes["delete"] = error

    threads = [threading.Thread(target=submit_it), threading.Thread(target=delete_it)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_deleting_a_dataset_and_submitting_a_run_on_it_never_both_win(
    make_plane: MakePlane, figures
) -> None:
    plane = make_plane()
    grant(plane, "a", 1000)
    for _ in range(40):
        outcomes = race_submit_and_delete(plane, upload(plane, "a"))
        run_won = isinstance(outcomes["run"], str)
        delete_won = outcomes["delete"] == "deleted"
        figures.attack("check-then-act races", refused=run_won != delete_won)
        assert run_won != delete_won, outcomes
        if run_won:
            assert outcomes["run"] in str(outcomes["delete"])  # the 409 names the run
            settle.cancel_run(plane, account_id="a", run_id=outcomes["run"])
    with plane.sessions() as session:
        alive = set(session.scalars(select(Dataset.id)))
        runs = session.scalars(select(Run)).all()
    stranded = [run.id for run in runs if not set(run.config["dataset_ids"]) <= alive]
    figures.attack("check-then-act races", refused=not stranded, lost=len(stranded))
    assert stranded == []


def test_a_run_whose_dataset_file_vanished_fails_once_with_that_reason(
    make_plane: MakePlane, figures
) -> None:
    plane = make_plane()
    grant(plane, "a", 100)
    dataset_id = upload(plane, "a")
    run_id = submit(plane, "a", dataset_id).id
    for path in plane.datasets_dir.iterdir():
        path.unlink()  # removed behind the server's back
    tick(plane)
    run = queries.view_run(plane, "a", run_id)
    figures.attack("check-then-act races", refused=run.error.code == "dataset_missing")
    assert (run.status, run.error.code, run.attempt) == ("failed", "dataset_missing", 0)
    assert plane.workers.launches == []


def test_a_reused_idempotency_key_with_another_payload_is_refused(
    make_plane: MakePlane, figures
) -> None:
    plane = make_plane()
    grant(plane, "a", 100)
    dataset_id = upload(plane, "a")
    first = submit(plane, "a", dataset_id, key="k1")
    assert submit(plane, "a", dataset_id, key="k1").id == first.id
    with pytest.raises(ConfigError) as refused:
        submit(plane, "a", dataset_id, key="k1", name="another-run")
    figures.attack("idempotency", refused=True)
    assert refused.value.problems[0].field == "Idempotency-Key"
    assert first.id in refused.value.problems[0].message


def test_an_account_cannot_queue_more_than_its_cap(make_plane: MakePlane, figures) -> None:
    plane = make_plane(max_queued_runs_per_account=3)  # nothing ticks: all stay queued
    grant(plane, "a", 100)
    grant(plane, "b", 100)
    dataset_id = upload(plane, "a")
    keys = [submit(plane, "a", dataset_id, key=f"k{n}").id for n in range(3)]
    with pytest.raises(TooManyQueued) as refused:
        submit(plane, "a", dataset_id, key="k3")
    figures.attack("queue flooding", refused=True)
    assert "3 queued runs" in refused.value.message
    assert submit(plane, "a", dataset_id, key="k0").id == keys[0]  # a retry still answers
    submit(plane, "b", upload(plane, "b"))  # other accounts are not affected


def test_accounts_take_turns_and_positions_show_the_order_runs_start_in(
    make_plane: MakePlane, figures
) -> None:
    plane = make_plane()
    grant(plane, "a", 1000)
    grant(plane, "b", 1000)
    flood = [submit(plane, "a", upload(plane, "a")).id for _ in range(5)]
    late = [submit(plane, "b", upload(plane, "b")).id for _ in range(2)]
    shown = sorted(
        (run.queue_position, run.id)
        for account in ("a", "b")
        for run in queries.list_runs(plane, account)
    )
    for _ in flood + late:  # one node: start one, finish it, start the next
        tick(plane)
        current = started(plane)[-1]
        settle.cancel_run(plane, account_id=run_account(plane, current), run_id=current)
    order = started(plane)
    assert [run_id for _, run_id in shown] == order
    assert order[:4] == [flood[0], late[0], flood[1], late[1]]
    figures.attack("queue flooding", refused=order.index(late[0]) == 1)


def run_account(plane: ControlPlane, run_id: str) -> str:
    with plane.sessions() as session:
        return session.get(Run, run_id).account_id


def test_runs_an_account_cannot_pay_for_never_start_and_fail_once_nothing_holds_credits(
    make_plane: MakePlane, figures
) -> None:
    plane = make_plane()
    grant(plane, "a", 1.5)
    grant(plane, "b", 10)
    flood = [submit(plane, "a", upload(plane, "a")).id for _ in range(5)]
    other = submit(plane, "b", upload(plane, "b")).id
    tick(plane)
    assert started(plane) == [flood[0]]
    positions = {run.id: run.queue_position for run in queries.list_runs(plane, "a")}
    assert all(positions[run_id] is None for run_id in flood[1:])  # not paid for: no place
    assert queries.view_run(plane, "b", other).queue_position == 1
    settle.cancel_run(plane, account_id="a", run_id=flood[0])
    grant(plane, "a", -1.5)  # spent elsewhere: nothing left, nothing active
    tick(plane)
    for run_id in flood[1:]:
        run = queries.view_run(plane, "a", run_id)
        assert (run.status, run.error.code, run.attempt) == ("failed", "out_of_credits", 0)
        figures.attack("queue flooding", refused=run.error.code == "out_of_credits")
    assert started(plane) == [flood[0], other]
