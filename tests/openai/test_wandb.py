"""W&B through the real SDK: a job with a ``wandb`` integration logs its metrics, checked in
the files an offline W&B run writes (``WANDB_MODE=offline`` for the server, which its
workers inherit)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_harness import Server, prepare_root, running_server, server_env, wait_until

import openai

pytestmark = pytest.mark.slow
pytest.importorskip(
    "wandb", reason="W&B logging needs the wandb package: pip install 'tunery[wandb]'"
)
STEPS = 4


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a ``.wandb`` file: a LevelDB-style log of protobuf ``Record``s after a
    7-byte header, in 32 KiB blocks, each piece with a 7-byte header (CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pieces = path.read_bytes(), 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""
        elif kind == 0:
            pieces = b""


@pytest.fixture(scope="module")
def wandb_server(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("wandb-files")
    root = prepare_root(
        tmp_path_factory.mktemp("wandb") / "data", demo_model_dir, wandb={"dir": str(folder)}
    )
    env = {**server_env(root), "WANDB_MODE": "offline"}
    with running_server(root, env) as server:
        yield server, folder


def test_a_job_with_a_wandb_integration_logs_its_metrics(
    wandb_server, quick, demo_dataset: Path, validation_rows: Path
) -> None:
    server, folder = wandb_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
    training = client.files.create(file=demo_dataset.open("rb"), purpose="fine-tune")
    validation = client.files.create(file=validation_rows.open("rb"), purpose="fine-tune")
    integration = {
        "type": "wandb",
        "wandb": {"project": "support-bot", "name": "first try", "tags": ["demo"]},
    }
    job = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny",
        training_file=training.id,
        validation_file=validation.id,
        integrations=[integration],
        extra_body={"tunery": {**quick, "training": {**quick["training"], "max_steps": STEPS}}},
    )
    assert [(item.type, item.wandb.project) for item in job.integrations] == [
        ("wandb", "support-bot")
    ]
    final = wait_until(
        lambda: (
            (now := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and now
        ),
        timeout=600,
        what="the job",
    )
    assert final.status == "succeeded", final.error
    [log] = folder.glob(f"wandb/offline-run-*-{job.id}/run-{job.id}.wandb")
    records = list(wandb_records(log))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert (run.run_id, run.project, run.display_name) == (job.id, "support-bot", "first try")
    assert {"demo", "tunery/finetune", "tunery/tunery/demo-tiny"} <= set(run.tags)
    history = wandb_history(log)
    assert sorted(history) == list(range(1, STEPS + 1))
    assert all(
        row["train/loss"] > 0 and 0 <= row["train/mean_token_accuracy"] <= 1
        for row in history.values()
    )
    assert not [key for row in history.values() for key in row if "/rewards/" in key]
    # Evaluated at every checkpoint (2 steps) on the validation file.
    assert [step for step, row in sorted(history.items()) if "valid/loss" in row] == [2, 4]
    steps = client.fine_tuning.jobs.list_events(job.id, limit=100)
    assert any("logging to W&B: project support-bot" in event.message for event in steps)


def wandb_history(log: Path) -> dict[int, dict[str, Any]]:
    """Each step's logged numbers in the ``.wandb`` file ``log``."""
    history: dict[int, dict[str, Any]] = {}
    for record in wandb_records(log):
        if record.WhichOneof("record_type") == "history":
            items = {
                (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                for item in record.history.item
            }
            history.setdefault(items["_step"], {}).update(items)
    return history


def test_a_dpo_run_logs_its_rewards_under_the_names_trl_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    from tunery.pipeline.reporting import EvalMetrics, RecordingReporter, StepMetrics
    from tunery.pipeline.wandb_log import WandbReporter

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="prefs", id="run_dpo", dir=str(tmp_path))
    inner = RecordingReporter()
    reporter = WandbReporter(inner, run)
    step = StepMetrics(
        step=1,
        total_steps=1,
        epoch=1.0,
        epochs=1,
        loss=0.61,
        learning_rate=1e-4,
        grad_norm=0.5,
        tokens_per_second=100.0,
        trained_tokens=64,
        training_seconds=0.6,
        eta_seconds=0.0,
        rewards_chosen=0.25,
        rewards_rejected=-0.5,
        reward_margin=0.75,
        reward_accuracy=1.0,
    )
    evaluation = EvalMetrics(
        step=1,
        total_steps=1,
        eval_loss=0.64,
        eval_accuracy=None,
        best_eval_loss=0.64,
        best_step=1,
        examples=4,
        seconds=0.1,
        eval_rewards_chosen=0.125,
        eval_rewards_rejected=-0.25,
        eval_reward_margin=0.375,
        eval_reward_accuracy=0.75,
    )
    reporter.metrics(step)
    reporter.eval_metrics(evaluation)
    reporter.close()

    assert (inner.steps, inner.evaluations) == ([step], [evaluation])
    [log] = tmp_path.glob("wandb/offline-run-*-run_dpo/run-run_dpo.wandb")
    logged = wandb_history(log)[1]
    assert {key: value for key, value in logged.items() if "/rewards/" in key} == {
        "train/rewards/chosen": 0.25,
        "train/rewards/rejected": -0.5,
        "train/rewards/margins": 0.75,
        "train/rewards/accuracies": 1.0,
        "valid/rewards/chosen": 0.125,
        "valid/rewards/rejected": -0.25,
        "valid/rewards/margins": 0.375,
        "valid/rewards/accuracies": 0.75,
    }
    assert logged["valid/loss"] == 0.64 and "valid/mean_token_accuracy" not in logged
