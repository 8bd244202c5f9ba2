"""Preference tuning at the one submission intake, in process on the in-memory backend: the
datasets' kinds, the method they train, the run ``init_from`` starts from, the estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from control_harness import add_account_in, payload
from plane_studio import Studio

from tunery.db import HubEntry, Run, now
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.runs import store
from tunery.scheduler.scheduler import tick


@pytest.fixture(scope="module")
def preferences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunery.catalog.preference_data import write_preference_dataset

    return write_preference_dataset(tmp_path_factory.mktemp("data") / "prefs.jsonl", count=60)


def problems(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {p["field"]: p["message"] for p in response.json()["detail"]["problems"]}


def dpo(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    return payload(dataset_id, method={"type": "dpo", "beta": 0.2}, **overrides)


def test_a_dataset_kind_is_recorded_and_shown(
    studio: Studio, preferences: Path, demo_dataset: Path
) -> None:
    pairs, chat = studio.dataset(preferences), studio.dataset(demo_dataset)
    listed = {d["id"]: (d["format"], d["kind"]) for d in studio.get("/datasets").json()}
    assert listed[pairs] == ("preference", "preference")
    assert listed[chat] == ("messages", "sft")


def test_a_dataset_of_the_other_kind_is_refused_with_its_field(
    studio: Studio, preferences: Path, demo_dataset: Path
) -> None:
    pairs, chat = studio.dataset(preferences), studio.dataset(demo_dataset)
    for path in ("/runs", "/runs/estimate"):
        found = problems(studio.post(path, payload(pairs)))
        assert found == {
            "dataset_ids.0": f"{pairs} holds preference pairs (preference format); method.type "
            "sft trains on chat rows"
        }
        found = problems(studio.post(path, dpo(chat, validation={"dataset_ids": [chat]})))
        assert set(found) == {"dataset_ids.0", "validation.dataset_ids.0"}
        assert (
            "holds chat rows (messages format); method.type dpo trains on preference"
            in (found["dataset_ids.0"])
        )
    # A broken method is named; its datasets are not checked against it.
    found = problems(studio.post("/runs", payload(pairs, method={"type": "sft", "beta": 0.1})))
    assert found == {"method.beta": "applies to method.type dpo only; remove it"}
    found = problems(studio.post("/runs", payload(pairs, method={"type": "ppo"})))
    assert list(found) == ["method.type"]
    assert studio.runs_in_database() == []


def test_a_dpo_estimate_counts_both_answers_and_the_reference_pass(
    studio: Studio, preferences: Path, tmp_path: Path
) -> None:
    import json

    # The same conversations as chat rows with the better answer only.
    chosen = tmp_path / "chosen.jsonl"
    with chosen.open("w") as file:
        for line in preferences.read_text().splitlines():
            row = json.loads(line)
            messages = [*row["input"]["messages"], *row["preferred_output"]]
            file.write(json.dumps({"messages": messages}) + "\n")
    common = {"training": {"max_steps": 0, "epochs": 1}, "validation": {"split": 0.1}}
    sft = studio.post("/runs/estimate", payload(studio.dataset(chosen), **common)).json()
    preference = studio.post("/runs/estimate", dpo(studio.dataset(preferences), **common)).json()

    assert (preference["rows"], preference["examples"]) == (sft["rows"], sft["examples"])
    assert preference["total_steps"] == sft["total_steps"]
    # Two sequences per pair, each with the prompt: more than 1.8 times the chosen tokens.
    assert preference["tokens_per_epoch"] > 1.8 * sft["tokens_per_epoch"]
    assert any("reference pass" in note for note in preference["notes"])
    # The reference pass costs forward passes over every pair on top of the training.
    training_share = preference["tokens"] / preference["tokens_per_second"]
    assert preference["seconds"] > training_share * 1.1


def complete_with_adapter(studio: Studio, run_id: str, *, with_entry: bool = True) -> None:
    """Move a submitted run to completed, as its worker would, with its LoRA in the Hub."""
    tick(studio.plane)
    with studio.plane.sessions.begin() as session:
        store.move(
            session,
            run_id,
            expected=RunStatus.WAITING_FOR_GPU,
            to=RunStatus.TRAINING,
            phase=Phase.TRAINING,
        )
        store.move(
            session,
            run_id,
            expected=RunStatus.TRAINING,
            to=RunStatus.COMPLETED,
            phase=Phase.DONE,
            finished_at=now(),
        )
        if with_entry:
            run = session.get(Run, run_id)
            session.add(
                HubEntry(
                    id=f"hub_{run_id}",
                    account_id=run.account_id,
                    run_id=run_id,
                    name=run.name,
                    base_model=run.config["base_model"],
                    artifacts={"lora": {"filename": "x-lora.zip", "size": 1, "sha256": "0" * 64}},
                    created_at=now(),
                )
            )


def test_init_from_names_a_completed_run_of_the_same_shape(
    studio: Studio, preferences: Path, demo_dataset: Path
) -> None:
    chat, pairs = studio.dataset(demo_dataset), studio.dataset(preferences)
    sft = studio.post("/runs", payload(chat, name="sft")).json()["id"]
    assert problems(studio.post("/runs", dpo(pairs, init_from=sft))) == {
        "init_from": f"{sft} is queued; start from a completed run"
    }
    complete_with_adapter(studio, sft)
    for value, message in (
        (
            "./runs/sft",
            "name one of your completed runs by its id (run_...); the server takes no paths",
        ),
        ("/etc", "name one of your completed runs by its id (run_...); the server takes no paths"),
        ("run_0000000000000000", "unknown run 'run_0000000000000000'"),
    ):
        assert problems(studio.post("/runs", dpo(pairs, init_from=value))) == {"init_from": message}
    shape = problems(
        studio.post(
            "/runs",
            dpo(
                pairs,
                init_from=sft,
                lora={"rank": 8, "alpha": 8},
                base_model="Qwen/Qwen2.5-0.5B-Instruct",
            ),
        )
    )
    assert set(shape) == {"base_model", "lora.rank"}
    assert shape["lora.rank"].startswith(f"is 8; the adapter of {sft} has 4")
    assert f"{sft} was trained on 'tunery/demo-tiny'" in shape["base_model"]
    started = studio.post("/runs", dpo(pairs, name="dpo", init_from=sft))
    assert started.status_code == 201, started.text
    assert started.json()["config"]["init_from"] == sft

    # The adapter cannot be deleted while a run starts from it.
    refused = studio.http.delete(f"/api/v1/hub/hub_{sft}", headers=studio.auth)
    assert refused.status_code == 409, refused.text
    assert started.json()["id"] in refused.json()["detail"]["message"]
    assert studio.post(f"/runs/{started.json()['id']}/cancel").status_code == 200
    deleted = studio.http.delete(f"/api/v1/hub/hub_{sft}", headers=studio.auth)
    assert deleted.status_code == 204, deleted.text
    assert problems(studio.post("/runs", dpo(pairs, init_from=sft))) == {
        "init_from": f"{sft}'s adapter is gone (its Hub entry was deleted)"
    }


def test_another_accounts_run_is_unknown(
    studio: Studio, preferences: Path, demo_dataset: Path
) -> None:
    sft = studio.post("/runs", payload(studio.dataset(demo_dataset), name="sft")).json()["id"]
    complete_with_adapter(studio, sft)
    other = add_account_in(studio)
    pairs = other.dataset(preferences)
    assert problems(other.post("/runs", dpo(pairs, init_from=sft))) == {
        "init_from": f"unknown run {sft!r}"
    }
