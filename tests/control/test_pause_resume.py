"""Pause and resume in process, on the in-memory backend: the tests play the worker.

A run that holds no node pauses at once; a running one carries ``pause_requested`` until its
worker reports ``paused``, which ends its attempt (the node is free, billing stops) and moves
it to ``paused``. Resume queues it again; its next attempt is a new one, and attempts a pause
ended do not count against the retry budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import in_process_app, in_process_cli, payload
from fastapi.testclient import TestClient
from sqlalchemy import select

from tunery.backends.fake import FakeBackend
from tunery.db import Account, Attempt, Run
from tunery.runs import billing
from tunery.runs.accounts import grant_credits
from tunery.runs.intake import JobFields, submit_run
from tunery.runs.plane import ControlPlane
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings

API = "/api/v1"


class Owner:
    """The account's HTTP calls, and the worker's part through the internal routes."""

    def __init__(self, http: TestClient, token: str) -> None:
        self.http = http
        self.plane: ControlPlane = http.app.state.plane  # type: ignore[attr-defined]
        self.backend: FakeBackend = self.plane.workers  # type: ignore[assignment]
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any = None) -> Any:
        return self.http.post(f"{API}{path}", json=body, headers=self.auth)

    def run(self, run_id: str) -> dict[str, Any]:
        return self.http.get(f"{API}/runs/{run_id}", headers=self.auth).json()

    def report(self, run_id: str, *events: dict[str, Any]) -> dict[str, Any]:
        """Post a batch as the run's newest worker; the server's answer."""
        launch = [launch for launch in self.backend.launches if launch.run_id == run_id][-1]
        answer = self.http.post(
            f"/internal/attempts/{launch.attempt_id}/events",
            json={"events": list(events)},
            headers={"X-Attempt-Token": launch.token},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def attempts(self, run_id: str) -> list[Attempt]:
        with self.plane.sessions() as session:
            return list(
                session.query(Attempt).filter(Attempt.run_id == run_id).order_by(Attempt.number)
            )


def step(number: int) -> dict[str, Any]:
    return {"kind": "metrics", "data": {"step": number, "total_steps": 6, "loss": 1.0}}


@pytest.fixture
def owner(data_dir: Path) -> Iterator[Owner]:
    settings = Settings.load(data_dir)
    settings.nodes = [NodeSettings(name="n0", tier="cpu")]
    settings.max_attempts = 2
    with in_process_app(settings) as (http, token):
        yield Owner(http, token)


@pytest.fixture
def dataset_id(owner: Owner, demo_dataset: Path) -> str:
    with demo_dataset.open("rb") as file:
        response = owner.http.post(
            f"{API}/datasets", files={"file": (demo_dataset.name, file)}, headers=owner.auth
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_queued_run_pauses_at_once_and_resumes_to_the_queue(
    owner: Owner, dataset_id: str
) -> None:
    run_id = owner.post("/runs", payload(dataset_id)).json()["id"]
    paused = owner.post(f"/runs/{run_id}/pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["status"], paused.json()["phase"]) == ("paused", "paused")
    assert owner.post(f"/runs/{run_id}/pause").status_code == 200  # idempotent
    tick(owner.plane)
    assert owner.run(run_id)["status"] == "paused" and owner.backend.launches == []
    resumed = owner.post(f"/runs/{run_id}/resume")
    assert resumed.json()["status"] == "queued"
    assert owner.post(f"/runs/{run_id}/resume").status_code == 409  # not paused any more
    tick(owner.plane)
    assert owner.run(run_id)["status"] == "waiting_for_gpu"


def test_a_training_run_pauses_after_its_checkpoint_frees_its_node_and_resumes(
    owner: Owner, dataset_id: str
) -> None:
    first = owner.post("/runs", payload(dataset_id, "first")).json()["id"]
    second = owner.post("/runs", payload(dataset_id, "second")).json()["id"]
    tick(owner.plane)
    assert owner.report(first, step(1)) == {"cancel": False, "finish": False, "pause": False}
    asked = owner.post(f"/runs/{first}/pause").json()
    assert (asked["status"], asked["pause_requested"]) == ("training", True)
    # The flag reaches the worker with its next answer; it saves and says so.
    assert owner.report(first, step(2))["pause"] is True
    owner.report(first, {"kind": "paused", "data": {"step": 2}})
    paused = owner.run(first)
    assert (paused["status"], paused["pause_requested"]) == ("paused", False)
    [attempt] = owner.attempts(first)
    assert (attempt.active, attempt.end_reason) == (False, "paused")
    credits = paused["metrics"]["credits"]
    # Its node went to the next run.
    tick(owner.plane)
    assert owner.run(second)["status"] == "waiting_for_gpu"
    assert owner.run(first)["metrics"]["credits"] == credits  # nothing accrues while paused
    owner.post(f"/runs/{second}/cancel")
    log = owner.http.get(f"{API}/runs/{first}/logs", headers=owner.auth).text
    assert "pause requested" in log and "paused after step 2" in log

    assert owner.post(f"/runs/{first}/resume").json()["status"] == "queued"
    tick(owner.plane)
    resumed = owner.run(first)
    assert (resumed["status"], resumed["attempt"]) == ("waiting_for_gpu", 2)
    # Paused attempts do not count against the retry budget (max_attempts 2 here).
    owner.backend.lose(owner.backend.launches[-1].attempt_id)
    tick(owner.plane)
    assert owner.run(first)["status"] == "retrying"


def test_a_pause_withdrawn_before_it_took_effect_lets_training_go_on(
    owner: Owner, dataset_id: str
) -> None:
    run_id = owner.post("/runs", payload(dataset_id)).json()["id"]
    tick(owner.plane)
    owner.report(run_id, step(1))
    owner.post(f"/runs/{run_id}/pause")
    withdrawn = owner.post(f"/runs/{run_id}/resume").json()
    assert (withdrawn["status"], withdrawn["pause_requested"]) == ("training", False)
    assert owner.report(run_id, step(2))["pause"] is False


def test_a_worker_lost_while_pausing_leaves_the_run_paused(owner: Owner, dataset_id: str) -> None:
    run_id = owner.post("/runs", payload(dataset_id)).json()["id"]
    tick(owner.plane)
    owner.report(run_id, step(1))
    owner.post(f"/runs/{run_id}/pause")
    owner.backend.lose(owner.backend.launches[-1].attempt_id)
    tick(owner.plane)
    assert owner.run(run_id)["status"] == "paused"


def test_pause_and_resume_are_refused_where_they_make_no_sense(
    owner: Owner, dataset_id: str
) -> None:
    run_id = owner.post("/runs", payload(dataset_id)).json()["id"]
    assert owner.post(f"/runs/{run_id}/resume").status_code == 409  # queued, not paused
    owner.post(f"/runs/{run_id}/pause")
    cancelled = owner.post(f"/runs/{run_id}/cancel")
    assert cancelled.json()["status"] == "cancelled"  # a paused run can be cancelled
    for action in ("pause", "resume"):
        refused = owner.post(f"/runs/{run_id}/{action}")
        assert refused.status_code == 409, refused.text
        assert "cancelled" in refused.json()["detail"]["message"]
    assert owner.post("/runs/run_nope/pause").status_code == 404


def test_meta_serves_the_paused_status_and_what_each_status_allows(owner: Owner) -> None:
    statuses = {s["id"]: s for s in owner.http.get(f"{API}/meta").json()["statuses"]}
    assert statuses["paused"]["label"] == "Paused" and statuses["paused"]["icon"] == "pause"
    assert statuses["paused"]["resumable"] and not statuses["paused"]["active"]
    pausable = {status for status, info in statuses.items() if info["pausable"]}
    assert pausable == {"queued", "waiting_for_gpu", "training", "retrying"}


def test_the_cli_pauses_and_resumes(
    owner: Owner, dataset_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tunery = in_process_cli(owner.http, owner.auth["Authorization"].split()[1], monkeypatch)
    run_id = owner.post("/runs", payload(dataset_id)).json()["id"]
    tick(owner.plane)
    owner.report(run_id, step(1))
    asked = tunery("runs", "pause", run_id)
    assert asked.exit_code == 0, asked.output
    assert "pauses after the current step's checkpoint" in asked.output
    assert "pausing after this step" in tunery("runs", "show", run_id).output
    owner.report(run_id, {"kind": "paused", "data": {"step": 1}})
    assert "Paused" in tunery("runs", "show", run_id).output
    resumed = tunery("runs", "resume", run_id)
    assert resumed.exit_code == 0 and "continues from its checkpoint" in resumed.output
    again = tunery("runs", "resume", run_id)
    assert again.exit_code == 1 and "not paused" in again.output


def test_a_resume_is_admitted_as_a_submission_is(owner: Owner, dataset_id: str) -> None:
    # Resume goes back through the intake: what would refuse the run now refuses its resume,
    # and the run stays paused with nothing lost.
    run_id = owner.post("/runs", payload(dataset_id)).json()["id"]
    owner.post(f"/runs/{run_id}/pause")
    with owner.plane.sessions() as session:
        account_id = session.get(Run, run_id).account_id
        balance = billing.balance(session, account_id)
    grant_credits(owner.plane, account_id=account_id, amount=-balance, note="spent elsewhere")
    broke = owner.post(f"/runs/{run_id}/resume")
    assert broke.status_code == 422, broke.text
    [problem] = broke.json()["detail"]["problems"]
    assert problem["field"] == "credits" and "does not cover the first minute" in problem["message"]
    assert owner.run(run_id)["status"] == "paused"
    grant_credits(owner.plane, account_id=account_id, amount=balance, note="topped up")
    owner.plane.settings.max_queued_runs_per_account = 1
    assert owner.post("/runs", payload(dataset_id, "other")).status_code == 201
    full = owner.post(f"/runs/{run_id}/resume")
    assert full.status_code == 429 and "queued runs" in full.json()["detail"]["message"]
    assert owner.run(run_id)["status"] == "paused"


def test_warnings_accepted_at_submission_do_not_block_the_resume(
    owner: Owner, dataset_id: str
) -> None:
    # A /v1 job cannot say accept_warnings (OpenAI has no such field): the intake accepts
    # them for it, and its resume must not refuse what its submission took.
    body = payload(dataset_id)
    body["training"] = {**body["training"], "learning_rate": 0.05}  # far above what works
    with owner.plane.sessions() as session:
        account_id = session.scalars(select(Account.id)).first()
    run = submit_run(
        owner.plane,
        account_id=account_id,
        payload=body,
        idempotency_key=None,
        job=JobFields(suffix=None, validation_file=None, metadata=None),
    )
    assert run.estimate["warnings"]
    owner.post(f"/runs/{run.id}/pause")
    resumed = owner.post(f"/runs/{run.id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued"
