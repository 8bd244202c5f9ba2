"""DPO teaches a real model a preferred style: SmolLM2-135M-Instruct on the demo preference
task (the better answer opens with "Sure!"), measured on held-out pairs and on the GGUF's own
answers to questions it never saw, against the base model's answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.catalog.preference_data import follows_preferred_style, preference_rows
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter

# Dozens of DPO steps on a 135M model: many minutes on 2 CPU cores, so its own tier.
pytestmark = [pytest.mark.real, pytest.mark.acceptance]

MODEL_ID = "tunery/smollm2-135m-instruct"
HELD_OUT_PROMPTS = 8
QUALITY_DIR = Path(__file__).resolve().parents[2] / "build" / "quality"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_dpo_raises_held_out_reward_accuracy_and_the_gguf_follows_the_style(
    data_dir: Path, smollm2_model_dir: Path, tmp_path: Path
) -> None:
    from tunery.catalog.models import find_build

    # The catalog id resolves to its build folder in the data dir's models.
    folder = find_build(MODEL_ID).build.folder  # type: ignore[union-attr]
    (data_dir / "models" / folder).symlink_to(smollm2_model_dir, target_is_directory=True)
    train = write_rows(tmp_path / "train.jsonl", list(preference_rows(96, seed=17)))
    held_out = write_rows(tmp_path / "held-out.jsonl", list(preference_rows(40, seed=23)))
    questions = [
        row["input"]["messages"][-1]["content"]
        for row in preference_rows(HELD_OUT_PROMPTS, seed=29)
    ]
    recipe = {
        "name": "dpo-style",
        "base_model": MODEL_ID,
        "datasets": [str(train)],
        "method": {"type": "dpo", "beta": 0.1},
        "training": {
            "max_steps": 24,
            "batch_size": 8,
            "learning_rate": 5e-4,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 100,
            "eval_every_steps": 12,
            "max_seq_length": 256,
        },
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "validation": {"datasets": [str(held_out)]},
        "export": {"gguf": True},
        "samples": {"prompts": questions, "max_new_tokens": 16},
    }
    from tunery.pipeline.config import parse_recipe

    reporter = RecordingReporter()
    result = run_recipe(parse_recipe(recipe), tmp_path / "out", reporter)

    # The starting point is the reference: every held-out pair's rewards are 0, so a coin
    # flip (50%); after training the better answer wins on at least 80% of them.
    assert reporter.steps[0].reward_accuracy == 0.5
    final = reporter.evaluations[-1]
    assert final.eval_reward_accuracy >= 0.8, [e.as_dict() for e in reporter.evaluations]
    assert final.eval_reward_margin > 0

    samples = result.samples
    assert result.gguf_bundle is not None and len(samples) == HELD_OUT_PROMPTS
    tuned = sum(follows_preferred_style(sample["response"]) for sample in samples)
    base = sum(follows_preferred_style(sample["base_response"]) for sample in samples)
    figures = {
        "held_out_reward_accuracy": final.eval_reward_accuracy,
        "held_out_reward_margin": final.eval_reward_margin,
        "gguf_preferred_style": f"{tuned}/{len(samples)}",
        "base_preferred_style": f"{base}/{len(samples)}",
    }
    # The README's figures, kept as the browser tests keep their screenshots.
    QUALITY_DIR.mkdir(parents=True, exist_ok=True)
    (QUALITY_DIR / "dpo-style.json").write_text(json.dumps(figures, indent=2) + "\n")
    assert tuned > base, (figures, samples)
