"""The divergence guard: a loss that blows up fails the run as ``diverged``, keeping the
adapter of the best step before it; a spike that recovers does not."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from tunery.pipeline.divergence import (
    DivergenceGuard,
    TrainingDiverged,
    sustained_steps,
    unusual_settings,
)
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter


def tiny_lora() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"])
    )


def feed(guard: DivergenceGuard, model: torch.nn.Module, losses: list[float]) -> None:
    """Observe ``losses`` as the next steps, as the training loop does."""
    for loss in losses:
        step = len(guard.history) + 1
        guard.observe(step, loss, model, done_steps=step - 1)
        guard.history.append({"step": step, "loss": loss})


def test_a_sustained_rise_fails_with_the_best_step_kept() -> None:
    model = tiny_lora()
    guard = DivergenceGuard.watching(200, [])
    healthy = [3.0, 2.8, 2.5, 2.2, 2.0, 1.9]
    feed(guard, model, healthy)
    assert guard.kept_step == 5  # the weights after 5 steps scored the lowest smoothed loss
    kept = {name: tensor.clone() for name, tensor in guard.kept_weights.items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # what the rise does to the weights: they are not kept
    with pytest.raises(TrainingDiverged) as caught:
        feed(guard, model, [9.0] * 30)
    diverged = caught.value
    assert diverged.code == "diverged" and not diverged.transient
    # Twice the first loss (6.0) is the limit; the smoothed loss crosses it at step 10 and
    # stays above it for the sustained stretch.
    assert diverged.step == 10 + sustained_steps(200) - 1
    assert "rose from 3.0000" in diverged.message and "above 6.0000" in diverged.message
    assert diverged.kept_step == 5
    assert all(torch.equal(kept[name], diverged.kept_weights[name]) for name in kept)
    assert [row["step"] for row in diverged.history] == list(range(1, diverged.step))


def test_a_loss_that_only_rises_still_keeps_the_first_trained_adapter() -> None:
    model = tiny_lora()
    guard = DivergenceGuard.watching(100, [])
    with pytest.raises(TrainingDiverged) as caught:
        feed(guard, model, [2.0 + step for step in range(40)])
    # Step 1 scored the untouched adapter (the base model); step 2 the first trained one.
    assert caught.value.kept_step == 1 and caught.value.kept_weights is not None


def test_a_spike_that_recovers_and_a_noisy_plateau_do_not_stop_a_run() -> None:
    model = tiny_lora()
    guard = DivergenceGuard.watching(1000, [])
    losses = [2.0, 1.8, 1.7] + [9.0] * 3 + [1.6] * 20 + [2.1, 3.4, 2.6, 3.9] * 20
    feed(guard, model, losses)  # never raises


def test_a_non_finite_loss_fails_at_once_and_a_resumed_guard_keeps_its_start() -> None:
    model = tiny_lora()
    guard = DivergenceGuard.watching(100, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}])
    assert guard.start == 1.0 and guard.kept_step is None  # copies do not survive a resume
    with pytest.raises(TrainingDiverged) as caught:
        guard.observe(3, float("nan"), model, done_steps=2)
    assert "became nan at step 3" in caught.value.message
    assert caught.value.kept_weights is None


def test_unusual_settings_are_named_with_their_usual_range(make_recipe) -> None:
    found = unusual_settings(
        make_recipe(
            training={"learning_rate": 1.0, "batch_size": 4096}, lora={"rank": 1024, "alpha": 4096}
        ),
        trainable_share=0.84,
        training_examples=377,
    )
    said = {problem.field: problem.message for problem in found}
    assert said["training.learning_rate"].startswith("1 is above 0.01 (LoRA usually trains at")
    assert said["lora.rank"].startswith("1024 makes the adapter 84% of the model")
    assert said["training.batch_size"].startswith("4096 examples per optimizer step is more than")
    assert "lora.alpha" not in said  # four times the rank: high-ish, not far out
    usual = unusual_settings(make_recipe(), trainable_share=0.004, training_examples=377)
    assert usual == []


@pytest.mark.slow
def test_a_run_built_to_diverge_fails_and_delivers_the_kept_adapter(
    data_dir, make_recipe, tmp_path
) -> None:
    # Learning rate 1 from the first step on a rank that makes the adapter over half the
    # demo model: the loss triples at step 2 and stays there. (After a warm-up the loss
    # hovered near twice its start on some CPUs, where the guard rightly waits.)
    recipe = make_recipe(
        training={
            "max_steps": 60,
            "learning_rate": 1.0,
            "lr_scheduler": "constant",
        },
        lora={"rank": 256, "alpha": 512},
        export={"gguf": True},
    )
    reporter = RecordingReporter()
    result = run_recipe(recipe, tmp_path / "out", reporter)
    summary = result.summary
    assert summary["status"] == "failed"
    error = summary["error"]
    assert error["code"] == "diverged"
    assert "training diverged: the loss rose from" in error["message"]
    assert "training.learning_rate: 1 is above 0.01" in error["hint"]
    assert "lora.rank: 256 makes the adapter" in error["hint"]
    # It stopped long before its budget, kept an adapter from before the rise, and
    # delivers it as a LoRA bundle (no GGUF is exported for a diverged run).
    trained = summary["metrics"]["step"]
    assert trained < 40
    kept = summary["kept"]
    assert 1 <= kept["step"] < trained
    assert result.lora_bundle.is_file() and result.gguf_bundle is None
    assert "exporting" not in reporter.phases
    with zipfile.ZipFile(result.lora_bundle) as bundle:
        assert any(name.endswith("adapter_model.safetensors") for name in bundle.namelist())
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    on_disk = json.loads((tmp_path / "out" / "run.json").read_text())
    assert on_disk["error"]["code"] == "diverged" and on_disk["kept"] == kept
    assert any(f"kept the adapter of step {kept['step']}" in line for line in reporter.logs)
