"""Evaluations, early stopping, Finish now and base answers through ``run_recipe``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from tunery.errors import RunCancelled
from tunery.pipeline.config import parse_recipe
from tunery.pipeline.data import prepare_data
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.outcome import RunResult
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter

CPU = torch.device("cpu")


def direct_eval_loss(demo_model_dir: Path, adapter_dir: Path, examples) -> float:
    """Cross-entropy per trained token of ``examples``, one plain forward each."""
    base = load_model(demo_model_dir, Precision(torch.float32, None), CPU)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for example in examples:
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            targets = torch.tensor(example.targets)
            trained = targets != -100
            loss_sum += torch.nn.functional.cross_entropy(
                logits[trained], targets[trained], reduction="sum"
            ).item()
            tokens += int(trained.sum())
    return loss_sum / tokens


def test_eval_rows_come_at_the_right_steps_and_equal_a_direct_computation(
    data_dir, demo_model_dir, demo_dataset, make_recipe, tmp_path
):
    recipe = make_recipe(training={"max_steps": 5, "eval_every_steps": 2, "batch_size": 4})
    reporter = RecordingReporter()
    result = run_recipe(recipe, tmp_path / "out", reporter)
    assert [evaluation.step for evaluation in reporter.evaluations] == [2, 4, 5]
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows if "eval_loss" in row] == [2, 4, 5]
    last = reporter.evaluations[-1]
    assert rows[-1]["eval_loss"] == last.eval_loss
    summary = result.summary["evaluation"]
    assert (summary["eval_loss"], summary["step"], summary["stopped_early"]) == (
        last.eval_loss,
        5,
        False,
    )
    assert result.summary["data"]["validation_examples"] == 20
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    held_out = prepare_data(
        [demo_dataset],
        tokenizer,
        chat_format,
        max_length=1024,
        seed=recipe.training.seed,
        validation=recipe.validation,
    ).validation
    direct = direct_eval_loss(demo_model_dir, result.adapter_dir, held_out)
    assert direct == pytest.approx(last.eval_loss, rel=1e-4)
    card = (result.adapter_dir / "README.md").read_text()
    assert f"Final eval loss: {last.eval_loss:.4f}" in card


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, demo_dataset):
    """A recipe built to overfit: one row repeated to train on, twenty others to validate."""
    root = tmp_path_factory.mktemp("overfit")
    rows = demo_dataset.read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join([rows[0]] * 16) + "\n")
    (root / "val.jsonl").write_text("\n".join(rows[1:21]) + "\n")
    payload = {
        "name": "overfit",
        "base_model": "tunery/demo-tiny",
        "datasets": [str(root / "train.jsonl")],
        "training": {
            "max_steps": 30,
            "learning_rate": 1e-2,
            "batch_size": 2,
            "gradient_checkpointing": False,
            "warmup_ratio": 0.0,
            "eval_every_steps": 2,
            "checkpoint_every_steps": 5,
        },
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 4, "prompts": ["hi"]},
        "validation": {"datasets": [str(root / "val.jsonl")]},
        "early_stopping": {"patience": 3},
    }
    return parse_recipe(payload), root


@pytest.fixture(scope="module")
def uninterrupted(overfit, tmp_path_factory, demo_model_dir) -> tuple[RunResult, RecordingReporter]:
    recipe, _ = overfit
    reporter = RecordingReporter()
    return run_recipe(recipe, tmp_path_factory.mktemp("whole") / "out", reporter), reporter


def test_early_stopping_ends_with_the_best_adapter(
    data_dir, demo_model_dir, overfit, uninterrupted
):
    recipe, root = overfit
    result, reporter = uninterrupted
    evaluation = result.summary["evaluation"]
    assert evaluation["stopped_early"] is True
    assert len(reporter.steps) == evaluation["stopped_at_step"] < recipe.training.max_steps
    assert evaluation["best_step"] < evaluation["stopped_at_step"]
    assert evaluation["best_eval_loss"] < evaluation["eval_loss"]
    # Only the steps trained were timed (and are billed): fewer than the budget's.
    assert result.final_metrics["step"] == evaluation["stopped_at_step"]
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    held_out = prepare_data(
        [root / "train.jsonl"],
        tokenizer,
        chat_format,
        max_length=1024,
        seed=recipe.training.seed,
        custom_prompts=["hi"],
        validation=recipe.validation,
        validation_paths=[root / "val.jsonl"],
    ).validation
    kept = direct_eval_loss(demo_model_dir, result.adapter_dir, held_out)
    assert kept == pytest.approx(evaluation["best_eval_loss"], rel=1e-4)
    assert "Stopped early at step" in (result.adapter_dir / "README.md").read_text()
    assert not (result.out_dir / "checkpoints").exists() or not any(
        (result.out_dir / "checkpoints").iterdir()
    )


def test_a_resumed_run_keeps_the_early_stopping_state(data_dir, overfit, uninterrupted, tmp_path):
    recipe, _ = overfit
    whole, _ = uninterrupted
    out = tmp_path / "out"
    # Cancelled after step 6: the checkpoint of step 5 holds the evaluations of 2 and 4.
    with pytest.raises(RunCancelled):
        run_recipe(recipe, out, RecordingReporter(stop_after_step=6))
    reporter = RecordingReporter()
    resumed = run_recipe(recipe, out, reporter)
    assert "resumed from the checkpoint at step 5" in reporter.logs
    assert reporter.evaluations[0].step == 6
    assert resumed.summary["evaluation"] == whole.summary["evaluation"]


def test_finish_now_saves_what_was_learned_and_base_answers_are_cached(
    data_dir, make_recipe, tmp_path
):
    recipe = make_recipe(training={"max_steps": 20, "batch_size": 2})
    cache = tmp_path / "cache"
    reporter = RecordingReporter(finish_after_step=2)
    result = run_recipe(recipe, tmp_path / "first", reporter, base_cache_dir=cache)
    assert len(reporter.steps) == 2 and result.completed
    # The demo holds out a default split: the run is evaluated where it finished.
    assert [evaluation.step for evaluation in reporter.evaluations] == [2]
    assert result.summary["evaluation"]["finished_early"] is True
    assert result.lora_bundle.is_file()
    assert len(result.samples) == 3
    assert all("base_response" in sample for sample in result.samples)
    assert "base model answers generated" in reporter.logs
    again = RecordingReporter(finish_after_step=1)
    second = run_recipe(recipe, tmp_path / "second", again, base_cache_dir=cache)
    assert "base model answers from the cache" in again.logs
    assert [s["base_response"] for s in second.samples] == [
        s["base_response"] for s in result.samples
    ]
