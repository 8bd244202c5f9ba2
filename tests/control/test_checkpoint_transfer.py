"""Checkpoints through the server, for a cluster whose nodes share no disk.

In process on the in-memory backend, with the worker's own upload and download functions
talking to the app: a checkpoint a worker uploads is the one the run's next attempt gets,
the server keeps the newest two and names the files itself, and a worker whose attempt no
longer owns its run, or whose request is malformed, stores nothing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_harness import in_process_app, payload
from fastapi.testclient import TestClient

from tunery.backends.base import AttemptLaunch
from tunery.backends.fake import FakeBackend
from tunery.pipeline.checkpoints import complete_checkpoints
from tunery.runs import settle
from tunery.runs.plane import ControlPlane
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings
from tunery.worker.checkpoints import CHECKPOINT_FILES, fetch_newest_checkpoint, upload_checkpoint
from tunery.worker.transfers import Fenced

ROWS = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)
CAP = 10 * 2**20
# The worker's client passes httpx timeouts, which the in-process TestClient ignores.
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


class Studio:
    def __init__(self, http: TestClient, plane: ControlPlane, token: str) -> None:
        self.http, self.plane = http, plane
        self.auth = {"Authorization": f"Bearer {token}"}

    def placed_run(self, name: str) -> tuple[str, AttemptLaunch]:
        response = self.http.post(
            "/api/v1/datasets", files={"file": ("rows.jsonl", ROWS * 4)}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        response = self.http.post(
            "/api/v1/runs", json=payload(response.json()["id"], name), headers=self.auth
        )
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        tick(self.plane)
        backend: FakeBackend = self.plane.workers  # type: ignore[assignment]
        return run_id, next(launch for launch in backend.launches if launch.run_id == run_id)

    def worker(self, launch: AttemptLaunch) -> TestClient:
        """A client as the attempt's worker holds it: its token on every request."""
        return TestClient(self.http.app, headers={"X-Attempt-Token": launch.token})

    def archives(self, run_id: str) -> list[str]:
        directory = self.plane.runs_dir / run_id / "checkpoint-archives"
        return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []


@pytest.fixture
def studio(data_dir: Path) -> Iterator[Studio]:
    settings = Settings.load(data_dir)
    settings.nodes = [NodeSettings(name=f"n{i}", tier="cpu") for i in range(2)]
    with in_process_app(settings) as (http, token):
        yield Studio(http, http.app.state.plane, token)


def checkpoint(root: Path, step: int) -> Path:
    """A complete checkpoint directory as the training loop writes one."""
    directory = root / f"step-{step:08d}"
    directory.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        (directory / name).write_bytes(f"{name} at step {step}".encode() * 1000)
    (directory / "COMPLETE").write_text("ok\n")
    return directory


def test_the_next_attempt_gets_the_checkpoint_the_last_one_uploaded(
    studio: Studio, tmp_path: Path
) -> None:
    run_id, launch = studio.placed_run("resumable")
    worker = studio.worker(launch)
    assert (
        fetch_newest_checkpoint(worker, launch.attempt_id, tmp_path / "fresh", max_bytes=CAP)
        is None
    )
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())

    uploaded = checkpoint(tmp_path / "node-a", 5)
    upload_checkpoint(worker, launch.attempt_id, uploaded)
    assert studio.archives(run_id) == ["step-00000005.zip"]

    into = tmp_path / "node-b"
    assert fetch_newest_checkpoint(worker, launch.attempt_id, into, max_bytes=CAP) == 5
    [restored] = complete_checkpoints(into)
    assert restored.name == "step-00000005"
    for name in CHECKPOINT_FILES:
        assert (restored / name).read_bytes() == (uploaded / name).read_bytes()
    assert not list(into.glob(".tmp-*"))


