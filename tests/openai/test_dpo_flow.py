"""SFT, then DPO on the fine-tuned model, with nothing but the OpenAI SDK."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import pytest
from control_harness import wait_until

import openai

pytestmark = pytest.mark.slow


def follow(client: openai.OpenAI, job_id: str) -> Any:
    def done() -> Any:
        current = client.fine_tuning.jobs.retrieve(job_id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout=400, interval=1, what=f"job {job_id} to finish")


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=api_server.token, max_retries=0)


@pytest.fixture(scope="module")
def jobs(client, quick, demo_dataset: Path, tmp_path_factory) -> dict[str, Any]:
    from tunery.catalog.preference_data import write_preference_dataset

    sft = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny",
        training_file=client.files.create(file=demo_dataset.open("rb"), purpose="fine-tune").id,
        suffix="sft-first",
        extra_body={"tunery": quick},
    )
    sft = follow(client, sft.id)
    assert sft.status == "succeeded", sft.error
    pairs = write_preference_dataset(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", count=40)
    preference = client.files.create(file=pairs.open("rb"), purpose="fine-tune")
    validation = client.files.create(file=pairs.open("rb"), purpose="fine-tune")
    dpo = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=preference.id,
        validation_file=validation.id,
        suffix="then-dpo",
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4, "n_epochs": "auto"}},
        },
        # The LoRA shape comes from the fine-tuned model: the tunery object leaves lora out.
        extra_body={"tunery": {key: value for key, value in quick.items() if key != "lora"}},
    )
    return {"sft": sft, "created": dpo, "dpo": follow(client, dpo.id)}


def test_dpo_on_a_fine_tuned_model_starts_from_its_adapter(api_server, jobs):
    sft, created, dpo = jobs["sft"], jobs["created"], jobs["dpo"]
    assert dpo.status == "succeeded", dpo.error
    assert created.method.type == dpo.method.type == "dpo"
    assert dpo.method.dpo.hyperparameters.beta == 0.2
    assert dpo.method.dpo.hyperparameters.batch_size == 4
    assert dpo.method.supervised is None
    assert dpo.model == sft.id  # the fine-tuned model it continues
    assert dpo.fine_tuned_model.endswith(f":then-dpo:{dpo.id}")
    run = httpx_get(api_server, f"/api/v1/runs/{dpo.id}")
    assert run["config"]["init_from"] == sft.id
    assert run["config"]["lora"]["rank"] == 4  # the SFT adapter's shape
    logs = httpx_get(api_server, f"/api/v1/runs/{dpo.id}/logs", text=True)
    assert f"the adapter starts from {sft.id}" in logs
    assert "reference log-probabilities of" in logs


def test_events_and_results_carry_the_rewards(client, jobs):
    dpo = jobs["dpo"]
    events = client.fine_tuning.jobs.list_events(dpo.id, limit=100).data
    steps = [
        event
        for event in events
        if event.type == "metrics" and event.data and "train_loss" in event.data
    ]
    first = min(steps, key=lambda event: event.data["step"])
    # The reference is the SFT adapter, where DPO starts: loss log 2, every reward 0.
    assert first.data["train_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first.data["train_reward_margin"] == 0.0
    assert first.data["train_reward_accuracy"] == 0.5
    assert "reward margin=" in first.message and "reward accuracy=" in first.message
    evaluations = [e for e in events if e.data and "valid_reward_accuracy" in e.data]
    assert evaluations and "valid_loss" in evaluations[0].data

    content = client.files.content(dpo.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(content)))
    assert {"train_reward_margin", "train_reward_accuracy", "valid_reward_accuracy"} <= set(rows[0])
    assert float(rows[0]["train_reward_accuracy"]) == 0.5
    assert rows[-1]["valid_reward_margin"] != ""


def test_a_fine_tuned_model_with_another_lora_shape_names_it(api_server, client, jobs):
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model=jobs["sft"].fine_tuned_model,
            training_file=jobs["dpo"].training_file,
            method={"type": "dpo"},
            extra_body={"tunery": {"lora": {"rank": 8}}},
        )
    assert caught.value.param == "tunery.lora.rank"
    assert "the adapter of" in caught.value.message


def httpx_get(server, path: str, *, text: bool = False) -> Any:
    import httpx

    response = httpx.get(
        f"{server.url}{path}", headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    )
    response.raise_for_status()
    return response.text if text else response.json()
