"""Cost before play, Finish now and Rerun, in process on the in-memory backend.

The estimate answers what a submission would train and cost without creating anything,
422 with every problem otherwise; a submitted run keeps its estimate, and a completed one
becomes the measured throughput of later estimates. Finish now is a flag on a training run;
a run's payload can be read back and submitted again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from control_harness import payload
from plane_studio import Studio

from tunery.backends.fake import FakeBackend
from tunery.db import Run
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.runs import store
from tunery.scheduler.scheduler import tick


def problem_fields(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    return {problem["field"] for problem in response.json()["detail"]["problems"]}


def test_estimate_counts_examples_steps_and_cost_without_creating_anything(
    studio: Studio, dataset_id: str
) -> None:
    body = payload(dataset_id, training={"max_steps": 0, "epochs": 2})
    response = studio.post("/runs/estimate", body)
    assert response.status_code == 200, response.text
    estimate = response.json()
    # 400 demo rows: 3 held out as sample prompts, 5% of the rest (20) as the default split.
    assert (estimate["rows"], estimate["examples"], estimate["validation_examples"]) == (
        400,
        377,
        20,
    )
    assert estimate["total_steps"] == math.ceil(377 / 4) * 2
    assert estimate["epochs"] == 2
    assert estimate["tokens"] > estimate["tokens_per_epoch"] > 377
    assert estimate["throughput_source"] == "prior"
    assert estimate["seconds"] > 0
    assert estimate["credits"] == pytest.approx(estimate["seconds"] / 60 * 1.0, abs=1e-3)
    assert estimate["covered"] is True
    assert studio.runs_in_database() == []


def test_estimate_needs_no_attestations_and_ignores_the_balance(
    studio: Studio, dataset_id: str
) -> None:
    body = payload(dataset_id)
    del body["attestations"]
    response = studio.post("/runs/estimate", body)
    assert response.status_code == 200, response.text
    assert response.json()["total_steps"] == 6


def test_estimate_of_an_invalid_payload_lists_every_problem(
    studio: Studio, dataset_id: str
) -> None:
    body = payload(
        dataset_id,
        dataset_ids=[dataset_id, "ds_nope"],
        lora={"rank": 0},
        validation={"split": 0.7},
        training={"eval_every_steps": -1},
    )
    assert problem_fields(studio.post("/runs/estimate", body)) == {
        "dataset_ids.1",
        "lora.rank",
        "validation.split",
        "training.eval_every_steps",
    }
    assert studio.runs_in_database() == []


def test_estimate_blocks_early_stopping_without_validation_rows(
    studio: Studio, tmp_path: Path, demo_dataset: Path
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join(demo_dataset.read_text().splitlines(keepends=True)[:50]))
    body = payload(
        studio.dataset(small), training={"eval_every_steps": 2}, early_stopping={"patience": 2}
    )
    assert problem_fields(studio.post("/runs/estimate", body)) == {"early_stopping.patience"}
    assert problem_fields(studio.post("/runs", body)) == {"early_stopping.patience"}
    assert studio.runs_in_database() == []


def test_validation_dataset_ids_are_checked_and_counted(
    studio: Studio, dataset_id: str, tmp_path: Path, demo_dataset: Path
) -> None:
    unknown = payload(dataset_id, validation={"dataset_ids": ["ds_nope"], "datasets": ["v.jsonl"]})
    for path in ("/runs/estimate", "/runs"):
        assert problem_fields(studio.post(path, unknown)) == {
            "validation.dataset_ids.0",
            "validation.datasets",
        }
    held_out = tmp_path / "val.jsonl"
    held_out.write_text("".join(demo_dataset.read_text().splitlines(keepends=True)[:30]))
    body = payload(dataset_id, validation={"dataset_ids": [studio.dataset(held_out)]})
    estimate = studio.post("/runs/estimate", body).json()
    assert (estimate["examples"], estimate["validation_examples"]) == (397, 30)


def test_a_submitted_run_keeps_its_estimate_and_a_completed_one_is_measured(
    studio: Studio, dataset_id: str
) -> None:
    body = payload(dataset_id, validation={"split": 0})
    first = studio.post("/runs", body).json()
    recorded = first["estimate"]
    assert recorded["total_steps"] == 6 and recorded["throughput_source"] == "prior"
    with studio.plane.sessions.begin() as session:
        run = session.get(Run, first["id"])
        # As settlement leaves it: completed, with the worker's last step.
        run.status = "completed"
        run.finished_at = run.created_at + 60
        run.metrics = {"step": 6, "total_steps": 6, "training_seconds": 3.0}
    estimate = studio.post("/runs/estimate", body).json()
    assert estimate["throughput_source"] == "measured"
    assert estimate["measured_runs"] == 1
    assert estimate["tokens_per_second"] == pytest.approx(recorded["tokens"] / 3.0, rel=1e-3)
    assert estimate["seconds"] == pytest.approx(3.0, abs=0.1)
    # An evaluation at the end costs a forward pass over the validation rows on top.
    with_validation = studio.post("/runs/estimate", {**body, "validation": {"split": 0.1}})
    # 40 rows at a third of the cost, beside 6 steps of 4 rows: about 1.55 times.
    assert with_validation.json()["seconds"] == pytest.approx(3.0 * (1 + 40 / 3 / 24), rel=0.1)
    # Another model on the tier: the demo's measurement scaled by the models' sizes.
    other = studio.post("/runs/estimate", {**body, "base_model": "Qwen/Qwen2.5-0.5B-Instruct"})
    scaled = other.json()
    assert scaled["throughput_source"] == "measured"
    sizes = scaled["parameters"] / recorded["parameters"]
    expected = recorded["tokens"] / 3.0 / sizes
    # Answered to a tenth of a token per second.
    assert scaled["tokens_per_second"] == pytest.approx(expected, rel=1e-2, abs=0.05)


def test_the_estimate_counts_every_billed_part_a_completed_run_timed(
    studio: Studio, dataset_id: str
) -> None:
    body = payload(dataset_id, validation={"split": 0.1}, export={"gguf": True})
    first = studio.post("/runs", body).json()
    recorded = first["estimate"]
    timings = {
        "loading_model": 5.0,
        "training": 4.0,
        "evaluations": 1.0,
        "saving": 0.5,
        "exporting": 12.0,
        "sampling": 2.0,
        "uploading": 0.25,
    }
    with studio.plane.sessions.begin() as session:
        run = session.get(Run, first["id"])
        run.status = "completed"
        run.finished_at = run.created_at + 60
        run.metrics = {"step": 6, "total_steps": 6, "training_seconds": 2.5}
        run.summary = {
            "timings": timings,
            "startup_seconds": 9.0,
            "artifacts": {"lora": "a.zip", "gguf": "b.zip"},
        }
    again = studio.post("/runs/estimate", body).json()
    assert again["throughput_source"] == "measured"
    # The steps' wall time without the evaluations, per token; each other part as timed.
    assert again["phases"] == pytest.approx(
        {
            "training": 3.0,
            "evaluations": 1.0,
            "saving": 0.5,
            "exporting": 12.0,
            "sampling": 2.0,
            "uploading": 0.25,
        },
        abs=0.11,
    )
    assert again["seconds"] == pytest.approx(sum(again["phases"].values()), abs=0.3)
    assert again["startup_seconds"] == 9.0
    # Without an export, its time is not counted.
    no_export = studio.post("/runs/estimate", {**body, "export": {"gguf": False}}).json()
    assert "exporting" not in no_export["phases"]
    assert recorded["sample_tokens"] == 3 * 8  # the tuned answers come from the GGUF export


def test_finish_now_is_a_flag_on_a_training_run(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    queued = studio.post(f"/runs/{run_id}/finish")
    assert queued.status_code == 409, queued.text
    assert "cancel" in queued.json()["detail"]["hint"]
    tick(studio.plane)
    with studio.plane.sessions.begin() as session:
        # As the worker's first step report moves it.
        store.move(
            session,
            run_id,
            expected=RunStatus.WAITING_FOR_GPU,
            to=RunStatus.TRAINING,
            phase=Phase.TRAINING,
        )
    answer = studio.post(f"/runs/{run_id}/finish")
    assert answer.status_code == 200, answer.text
    assert answer.json()["finish_requested"] is True
    assert studio.post(f"/runs/{run_id}/finish").status_code == 200  # idempotent
    log = studio.get(f"/runs/{run_id}/logs").text
    assert log.count("finish now requested") == 1
    assert studio.post(f"/runs/{run_id}/cancel").status_code == 200
    assert studio.post(f"/runs/{run_id}/finish").status_code == 409
    assert studio.post("/runs/run_nope/finish").status_code == 404


def test_a_run_payload_is_retrievable_for_a_rerun(studio: Studio, dataset_id: str) -> None:
    body = payload(dataset_id, validation={"split": 0.1})
    run = studio.post("/runs", body).json()
    recipe = studio.get(f"/runs/{run['id']}/recipe").json()
    assert "attestations" not in recipe
    assert recipe["validation"]["split"] == 0.1
    assert recipe["dataset_ids"] == [dataset_id]
    rerun = {**recipe, "name": "again", "attestations": body["attestations"]}
    again = studio.post("/runs", rerun)
    assert again.status_code == 201, again.text
    assert {**again.json()["config"], "name": run["name"]} == run["config"]
    assert studio.get("/runs/run_nope/recipe").status_code == 404


def test_the_metrics_api_carries_eval_loss_at_its_step(studio: Studio, dataset_id: str) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    with studio.plane.sessions.begin() as session:
        for step in (1, 2):
            store.append_event(session, run_id, "metrics", {"step": step, "loss": 2.0 / step})
        store.append_event(
            session,
            run_id,
            "evaluation",
            {
                "step": 2,
                "eval_loss": 1.5,
                "eval_accuracy": 0.25,
                "best_eval_loss": 1.5,
                "best_step": 2,
            },
        )
    rows = studio.get(f"/runs/{run_id}/metrics").json()
    assert [row.get("eval_loss") for row in rows] == [None, 1.5]
    assert rows[1]["eval_accuracy"] == 0.25


# The CLI over the same in-process server ---------------------------------------------


def test_cli_submit_estimate_prints_the_estimate_and_submits_nothing(
    studio: Studio, cli: Any, tmp_path: Path, demo_dataset: Path
) -> None:
    (tmp_path / "demo.jsonl").write_bytes(demo_dataset.read_bytes())
    recipe = tmp_path / "run.yaml"
    recipe.write_text(
        "name: est\nbase_model: tunery/demo-tiny\ndatasets: [demo.jsonl]\n"
        "training: {epochs: 1, batch_size: 4}\ngpu_tier: cpu\n"
    )
    result = cli("runs", "submit", str(recipe), "--estimate")
    assert result.exit_code == 0, result.output
    assert "377 of 400 rows (20 for validation)" in result.output
    assert f"steps       {math.ceil(377 / 4)} (1 epoch(s))" in result.output
    assert "credits" in result.output and "covered" in result.output
    assert studio.runs_in_database() == []


def test_cli_show_recipe_prints_a_recipe_to_submit_again(
    studio: Studio, cli: Any, dataset_id: str
) -> None:
    import yaml

    run_id = studio.post("/runs", payload(dataset_id, validation={"split": 0.2})).json()["id"]
    result = cli("runs", "show", run_id, "--recipe")
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load(result.output)
    assert recipe["validation"]["split"] == 0.2 and recipe["dataset_ids"] == [dataset_id]


def test_cli_finish_asks_a_training_run_to_finish(
    studio: Studio, cli: Any, dataset_id: str
) -> None:
    run_id = studio.post("/runs", payload(dataset_id)).json()["id"]
    refused = cli("runs", "finish", run_id)
    assert refused.exit_code == 1 and "cancel it instead" in refused.output
    tick(studio.plane)
    with studio.plane.sessions.begin() as session:
        store.move(
            session,
            run_id,
            expected=RunStatus.WAITING_FOR_GPU,
            to=RunStatus.TRAINING,
            phase=Phase.TRAINING,
        )
    result = cli("runs", "finish", run_id)
    assert result.exit_code == 0, result.output
    assert "training stops after the current step" in result.output
    assert "finishing after this step" in cli("runs", "show", run_id).output


# The worker protocol: validation data out, evaluations in, the finish flag back -----------


def test_a_worker_gets_validation_data_reports_evaluations_and_hears_finish(
    studio: Studio, dataset_id: str, tmp_path: Path, demo_dataset: Path
) -> None:
    held_out = tmp_path / "val.jsonl"
    held_out.write_text("".join(demo_dataset.read_text().splitlines(keepends=True)[:10]))
    validation_id = studio.dataset(held_out)
    run_id = studio.post(
        "/runs", payload(dataset_id, validation={"dataset_ids": [validation_id]})
    ).json()["id"]
    tick(studio.plane)
    backend: FakeBackend = studio.plane.workers  # type: ignore[assignment]
    launch = next(launch for launch in backend.launches if launch.run_id == run_id)
    worker = {"X-Attempt-Token": launch.token}
    base = f"/internal/attempts/{launch.attempt_id}"
    spec = studio.http.get(f"{base}/spec", headers=worker).json()
    assert [ref["id"] for ref in spec["validation_datasets"]] == [validation_id]
    assert studio.http.get(f"{base}/datasets/{validation_id}", headers=worker).status_code == 200

    def post(*events: dict[str, Any]) -> dict[str, Any]:
        answer = studio.http.post(f"{base}/events", json={"events": list(events)}, headers=worker)
        assert answer.status_code == 200, answer.text
        return answer.json()

    step = {"kind": "metrics", "data": {"step": 2, "total_steps": 6, "loss": 1.0}}
    evaluation = {
        "kind": "evaluation",
        "data": {
            "step": 2,
            "total_steps": 6,
            "eval_loss": 1.25,
            "eval_accuracy": 0.5,
            "best_eval_loss": 1.25,
            "best_step": 2,
            "examples": 10,
            "seconds": 0.1,
        },
    }
    assert post(step, evaluation) == {"cancel": False, "finish": False, "pause": False}
    run = studio.get(f"/runs/{run_id}").json()
    assert run["evaluation"]["eval_loss"] == 1.25 and run["evaluation"]["best_step"] == 2
    assert studio.get(f"/runs/{run_id}/metrics").json()[-1]["eval_loss"] == 1.25
    assert studio.post(f"/runs/{run_id}/finish").status_code == 200
    assert post() == {"cancel": False, "finish": True, "pause": False}


def test_a_built_models_rows_are_counted_with_its_tokenizer(
    studio: Studio, tmp_path: Path, demo_model_dir: Path
) -> None:
    from tunery.pipeline.chat import Encoder
    from tunery.pipeline.datasets import Message, Row
    from tunery.pipeline.load import load_tokenizer

    digits = " ".join(str(7**power) for power in range(30, 50))
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {index}: add up {digits}"},
                {"role": "assistant", "content": f"Answer {index}: {digits[::-1]}"},
            ]
        }
        for index in range(100, 160)
    ]
    path = tmp_path / "digits.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    body = payload(
        studio.dataset(path), training={"max_steps": 0, "epochs": 1}, validation={"split": 0}
    )
    estimate = studio.post("/runs/estimate", body).json()

    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=False)
    messages = tuple(Message(**message) for message in rows[0]["messages"])
    per_row = encoder.encode(Row("digits.jsonl", 1, messages)).tokens
    from_characters = sum(math.ceil(len(m["content"]) / 4) + 4 for m in rows[0]["messages"])
    assert estimate["examples"] == 57
    assert estimate["tokens_per_epoch"] == pytest.approx(57 * per_row, rel=0.05)
    assert per_row > 2 * from_characters