def test_the_server_keeps_the_newest_two_and_hands_out_the_newest(
    studio: Studio, tmp_path: Path
) -> None:
    run_id, launch = studio.placed_run("kept")
    worker = studio.worker(launch)
    for step in (5, 10, 15):
        upload_checkpoint(worker, launch.attempt_id, checkpoint(tmp_path / "node", step))
    assert studio.archives(run_id) == ["step-00000010.zip", "step-00000015.zip"]
    assert fetch_newest_checkpoint(worker, launch.attempt_id, tmp_path / "b", max_bytes=CAP) == 15


def test_a_run_gets_only_its_own_checkpoints(studio: Studio, tmp_path: Path) -> None:
    _, mine = studio.placed_run("mine")
    _, theirs = studio.placed_run("theirs")
    upload_checkpoint(studio.worker(mine), mine.attempt_id, checkpoint(tmp_path / "a", 5))
    into = tmp_path / "theirs"
    assert (
        fetch_newest_checkpoint(studio.worker(theirs), theirs.attempt_id, into, max_bytes=CAP)
        is None
    )
    # This attempt's path with the other attempt's token, or a guessed one: nothing.
    for token in (theirs.token, "fence_guess"):
        answer = studio.http.get(
            f"/internal/attempts/{mine.attempt_id}/checkpoints/newest",
            headers={"X-Attempt-Token": token},
        )
        assert answer.status_code == 404


def test_an_attempt_that_no_longer_owns_its_run_stores_and_reads_nothing(
    studio: Studio, tmp_path: Path
) -> None:
    run_id, launch = studio.placed_run("fenced")
    worker = studio.worker(launch)
    upload_checkpoint(worker, launch.attempt_id, checkpoint(tmp_path / "a", 5))
    with studio.plane.sessions() as session:
        from tunery.db import Run

        owner = session.get(Run, run_id).account_id
    settle.cancel_run(studio.plane, account_id=owner, run_id=run_id)
    with pytest.raises(Fenced):
        upload_checkpoint(worker, launch.attempt_id, checkpoint(tmp_path / "b", 10))
    with pytest.raises(Fenced):
        fetch_newest_checkpoint(worker, launch.attempt_id, tmp_path / "c", max_bytes=CAP)
    assert studio.archives(run_id) == ["step-00000005.zip"]


@pytest.mark.parametrize("step", ["0", "-1", "abc", "100000000", "5.5", "..%2F..%2Fescape"])
def test_a_step_that_is_not_a_positive_number_is_refused(studio: Studio, step: str) -> None:
    run_id, launch = studio.placed_run("bad-step")
    answer = studio.worker(launch).put(
        f"/internal/attempts/{launch.attempt_id}/checkpoints/{step}", content=b"PK"
    )
    assert answer.status_code in (404, 422), answer.text
    if answer.status_code == 422:
        assert "step" in answer.text
    assert studio.archives(run_id) == []


def test_a_damaged_upload_is_refused_and_nothing_is_kept(studio: Studio) -> None:
    run_id, launch = studio.placed_run("damaged")
    body = b"PK\x03\x04 an archive"
    answer = studio.worker(launch).put(
        f"/internal/attempts/{launch.attempt_id}/checkpoints/5",
        content=body,
        headers={"X-Content-SHA256": hashlib.sha256(b"something else").hexdigest()},
    )
    assert answer.status_code == 400, answer.text
    assert "sha256" in answer.text
    assert studio.archives(run_id) == []
    leftovers = list((studio.plane.runs_dir / run_id / "checkpoint-archives").glob("*"))
    assert leftovers == []


def test_uploads_cut_off_long_ago_are_swept_and_running_ones_kept(
    studio: Studio, tmp_path: Path
) -> None:
    run_id, launch = studio.placed_run("swept")
    directory = studio.plane.runs_dir / run_id / "checkpoint-archives"
    directory.mkdir(parents=True)
    abandoned, running = directory / ".upload-old.partial", directory / ".upload-new.partial"
    for partial in (abandoned, running):
        partial.write_bytes(b"half an archive")
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    upload_checkpoint(studio.worker(launch), launch.attempt_id, checkpoint(tmp_path / "a", 5))
    assert not abandoned.exists() and running.exists()
    assert studio.archives(run_id) == [".upload-new.partial", "step-00000005.zip"]
