"""Data-parallel training of SmolLM2-135M-Instruct on CPU processes (gloo): two processes of
batch b train exactly as one process of batch 2b, loss and adapter, step by step."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunery.pipeline.ranks import run_recipe_on_ranks
from tunery.pipeline.reporting import RecordingReporter

pytestmark = pytest.mark.real

STEPS = 10


def test_two_processes_train_smollm2_as_one_process_with_twice_the_batch(
    real_data_dir, real_recipe, tmp_path, one_thread
):
    def recipe(batch_size: int):
        return real_recipe(
            training={
                "max_steps": STEPS,
                "batch_size": batch_size,
                "checkpoint_every_steps": STEPS,
                "mixed_precision": "no",
            },
            samples={"max_new_tokens": 4},
        )

    shared, alone = RecordingReporter(), RecordingReporter()
    result = run_recipe_on_ranks(recipe(2), tmp_path / "two", shared, processes=2, threads=2)
    run_recipe_on_ranks(recipe(4), tmp_path / "one", alone, processes=1)

    assert [step.step for step in shared.steps] == list(range(1, STEPS + 1))
    for two, one in zip(shared.steps, alone.steps, strict=True):
        assert two.trained_tokens == one.trained_tokens
        assert two.loss == pytest.approx(one.loss, rel=1e-5)
    # The loss moved: the comparison is of training, not of ten untouched steps.
    assert alone.steps[-1].loss < alone.steps[0].loss

    two_adapter = load_file(result.out_dir / "adapter" / "adapter_model.safetensors")
    one_adapter = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    assert two_adapter.keys() == one_adapter.keys()
    difference = torch.cat([(two_adapter[k] - one_adapter[k]).reshape(-1) for k in one_adapter])
    size = torch.cat([one_adapter[k].reshape(-1) for k in one_adapter])
    assert float(difference.norm() / size.norm()) < 1e-4
    batch = json.loads((result.out_dir / "run.json").read_text())["batch"]
    assert (batch["per_device"], batch["devices"], batch["effective"]) == (2, 2, 4)
