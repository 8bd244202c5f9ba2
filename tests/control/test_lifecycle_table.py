"""The lifecycle table and the guarded store: every legal move, every refused one."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tunery.db import Account, Run, RunEvent, make_engine, make_sessions, new_id
from tunery.lifecycle import ACTIVE, TERMINAL, TRANSITIONS, RunStatus, can_move
from tunery.phases import Phase
from tunery.runs import store

S = RunStatus
# The table as the contract and the spec page describe it, written out independently.
EXPECTED: dict[RunStatus, set[RunStatus]] = {
    S.QUEUED: {S.WAITING_FOR_GPU, S.PAUSED, S.FAILED, S.CANCELLED},
    # A starting attempt lost while a pause was asked is paused, not retried.
    S.WAITING_FOR_GPU: {S.TRAINING, S.RETRYING, S.PAUSED, S.FAILED, S.CANCELLED},
    S.TRAINING: {S.COMPLETED, S.RETRYING, S.PAUSED, S.FAILED, S.CANCELLED},
    S.RETRYING: {S.WAITING_FOR_GPU, S.PAUSED, S.FAILED, S.CANCELLED},
    # Paused by its owner; resume queues it again.
    S.PAUSED: {S.QUEUED, S.FAILED, S.CANCELLED},
    S.COMPLETED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}
PAIRS = list(itertools.product(RunStatus, RunStatus))
LEGAL = [(a, b) for a, b in PAIRS if b in EXPECTED[a]]
ILLEGAL = [(a, b) for a, b in PAIRS if b not in EXPECTED[a]]


def test_state_names_are_the_contract_strings() -> None:
    assert [status.value for status in RunStatus] == [
        "queued",
        "waiting_for_gpu",
        "training",
        "retrying",
        "paused",
        "completed",
        "failed",
        "cancelled",
    ]


def test_table_matches_the_contract() -> None:
    assert set(TRANSITIONS) == set(RunStatus)
    assert {status: set(moves) for status, moves in TRANSITIONS.items()} == EXPECTED
    for current, target in PAIRS:
        assert can_move(current, target) == (target in EXPECTED[current]), (current, target)


def test_terminal_states_have_no_moves() -> None:
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
    for status in TERMINAL:
        assert not TRANSITIONS[status]
        assert not any(can_move(status, target) for target in RunStatus)


def test_cancelled_never_retries_and_only_a_resumed_run_returns_to_queued() -> None:
    assert not can_move(S.CANCELLED, S.RETRYING)
    assert [status for status in RunStatus if can_move(status, S.QUEUED)] == [S.PAUSED]
    assert not any(can_move(status, status) for status in RunStatus)
    # Every non-terminal state can be cancelled or failed.
    for status in set(RunStatus) - TERMINAL:
        assert can_move(status, S.CANCELLED)
        assert can_move(status, S.FAILED)


def test_active_states_hold_a_node() -> None:
    assert {S.WAITING_FOR_GPU, S.TRAINING} == ACTIVE
    assert S.PAUSED not in ACTIVE


# The store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker]:
    engine = make_engine(tmp_path_factory.mktemp("lifecycle") / "lifecycle.db")
    maker = make_sessions(engine)
    with maker.begin() as session:
        session.add(Account(id="acc_1", name="owner"))
    yield maker
    engine.dispose()


@pytest.fixture
def sessions(engine_sessions: sessionmaker) -> sessionmaker:
    """One database for the module; every test's runs have fresh ids (see ``add_run``)."""
    return engine_sessions


def add_run(sessions: sessionmaker, status: RunStatus) -> str:
    run_id = new_id("run")
    with sessions.begin() as session:
        session.add(
            Run(
                id=run_id,
                account_id="acc_1",
                name="r",
                status=status.value,
                phase=status.value,
                tier="cpu",
                config={},
                metrics={},
                samples=[],
            )
        )
    return run_id


def events_of(session: Session, run_id: str) -> list[RunEvent]:
    return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id)))


