"""The experiment workflow through the API and the CLI, in process on the in-memory backend:
tags and notes, metrics exports, the log with its training lines, a deleted Hub entry told
to the run's followers, the account stream's snapshot, and webhook test events."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from control_harness import payload
from plane_studio import Studio
from sqlalchemy import select

from tunery.db import HubEntry, Run, RunEvent
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.runs import store
from tunery.runs.queries import snapshot


def patch(studio: Studio, run_id: str, body: Any) -> Any:
    return studio.http.patch(f"/api/v1/runs/{run_id}", json=body, headers=studio.auth)


def stored_events(studio: Studio, run_id: str, kind: str) -> list[dict[str, Any]]:
    with studio.plane.sessions() as session:
        rows = session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.kind == kind)
            .order_by(RunEvent.id)
        )
        return [row.data for row in rows]


def owner(studio: Studio, run_id: str) -> str:
    with studio.plane.sessions() as session:
        return session.get(Run, run_id).account_id


def test_tags_and_a_note_are_set_kept_and_announced(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    answer = patch(studio, run_id, {"tags": ["lr-sweep", "v2", "lr-sweep"], "note": " try 3e-4 "})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["tags"], answer.json()["note"]) == (["lr-sweep", "v2"], "try 3e-4")
    # A field left out is kept; the run's followers are told of each change.
    assert patch(studio, run_id, {"note": ""}).json()["tags"] == ["lr-sweep", "v2"]
    assert stored_events(studio, run_id, "annotations") == [
        {"tags": ["lr-sweep", "v2"], "note": "try 3e-4"},
        {"tags": ["lr-sweep", "v2"], "note": ""},
    ]
    assert studio.get("/runs").json()[0]["tags"] == ["lr-sweep", "v2"]


def test_a_run_is_submitted_with_tags_and_a_rerun_carries_the_current_ones(
    studio: Studio, dataset_id: str
) -> None:
    run = studio.post("/runs", payload(dataset_id, tags=["v1", "v1"], note="first")).json()
    assert (run["tags"], run["note"]) == (["v1"], "first")
    assert patch(studio, run["id"], {"tags": ["v1", "kept"], "note": "good"}).status_code == 200
    recipe = studio.get(f"/runs/{run['id']}/recipe").json()
    assert (recipe["tags"], recipe["note"]) == (["v1", "kept"], "good")
    assert "attestations" not in recipe and "accept_warnings" not in recipe
    refused = studio.post("/runs", payload(dataset_id, "bad-tags", tags=["no spaces please"]))
    assert refused.status_code == 422
    assert refused.json()["detail"]["problems"][0]["field"] == "tags"


def test_bad_tags_and_notes_are_refused_with_the_field(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    cases = {
        "tags": {"tags": ["ok", "has space"]},
        "note": {"note": "bell \x07"},
        "extra": {"colour": "red"},
        "many": {"tags": [f"t{i}" for i in range(21)]},
        "long": {"tags": ["x" * 33]},
        "shape": {"tags": "not-a-list"},
    }
    for case, body in cases.items():
        answer = patch(studio, run_id, body)
        assert answer.status_code == 422, (case, answer.text)
        problem = answer.json()["detail"]["problems"][0]
        assert problem["field"] in {"tags", "note", "colour"}, (case, problem)
    assert "letters, digits" in patch(studio, run_id, cases["tags"]).text
    assert patch(studio, run_id, [1, 2]).status_code == 422
    assert patch(studio, "run_nope", {"tags": []}).status_code == 404
    assert studio.get(f"/runs/{run_id}").json()["tags"] == []


def record_steps(studio: Studio, run_id: str) -> None:
    with studio.plane.sessions.begin() as session:
        for step in (1, 2, 3):
            store.append_event(
                session,
                run_id,
                "metrics",
                {
                    "step": step,
                    "total_steps": 3,
                    "loss": 3.0 / step,
                    "accuracy": 0.25 * step,
                    "learning_rate": 2e-4,
                    "grad_norm": 0.5,
                    "tokens_per_second": 4096.0,
                    "trained_tokens": 100 * step,
                    "training_seconds": 0.5 * step,
                    "duration_seconds": 10.0,
                },
            )
        store.append_event(
            session,
            run_id,
            "evaluation",
            {"step": 2, "eval_loss": 1.75, "eval_accuracy": 0.5, "best_eval_loss": 1.75},
        )


def test_metrics_export_as_csv_and_jsonl_with_the_evaluations(
    studio: Studio, dataset_id: str
) -> None:
    run = studio.post("/runs", payload(dataset_id, "exported")).json()
    record_steps(studio, run["id"])
    answer = studio.get(f"/runs/{run['id']}/metrics?format=csv")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert 'filename="exported-metrics.csv"' in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [row["step"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["eval_loss"] == "1.75" and rows[0]["eval_loss"] == ""
    assert "duration_seconds" not in rows[0]  # the worker's numbers, not the server's
    lines = studio.get(f"/runs/{run['id']}/metrics?format=jsonl").text.splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [3.0, 1.5, 1.0]
    assert studio.get(f"/runs/{run['id']}/metrics?format=xml").status_code == 422
    assert studio.get("/runs/run_nope/metrics?format=csv").status_code == 404


def test_the_log_has_the_training_lines(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    record_steps(studio, run_id)
    log = studio.get(f"/runs/{run_id}/logs").text
    assert "status: queued" in log
    assert "step 2/3 · loss 1.5000 · lr 2.00e-04 · grad norm 0.5000 · 4,096 tok/s" in log
    assert "eval after step 2: loss 1.7500 · accuracy 0.5000" in log


def test_cli_tags_notes_and_exports(cli: Any, studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    record_steps(studio, run_id)
    assert cli("runs", "tag", run_id, "baseline", "v1").output.strip() == "baseline, v1"
    assert cli("runs", "tag", run_id, "--remove", "v1").output.strip() == "baseline"
    assert cli("runs", "note", run_id, "the first try").output.strip() == "the first try"
    shown = cli("runs", "show", run_id).output
    assert "baseline" in shown and "the first try" in shown
    listed = cli("runs", "list", "--tag", "baseline").output
    assert run_id in listed and run_id not in cli("runs", "list", "--tag", "other").output
    exported = cli("runs", "metrics", run_id, "--format", "csv").output
    assert exported.splitlines()[0].startswith("step,epoch,loss,accuracy,learning_rate")
    assert len(exported.splitlines()) == 4
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [row["accuracy"] for row in rows] == ["0.25", "0.5", "0.75"]
    assert [row["eval_loss"] for row in rows] == ["", "1.75", ""]
    assert cli("runs", "metrics", run_id, "--format", "jsonl").output.count("\n") == 3
    assert "step 3/3" in cli("runs", "logs", run_id).output
    refused = cli("runs", "tag", run_id, "bad tag")
    assert refused.exit_code == 1 and "letters, digits" in refused.output


def test_a_deleted_hub_entry_is_told_to_the_run(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    with studio.plane.sessions.begin() as session:
        session.add(
            HubEntry(
                id="hub_kept",
                account_id=owner(studio, run_id),
                run_id=run_id,
                name="kept",
                base_model="tunery/demo-tiny",
                artifacts={},
            )
        )
        session.get(Run, run_id).hub_entry_id = "hub_kept"
    assert studio.get(f"/runs/{run_id}").json()["hub_entry_deleted"] is False
    assert studio.http.delete("/api/v1/hub/hub_kept", headers=studio.auth).status_code == 204
    run = studio.get(f"/runs/{run_id}").json()
    assert run["hub_entry_deleted"] is True and run["hub_entry_id"] == "hub_kept"
    assert stored_events(studio, run_id, "hub") == [{"hub_entry_id": "hub_kept", "deleted": True}]
    assert "Hub entry hub_kept deleted" in studio.get(f"/runs/{run_id}/logs").text


def test_the_snapshot_carries_the_balance_and_free_nodes(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    account_id = owner(studio, run_id)
    numbers = snapshot(studio.plane, account_id, with_tiers=True)
    assert [run.id for run in numbers.runs] == [run_id]
    assert numbers.balance == studio.get("/credits").json()["balance"]
    assert [(tier.id, tier.nodes_free) for tier in numbers.tiers] == [("cpu", 1)]
    assert snapshot(studio.plane, account_id, with_tiers=False).tiers is None
    with studio.plane.sessions.begin() as session:
        store.move(
            session,
            run_id,
            expected=RunStatus.QUEUED,
            to=RunStatus.CANCELLED,
            phase=Phase.CANCELLED,
        )
    assert snapshot(studio.plane, account_id, with_tiers=False).runs == []


# Submission warnings and a model that does not exist -----------------------------------

FAR_OUT = {
    "training": {"learning_rate": 1.0, "batch_size": 4096},
    "lora": {"rank": 1024, "alpha": 2048},
}


def test_settings_far_outside_what_works_are_warned_and_accepted(
    studio: Studio, dataset_id: str
) -> None:
    body = payload(dataset_id, "far-out", **FAR_OUT)
    estimate = studio.post("/runs/estimate", body)
    assert estimate.status_code == 200, estimate.text
    warned = {w["field"]: w["message"] for w in estimate.json()["warnings"]}
    assert warned["training.learning_rate"].startswith("1 is above 0.01 (LoRA usually trains")
    assert "of the model (a LoRA adapter is usually under 1%" in warned["lora.rank"]
    assert "more than the 377 training examples" in warned["training.batch_size"]
    refused = studio.post("/runs", body)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail["code"] == "warnings_not_accepted"
    assert detail["message"].startswith("settings far outside what usually works:")
    assert "accept_warnings: true" in detail["hint"]
    assert {problem["field"] for problem in detail["problems"]} == set(warned)
    assert studio.runs_in_database() == []
    accepted = studio.post("/runs", {**body, "accept_warnings": True})
    assert accepted.status_code == 201, accepted.text
    log = studio.get(f"/runs/{accepted.json()['id']}/logs").text
    assert "submitted despite a warning: training.learning_rate: 1 is above 0.01" in log
    usual = studio.post("/runs/estimate", payload(dataset_id, "usual"))
    assert usual.json()["warnings"] == []


def test_a_hub_model_the_server_cannot_get_is_refused_before_it_queues(
    studio: Studio, dataset_id: str, demo_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused = studio.post("/runs", payload(dataset_id, base_model="made-up/no-such-model"))
    problems = {p["field"]: p["message"] for p in refused.json()["detail"]["problems"]}
    assert problems["base_model"].startswith(
        "made-up/no-such-model is not in the server's Hugging Face cache, and the server is offline"
    )
    assert studio.runs_in_database() == []
    # In the server's cache it passes (the worker loads it from there), offline or not.
    repo = tmp_path / "hub" / "models--tunery-test--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(demo_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    accepted = studio.post("/runs", payload(dataset_id, base_model="tunery-test/cached"))
    assert accepted.status_code == 201, accepted.text
