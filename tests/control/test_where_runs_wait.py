"""Where a run went and why it waits, as a user reads it over the API.

In process on the in-memory backend; the tests tick the scheduler. A cluster that places
attempts itself (the fake's ``cluster``, as Ray) logs why an attempt waits, once per
reason, and the node it lands on; a pool whose nodes are claimed logs the node at start,
once. A queued run whose account cannot pay its first minute while its other runs hold
credits has no queue position and says why, until the credits are free.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_harness import payload
from fastapi.testclient import TestClient

from tunery.api.app import create_app
from tunery.backends.fake import FakeBackend
from tunery.runs.accounts import create_account, grant_credits
from tunery.runs.plane import ControlPlane
from tunery.scheduler.scheduler import tick
from tunery.server import ensure_admin
from tunery.settings import NodeSettings, Settings
from tunery.tiers import TierSettings

API = "/api/v1"


class Account:
    """One account's calls to the in-process API."""

    def __init__(self, http: TestClient, token: str) -> None:
        self.http = http
        self.auth = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        response = self.http.get(f"{API}{path}", headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json() if "json" in response.headers["content-type"] else response.text

    def post(self, path: str, body: Any = None) -> Any:
        response = self.http.post(f"{API}{path}", json=body, headers=self.auth)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def submit(self, dataset: Path, name: str) -> str:
        with dataset.open("rb") as file:
            response = self.http.post(
                f"{API}/datasets", files={"file": (dataset.name, file)}, headers=self.auth
            )
        assert response.status_code == 201, response.text
        return self.post("/runs", payload(response.json()["id"], name=name))["id"]

    def log_messages(self, run_id: str) -> list[str]:
        """The run's log (``GET /runs/{id}/logs``) without each line's time."""
        return [line.split(" ", 1)[1] for line in self.get(f"/runs/{run_id}/logs").splitlines()]

    def stored_events(self, run_id: str) -> list[dict[str, Any]]:
        """Every event of a finished run, as its event stream sends them (the stream ends)."""
        response = self.http.get(f"{API}/runs/{run_id}/events", headers=self.auth)
        assert response.status_code == 200, response.text
        return [
            json.loads(line.removeprefix("data: "))
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]


@dataclass
class Studio:
    http: TestClient
    plane: ControlPlane
    admin: Account

    def account_with(self, credits: float) -> Account:
        """A new account granted ``credits``."""
        account_id, token = create_account(self.plane, name="tight")
        grant_credits(self.plane, account_id=account_id, amount=credits, note="test")
        return Account(self.http, token)


@contextmanager
def studio(data_dir: Path, backend: FakeBackend, nodes: int) -> Iterator[Studio]:
    """The API on ``backend`` with ``nodes`` nodes of a 1 credit/min cpu tier."""
    settings = Settings.load(data_dir)
    settings.tiers = [TierSettings(id="cpu", name="CPU", credits_per_minute=1.0)]
    settings.nodes = [NodeSettings(name=f"n{index}", tier="cpu") for index in range(nodes)]
    backend.nodes = [(node.name, node.tier) for node in settings.nodes]
    token = ensure_admin(settings)
    assert token is not None
    app = create_app(settings, server_url="http://test", backend=backend, run_scheduler=False)
    with TestClient(app) as http:
        yield Studio(http, app.state.plane, Account(http, token))


def test_a_cluster_run_logs_why_it_waits_once_per_reason_and_where_it_lands(
    data_dir: Path, demo_dataset: Path
) -> None:
    backend = FakeBackend(cluster=True)
    with studio(data_dir, backend, nodes=2) as the:
        user = the.admin
        run_id = user.submit(demo_dataset, "placed")
        for _ in range(3):  # started, then asked where it is twice
            tick(the.plane)
        attempt_id = backend.launches[0].attempt_id
        run = user.get(f"/runs/{run_id}")
        assert (run["status"], run["node"]) == ("waiting_for_gpu", None)
        assert run["waiting_reason"] == "no node of tier cpu is free yet"

        backend.hold(attempt_id, "every node of tier cpu is busy")
        tick(the.plane)
        tick(the.plane)
        backend.place(attempt_id, "n1")
        tick(the.plane)
        tick(the.plane)
        run = user.get(f"/runs/{run_id}")
        assert (run["status"], run["node"], run["waiting_reason"]) == (
            "waiting_for_gpu",
            "n1",
            None,
        )
        placement = [
            "waiting: no node of tier cpu is free yet",
            "waiting: every node of tier cpu is busy",
            "placed on node n1",
        ]
        assert user.log_messages(run_id) == [
            "status: queued (queued)",
            "status: waiting_for_gpu (provisioning)",
            *placement,
        ]

        # The stream carries them as log events with the line the Run panel's log shows.
        user.post(f"/runs/{run_id}/cancel")
        events = [e for e in user.stored_events(run_id) if e["kind"] == "log"]
        assert [event["line"].split(" ", 1)[1] for event in events] == placement


def test_a_claimed_node_is_logged_once_when_the_attempt_starts(
    data_dir: Path, demo_dataset: Path
) -> None:
    with studio(data_dir, FakeBackend(), nodes=1) as the:
        user = the.admin
        run_id = user.submit(demo_dataset, "pooled")
        for _ in range(3):
            tick(the.plane)
        assert user.get(f"/runs/{run_id}")["node"] == "n0"
        assert user.log_messages(run_id)[1:] == [
            "status: waiting_for_gpu (provisioning)",
            "placed on node n0",
        ]


def test_a_run_its_account_cannot_pay_for_yet_waits_for_credits_and_says_so(
    data_dir: Path, demo_dataset: Path
) -> None:
    with studio(data_dir, FakeBackend(), nodes=2) as the:
        user = the.account_with(1.5)
        first = user.submit(demo_dataset, "first")
        second = user.submit(demo_dataset, "second")
        tick(the.plane)
        tick(the.plane)
        # A node is free, but the first run holds a minute of the 1.5 credits.
        waiting = user.get(f"/runs/{second}")
        assert (waiting["status"], waiting["queue_position"]) == ("queued", None)
        assert waiting["waiting_reason"] == (
            "waiting for credits: the balance (1.50 credits) less what the account's active "
            "runs hold (1.00) does not cover a minute on cpu (1 credits/min)"
        )
        listed = {run["id"]: run for run in user.get("/runs")}
        assert listed[second]["waiting_reason"] == waiting["waiting_reason"]
        assert listed[first]["status"] == "waiting_for_gpu"
        assert listed[first]["waiting_reason"] is None

        user.post(f"/runs/{first}/cancel")  # before training: nothing is charged
        queued = user.get(f"/runs/{second}")
        assert (queued["status"], queued["queue_position"], queued["waiting_reason"]) == (
            "queued",
            1,
            None,
        )
        tick(the.plane)
        started = user.get(f"/runs/{second}")
        assert (started["status"], started["waiting_reason"]) == ("waiting_for_gpu", None)


def test_the_reason_counts_the_first_minutes_of_runs_queued_before(
    data_dir: Path, demo_dataset: Path
) -> None:
    with studio(data_dir, FakeBackend(), nodes=1) as the:
        user = the.account_with(2.5)
        runs = [user.submit(demo_dataset, f"run-{index}") for index in range(3)]
        tick(the.plane)
        views = [user.get(f"/runs/{run_id}") for run_id in runs]
        assert [(view["status"], view["queue_position"]) for view in views] == [
            ("waiting_for_gpu", None),
            ("queued", 1),
            ("queued", None),
        ]
        assert views[1]["waiting_reason"] is None
        assert views[2]["waiting_reason"] == (
            "waiting for credits: the balance (2.50 credits) less what the account's active "
            "runs hold (1.00) and the first minutes of its runs queued before this one (1.00) "
            "does not cover a minute on cpu (1 credits/min)"
        )
