"""What the server keeps on disk, the limits it enforces, and values that used to crash it.

Run folders removed with their run and after the retention; a per-account dataset quota
(also against uploads running side by side); local base models only from the allow-listed
folder; a paused scheduler that does not kill healthy workers; odd signed-URL and cursor
values; errors without server paths; a full disk named as such by the quantizer; and the
refund rule for a run whose LoRA was delivered.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from control_harness import payload
from plane_kit import CHAT_LINE, grant, upload
from sqlalchemy import select

from tunery.api.streams import cursor
from tunery.db import Attempt, Run, now
from tunery.errors import ConfigError
from tunery.gguf import export
from tunery.hub import signing
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.runs import billing, datasets, history, queries, retention, settle, store
from tunery.runs.intake import LOCAL_MODELS_ONLY, submit_run
from tunery.runs.plane import ControlPlane, QuotaExceeded
from tunery.scheduler.scheduler import tick

MakePlane = Callable[..., ControlPlane]


def finished_run(plane: ControlPlane, status: RunStatus, *, hours_ago: float) -> str:
    """A terminal run of account ``a`` with a folder of files, ended ``hours_ago``."""
    grant(plane, "a", 100)
    run = submit_run(
        plane, account_id="a", payload=payload(upload(plane, "a")), idempotency_key=None
    )
    with plane.sessions.begin() as session:  # as if it had run and ended then
        row = session.get(Run, run.id)
        row.status, row.finished_at = status.value, now() - hours_ago * 3600
    folder = plane.runs_dir / run.id / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "adapter.safetensors").write_bytes(b"weights")
    (plane.runs_dir / run.id / "run.json").write_text("{}")
    return run.id


def test_deleting_a_run_removes_its_folder(make_plane: MakePlane, figures) -> None:
    plane = make_plane()
    run_id = finished_run(plane, RunStatus.COMPLETED, hours_ago=0)
    settle.delete_run(plane, account_id="a", run_id=run_id)
    figures.attack("storage", refused=not (plane.runs_dir / run_id).exists())
    assert not (plane.runs_dir / run_id).exists()


def test_failed_and_cancelled_runs_folders_go_after_the_retention(make_plane: MakePlane) -> None:
    plane = make_plane(failed_run_retention_hours=24)
    old_failed = finished_run(plane, RunStatus.FAILED, hours_ago=25)
    old_cancelled = finished_run(plane, RunStatus.CANCELLED, hours_ago=30)
    recent_failed = finished_run(plane, RunStatus.FAILED, hours_ago=1)
    old_completed = finished_run(plane, RunStatus.COMPLETED, hours_ago=100)
    assert sorted(retention.sweep(plane)) == sorted([old_failed, old_cancelled])
    for kept in (recent_failed, old_completed):
        assert (plane.runs_dir / kept / "run.json").is_file()
    assert retention.sweep(plane) == []  # not again before SWEEP_EVERY_SECONDS


def test_datasets_past_the_account_quota_are_refused_also_when_uploaded_together(
    make_plane: MakePlane, figures
) -> None:
    one_file = len(CHAT_LINE.encode()) * 8 + 8
    plane = make_plane(dataset_quota_bytes=3 * one_file)
    outcomes: list[object] = []
    barrier = threading.Barrier(6)

    def upload_one() -> None:
        barrier.wait()
        try:
            outcomes.append(upload(plane, "a"))
        except QuotaExceeded as error:
            outcomes.append(error)

    threads = [threading.Thread(target=upload_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [outcome for outcome in outcomes if isinstance(outcome, QuotaExceeded)]
    for _ in refused:
        figures.attack("storage", refused=True)
    assert (len(outcomes), len(refused)) == (6, 3)
    assert "quota" in refused[0].message
    assert len(datasets.list_datasets(plane, "a")) == 3
    assert len(list(plane.datasets_dir.iterdir())) == 3  # no partial file left behind
    upload(plane, "b")  # the quota is per account


def model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    return root


@pytest.mark.parametrize("where", ["outside", "dotdot", "etc", "dot-relative"])
def test_local_base_models_come_only_from_the_allowed_folder(
    make_plane: MakePlane, tmp_path: Path, figures, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = make_plane()
    grant(plane, "a", 100)
    dataset_id = upload(plane, "a")
    outside = model_dir(tmp_path / "elsewhere" / "model")
    monkeypatch.chdir(tmp_path)
    base_model = {
        "outside": str(outside),
        "dotdot": str(plane.settings.models_dir / ".." / ".." / "elsewhere" / "model"),
        "etc": "/etc",
        "dot-relative": "./elsewhere/model",
    }[where]
    with pytest.raises(ConfigError) as refused:
        submit_run(
            plane,
            account_id="a",
            payload=payload(dataset_id, base_model=base_model),
            idempotency_key=None,
        )
    messages = {problem.field: problem.message for problem in refused.value.problems}
    figures.attack("traversal", refused=messages.get("base_model") == LOCAL_MODELS_ONLY)
    assert messages == {"base_model": LOCAL_MODELS_ONLY}


def test_a_relative_name_is_never_looked_up_in_the_servers_working_directory(
    make_plane: MakePlane, tmp_path: Path, figures, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that is a model directory in the server's working directory answers exactly
    as one that exists nowhere: both are Hugging Face ids (here refused alike, since an
    offline server cannot fetch them), so the answer reveals nothing."""
    plane = make_plane()
    grant(plane, "a", 100)
    dataset_id = upload(plane, "a")
    model_dir(tmp_path / "elsewhere" / "model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answers = []
    for name in ("elsewhere/model", "nowhere/model"):
        with pytest.raises(ConfigError) as refused:
            submit_run(
                plane,
                account_id="a",
                payload=payload(dataset_id, base_model=name),
                idempotency_key=None,
            )
        answers.append(str(refused.value).replace(name, "NAME"))
    figures.attack("traversal", refused=answers[0] == answers[1])
    assert answers[0] == answers[1]
    assert "NAME is not in the server's Hugging Face cache" in answers[0]


def test_a_relative_name_in_the_models_folder_is_that_model(make_plane: MakePlane) -> None:
    plane = make_plane()
    grant(plane, "a", 100)
    inside = model_dir(plane.settings.models_dir / "org" / "mine")
    for name in ("org/mine", "./org/mine"):
        run = submit_run(
            plane,
            account_id="a",
            payload=payload(upload(plane, "a"), base_model=name),
            idempotency_key=None,
        )
        assert run.config["base_model"] == str(inside.absolute())


def test_a_model_in_the_allowed_folder_is_accepted(make_plane: MakePlane) -> None:
    plane = make_plane()
    grant(plane, "a", 100)
    inside = model_dir(plane.settings.models_dir / "mine")
    run = submit_run(
        plane,
        account_id="a",
        payload=payload(upload(plane, "a"), base_model=str(inside)),
        idempotency_key=None,
    )
    assert run.status == "queued"


def test_a_scheduler_paused_past_the_lease_does_not_declare_healthy_workers_lost(
    make_plane: MakePlane,
) -> None:
    plane = make_plane(lease_seconds=5)
    grant(plane, "a", 100)
    run = submit_run(
        plane, account_id="a", payload=payload(upload(plane, "a")), idempotency_key=None
    )
    tick(plane)
    with plane.sessions.begin() as session:
        attempt = store.active_attempt(session, run.id)
        attempt.lease_expires_at = now() - 30  # nobody could report in while paused
    plane.last_tick_at = now() - 60  # the scheduler did not run for a minute
    tick(plane)
    with plane.sessions() as session:
        assert store.active_attempt(session, run.id) is not None
    assert queries.view_run(plane, "a", run.id).status == "waiting_for_gpu"
    with plane.sessions.begin() as session:  # without a gap an expired lease is lost
        store.active_attempt(session, run.id).lease_expires_at = now() - 30
    tick(plane)
    assert [a["end_reason"] for a in attempts_of(plane, run.id)] == ["lease expired", None]


def attempts_of(plane: ControlPlane, run_id: str) -> list[dict[str, object]]:
    with plane.sessions() as session:
        rows = session.scalars(select(Attempt).where(Attempt.run_id == run_id)).all()
    return [{"end_reason": row.end_reason} for row in sorted(rows, key=lambda r: r.number)]


HOSTILE_NUMBERS = ["٣٤٥", "²", "9" * 5000, str(2**64), "-1", "1e3", "", " 12", "0x10"]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_odd_expiry_and_signature_values_are_tampered_urls_not_errors(value: str, figures) -> None:
    secret = b"k" * 32
    query = {"account_id": "a", "entry_id": "e", "artifact": "lora", "nonce": "n"}
    accepted = signing.verify(secret, **query, expires=value, signature="0" * 64)
    odd_signature = signing.verify(
        secret, **query, expires=str(int(time.time()) + 60), signature=value + "é"
    )
    figures.attack("signed URLs", refused=not accepted and not odd_signature)
    assert not accepted and not odd_signature


@pytest.mark.parametrize("value", [*HOSTILE_NUMBERS, str(2**63)])
def test_odd_last_event_ids_are_ignored_cursors(value: str, figures) -> None:
    figures.attack("event cursors", refused=cursor(value) is None)
    assert cursor(value) is None
    assert cursor(str(2**63 - 1)) == 2**63 - 1


def test_run_errors_do_not_show_server_paths(make_plane: MakePlane, figures) -> None:
    plane = make_plane()
    grant(plane, "a", 100)
    run = submit_run(
        plane, account_id="a", payload=payload(upload(plane, "a")), idempotency_key=None
    )
    secret_place = f"{plane.settings.data_dir}/runs/{run.id}/model.gguf"
    with plane.sessions.begin() as session:
        settle.finish(
            plane,
            session,
            session.get(Run, run.id),
            to=RunStatus.FAILED,
            phase=Phase.DONE,
            at=now(),
            error={
                "code": "x",
                "message": f"[Errno 28] No space left on device: '{secret_place}'",
                "hint": f"free space under {plane.settings.data_dir}/",
            },
        )
    shown = queries.view_run(plane, "a", run.id).error
    figures.attack("path disclosure", refused=str(plane.settings.data_dir) not in str(shown))
    assert shown.message == "[Errno 28] No space left on device: 'model.gguf'"
    assert str(plane.settings.data_dir) not in shown.hint
    assert str(plane.settings.data_dir) not in history.run_log(plane, "a", run.id)


def test_a_full_disk_in_the_quantizer_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    source = tmp_path / "model-f16.gguf"
    source.write_bytes(b"\0" * 4 * 2**20)
    monkeypatch.setattr(export.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 2**20})())
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda *_: 1)
    with pytest.raises(export.ExportError) as failed:
        export.quantize(source, tmp_path / "model.gguf")
    assert "no space left" in failed.value.message and "1 MiB free" in failed.value.message
    assert failed.value.hint == export.RERUN_HINT


def test_a_run_whose_lora_was_delivered_is_not_refunded_when_the_export_fails() -> None:
    error = {"code": "gguf_export_failed", "message": "", "hint": ""}
    delivered = billing.refund_decision("failed", "tunery/demo-tiny", error, delivered=True)
    assert delivered.refunded is False and "LoRA was delivered" in delivered.note
    lost = billing.refund_decision("failed", "tunery/demo-tiny", error, delivered=False)
    assert lost.refunded is True  # the training gave the user nothing: refunded


def test_an_upload_with_a_hostile_name_is_stored_under_its_id(make_plane: MakePlane) -> None:
    plane = make_plane()
    source = io.BytesIO((CHAT_LINE + "\n").encode())
    dataset = datasets.store_dataset(
        plane, account_id="a", source=source, original_name="../../../../etc/passwd.jsonl"
    )
    assert [path.name for path in plane.datasets_dir.iterdir()] == [f"{dataset.id}.jsonl"]
    assert dataset.name == "passwd.jsonl"