def state_of(sessions: sessionmaker, run_id: str) -> tuple[str, str, int]:
    with sessions() as session:
        run = session.get(Run, run_id)
        count = session.scalar(
            select(func.count()).select_from(RunEvent).where(RunEvent.run_id == run_id)
        )
        return run.status, run.phase, int(count or 0)


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=lambda s: s.value)
def test_legal_move_writes_the_status_and_exactly_one_event(
    sessions: sessionmaker, source: RunStatus, target: RunStatus
) -> None:
    run_id = add_run(sessions, source)
    with sessions.begin() as session:
        store.move(
            session, run_id, expected=source, to=target, phase=Phase.TRAINING, finished_at=12.5
        )
    with sessions() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.phase, run.finished_at) == (target.value, "training", 12.5)
        events = events_of(session, run_id)
    assert [(event.kind, event.data) for event in events] == [
        ("status", {"status": target.value, "phase": "training"})
    ]


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=lambda s: s.value)
def test_illegal_move_is_refused_and_writes_nothing(
    sessions: sessionmaker, source: RunStatus, target: RunStatus
) -> None:
    run_id = add_run(sessions, source)
    with pytest.raises(ValueError, match="not a legal move"), sessions.begin() as session:
        store.move(session, run_id, expected=source, to=target, phase=Phase.TRAINING)
    assert state_of(sessions, run_id) == (source.value, source.value, 0)


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=lambda s: s.value)
def test_wrong_source_state_raises_transition_conflict(
    sessions: sessionmaker, source: RunStatus, target: RunStatus
) -> None:
    """The guard: a move expecting ``source`` fails on a run in any other state."""
    for actual in (s for s in RunStatus if s != source):
        run_id = add_run(sessions, actual)
        with pytest.raises(store.TransitionConflict) as caught, sessions.begin() as session:
            store.move(session, run_id, expected=source, to=target, phase=Phase.TRAINING)
        assert caught.value.actual == actual.value
        assert caught.value.run_id == run_id
        assert state_of(sessions, run_id) == (actual.value, actual.value, 0)


def test_move_from_several_expected_states(sessions: sessionmaker) -> None:
    run_id = add_run(sessions, S.RETRYING)
    with sessions.begin() as session:
        store.move(
            session,
            run_id,
            expected={S.QUEUED, S.RETRYING},
            to=S.WAITING_FOR_GPU,
            phase=Phase.PROVISIONING,
        )
    assert state_of(sessions, run_id) == ("waiting_for_gpu", "provisioning", 1)


def test_unknown_run_raises_transition_conflict(sessions: sessionmaker) -> None:
    with pytest.raises(store.TransitionConflict) as caught, sessions.begin() as session:
        store.move(session, "run_missing", expected=S.QUEUED, to=S.CANCELLED, phase=Phase.CANCELLED)
    assert caught.value.actual is None


def test_two_racing_actors_have_exactly_one_winner(sessions: sessionmaker) -> None:
    """A cancel and a completion read ``training``; only the first commit moves the run."""
    run_id = add_run(sessions, S.TRAINING)
    first, second = sessions(), sessions()
    try:
        with first.begin():
            store.move(first, run_id, expected=S.TRAINING, to=S.CANCELLED, phase=Phase.CANCELLED)
        with pytest.raises(store.TransitionConflict) as caught, second.begin():
            store.move(second, run_id, expected=S.TRAINING, to=S.COMPLETED, phase=Phase.DONE)
    finally:
        first.close()
        second.close()
    assert caught.value.actual == "cancelled"
    assert state_of(sessions, run_id) == ("cancelled", "cancelled", 1)


def test_error_is_recorded_in_the_status_event(sessions: sessionmaker) -> None:
    run_id = add_run(sessions, S.TRAINING)
    error = {"code": "worker_lost", "message": "gone", "hint": ""}
    with sessions.begin() as session:
        store.move(
            session, run_id, expected=S.TRAINING, to=S.RETRYING, phase=Phase.BACKOFF, error=error
        )
    with sessions() as session:
        (event,) = events_of(session, run_id)
        assert event.data == {"status": "retrying", "phase": "backoff", "error": error}
        assert session.get(Run, run_id).error == error


def test_set_phase_records_a_phase_event_and_keeps_the_status(sessions: sessionmaker) -> None:
    run_id = add_run(sessions, S.WAITING_FOR_GPU)
    with sessions.begin() as session:
        store.set_phase(session, run_id, Phase.LOADING_MODEL)
    with sessions() as session:
        assert session.get(Run, run_id).status == "waiting_for_gpu"
        events = events_of(session, run_id)
    assert [(event.kind, event.data) for event in events] == [("phase", {"phase": "loading_model"})]


def test_a_rolled_back_transaction_leaves_no_event(sessions: sessionmaker) -> None:
    run_id = add_run(sessions, S.QUEUED)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        store.move(session, run_id, expected=S.QUEUED, to=S.WAITING_FOR_GPU, phase=Phase.TRAINING)
        raise RuntimeError("the caller failed after the move")
    assert state_of(sessions, run_id) == ("queued", "queued", 0)
