"""The worker protocol's boundaries, in process with the in-memory backend.

A worker holds an attempt id and a token. With them it reads its spec (no server paths), the
datasets of its own run (no other run's, no other attempt's), and uploads bundles that the
server files under names it chooses. The token is never in the database (a local worker's
never on its command line or in its environment: ``tests/reliability/test_local_workers.py``),
and the data dir and its secrets are owner-only.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import in_process_app, payload
from fastapi.testclient import TestClient
from sqlalchemy import select

from tunery.api.app import create_app
from tunery.backends.base import AttemptLaunch
from tunery.backends.fake import FakeBackend
from tunery.db import Attempt
from tunery.runs import settle
from tunery.runs.plane import ControlPlane
from tunery.scheduler.scheduler import tick
from tunery.server import data_dir_from, ensure_admin
from tunery.settings import NodeSettings, Settings


class Studio:
    """An app on the fake backend: an admin client, and the plane to drive the scheduler."""

    def __init__(self, http: TestClient, plane: ControlPlane, token: str) -> None:
        self.http, self.plane = http, plane
        self.auth = {"Authorization": f"Bearer {token}"}

    def dataset(self, content: bytes, name: str = "rows.jsonl") -> str:
        response = self.http.post(
            "/api/v1/datasets", files={"file": (name, content)}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def placed_run(self, dataset_id: str, name: str) -> tuple[str, AttemptLaunch]:
        """Submit a run and let the scheduler hand it to the fake backend."""
        response = self.http.post("/api/v1/runs", json=payload(dataset_id, name), headers=self.auth)
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        tick(self.plane)
        backend: FakeBackend = self.plane.workers  # type: ignore[assignment]
        return run_id, next(launch for launch in backend.launches if launch.run_id == run_id)

    def worker_get(self, launch: AttemptLaunch, path: str, token: str | None = None) -> Any:
        return self.http.get(
            f"/internal/attempts/{launch.attempt_id}{path}",
            headers={"X-Attempt-Token": token or launch.token},
        )

    def upload(self, launch: AttemptLaunch, kind: str, body: bytes, **headers: str) -> Any:
        return self.http.put(
            f"/internal/attempts/{launch.attempt_id}/bundles/{kind}",
            content=body,
            headers={"X-Attempt-Token": launch.token, **headers},
        )


@pytest.fixture
def studio(data_dir: Path) -> Iterator[Studio]:
    settings = Settings.load(data_dir)
    settings.nodes = [NodeSettings(name=f"n{i}", tier="cpu") for i in range(2)]
    with in_process_app(settings) as (http, token):
        yield Studio(http, http.app.state.plane, token)


ROWS = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


def test_the_spec_names_datasets_by_id_and_no_server_path(studio: Studio, data_dir: Path) -> None:
    dataset_id = studio.dataset(ROWS * 4)
    _, launch = studio.placed_run(dataset_id, "spec")
    spec = studio.worker_get(launch, "/spec")
    assert spec.status_code == 200, spec.text
    assert str(data_dir) not in spec.text
    assert [ref["id"] for ref in spec.json()["datasets"]] == [dataset_id]
    assert spec.json()["datasets"][0]["sha256"] == hashlib.sha256(ROWS * 4).hexdigest()


def test_attempt_tokens_are_stored_hashed(studio: Studio) -> None:
    _, launch = studio.placed_run(studio.dataset(ROWS * 4), "hashed")
    with studio.plane.sessions() as session:
        attempt = session.scalar(select(Attempt).where(Attempt.id == launch.attempt_id))
    assert attempt.token_hash == hashlib.sha256(launch.token.encode()).hexdigest()
    columns = {column.name for column in Attempt.__table__.columns}
    assert "token" not in columns
    assert studio.worker_get(launch, "/spec", token=attempt.token_hash).status_code == 404


def test_a_worker_reads_only_its_own_runs_datasets(studio: Studio) -> None:
    mine = studio.dataset(ROWS * 4, "mine.jsonl")
    theirs = studio.dataset(ROWS * 5, "theirs.jsonl")
    _, launch = studio.placed_run(mine, "mine")
    _, other = studio.placed_run(theirs, "theirs")

    own = studio.worker_get(launch, f"/datasets/{mine}")
    assert (own.status_code, own.content) == (200, ROWS * 4)
    # Another run's dataset, with this attempt's token: as if it did not exist.
    assert studio.worker_get(launch, f"/datasets/{theirs}").status_code == 404
    # This run's dataset with another attempt's token, or with no valid token at all.
    assert studio.worker_get(launch, f"/datasets/{mine}", token=other.token).status_code == 404
    assert studio.worker_get(launch, f"/datasets/{mine}", token="fence_guess").status_code == 404
    assert studio.worker_get(launch, "/datasets/..%2Ftunery.db").status_code == 404


def test_a_fenced_attempt_reads_and_uploads_nothing(studio: Studio) -> None:
    dataset_id = studio.dataset(ROWS * 4)
    run_id, launch = studio.placed_run(dataset_id, "fenced")
    account = studio.http.get("/api/v1/runs", headers=studio.auth).json()[0]
    assert account["id"] == run_id
    with studio.plane.sessions() as session:
        from tunery.db import Run

        owner = session.get(Run, run_id).account_id
    settle.cancel_run(studio.plane, account_id=owner, run_id=run_id)
    assert studio.worker_get(launch, f"/datasets/{dataset_id}").status_code == 409
    assert studio.upload(launch, "lora", b"PK").status_code == 409


def test_bundles_are_filed_under_names_the_server_chooses(studio: Studio, data_dir: Path) -> None:
    run_id, launch = studio.placed_run(studio.dataset(ROWS * 4), "named")
    body = b"PK\x03\x04 a zip, as far as the server cares"
    digest = hashlib.sha256(body).hexdigest()

    assert studio.upload(launch, "lora", body, **{"X-Content-SHA256": "0" * 64}).status_code == 400
    assert studio.upload(launch, "secret-key", body).status_code == 422
    assert studio.upload(launch, "lora", body, **{"X-Content-SHA256": digest}).status_code == 204
    run_dir = data_dir / "runs" / run_id
    assert sorted(path.name for path in run_dir.iterdir()) == ["named-lora.zip"]
    assert (run_dir / "named-lora.zip").read_bytes() == body

    # A result naming a server file as its artifact changes nothing: the Hub entry holds
    # what was uploaded, and the signing key stays where it is.
    secret = (data_dir / "secret-key").read_bytes()
    result = {
        "kind": "result",
        "data": {"status": "completed", "artifacts": {"lora": "../../secret-key", "gguf": None}},
    }
    response = studio.http.post(
        f"/internal/attempts/{launch.attempt_id}/events",
        content=json.dumps({"events": [{"kind": "phase", "data": {"phase": "training"}}, result]}),
        headers={"X-Attempt-Token": launch.token, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    entry = studio.http.get("/api/v1/hub", headers=studio.auth).json()[0]
    assert entry["artifacts"]["lora"]["sha256"] == digest
    assert entry["artifacts"]["lora"]["filename"] == "named-lora.zip"
    assert (data_dir / "secret-key").read_bytes() == secret


def test_the_data_dir_and_its_secrets_are_owner_only(tmp_path: Path) -> None:
    root = data_dir_from(tmp_path / "fresh")
    settings = Settings.load(root)
    ensure_admin(settings)
    create_app(settings, server_url="http://test", backend=FakeBackend(), run_scheduler=False)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for name in ("tunery.db", "admin-token", "secret-key"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name


def test_a_diverged_result_fails_the_run_and_delivers_its_kept_lora(studio: Studio) -> None:
    run_id, launch = studio.placed_run(studio.dataset(ROWS * 4), "diverged")
    assert studio.upload(launch, "lora", b"PK\x03\x04 the kept adapter").status_code == 204
    error = {
        "code": "diverged",
        "message": "training diverged: the loss rose from 2.2600 to 8.4200 (smoothed)",
        "hint": "likely cause: training.learning_rate 1 is above 0.01",
    }
    kept = {"step": 12, "loss": 2.1, "eval_loss": None}
    result = {
        "kind": "result",
        "data": {"status": "failed", "error": error, "kept": kept, "metrics": {"step": 40}},
    }
    for report in ({"kind": "phase", "data": {"phase": "training"}}, result):
        response = studio.http.post(
            f"/internal/attempts/{launch.attempt_id}/events",
            content=json.dumps({"events": [report]}),
            headers={"X-Attempt-Token": launch.token, "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
    run = studio.http.get(f"/api/v1/runs/{run_id}", headers=studio.auth).json()
    assert run["status"] == "failed" and run["error"] == error
    assert run["kept"] == kept
    assert run["hub_entry_id"] is not None and run["artifacts"]["lora"] == "diverged-lora.zip"
    assert run["refunded"] is False
    assert run["refund_note"].startswith("Not refunded: the run's loss diverged")
    assert "best step's LoRA was delivered" in run["refund_note"]
    url = studio.http.post(
        f"/api/v1/hub/{run['hub_entry_id']}/artifacts/lora/url", headers=studio.auth
    )
    assert url.status_code == 200, url.text
