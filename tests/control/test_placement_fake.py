"""The backend owns placement: the scheduler on the in-memory backend, as a cluster acts.

A started attempt may wait for placement (the fake's ``hold``, as a Ray placement group
that is ``PENDING``): the run stays ``waiting_for_gpu`` with the reason, is never declared
lost for it, and records its node once placed. The tiers view counts what the backend
counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tunery.backends.fake import FakeBackend
from tunery.db import Account, Run
from tunery.runs import queries, store
from tunery.runs.plane import ControlPlane
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings

ACCOUNT = "acc_1"


@pytest.fixture
def plane(tmp_path) -> Iterator[ControlPlane]:
    settings = Settings(
        data_dir=tmp_path,
        tiers=[TierSettings(id="gpu", name="GPU", credits_per_minute=0.0)],
        nodes=[NodeSettings(name="g0", tier="gpu"), NodeSettings(name="g1", tier="gpu")],
        lease_seconds=2,
    )
    plane = ControlPlane.open(settings, backend=FakeBackend.for_settings(settings))
    with plane.sessions.begin() as session:
        session.add(Account(id=ACCOUNT, name="a"))
    yield plane
    plane.close()


def queue(plane: ControlPlane) -> str:
    with plane.sessions.begin() as session:
        return store.create_run(
            session,
            account_id=ACCOUNT,
            name="r",
            tier="gpu",
            config={"base_model": "tunery/demo-tiny", "dataset_ids": []},
            idempotency_key=None,
        ).id


def expire_leases(plane: ControlPlane) -> None:
    with plane.sessions.begin() as session:
        for attempt in store.active_attempts(session):
            store.renew_lease(attempt, 0)


def test_a_pending_attempt_waits_with_its_reason_and_is_never_lost(plane) -> None:
    backend: FakeBackend = plane.workers  # type: ignore[assignment]
    run_id = queue(plane)
    tick(plane)
    attempt_id = backend.launches[0].attempt_id
    backend.hold(attempt_id, "no node of tier gpu in the cluster yet")
    expire_leases(plane)  # a pending attempt sends no heartbeat: that is not a loss
    tick(plane)
    run = queries.view_run(plane, ACCOUNT, run_id)
    assert (run.status, run.waiting_reason) == ("waiting_for_gpu", backend.pending[attempt_id])

    backend.place(attempt_id)
    tick(plane)
    run = queries.view_run(plane, ACCOUNT, run_id)
    assert (run.status, run.waiting_reason, run.node) == ("waiting_for_gpu", None, "g0")


def test_runs_stay_queued_while_the_backend_has_no_slot(plane) -> None:
    runs = [queue(plane) for _ in range(3)]
    tick(plane)
    with plane.sessions() as session:
        statuses = [session.get(Run, run_id).status for run_id in runs]
    assert statuses == ["waiting_for_gpu", "waiting_for_gpu", "queued"]
    (tier,) = queries.tiers_view(plane)
    assert (tier.nodes_total, tier.nodes_free) == (2, 0)
