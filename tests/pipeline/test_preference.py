"""Preference tuning (DPO) on the demo model: the loss against a direct reference, the
reference pass, resume, starting from an earlier run's adapter, and refused inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunery.errors import ConfigError, DatasetError, RunCancelled
from tunery.pipeline.attention import attention_in_use
from tunery.pipeline.chat import IGNORE, PairExample
from tunery.pipeline.checkpoints import complete_checkpoints
from tunery.pipeline.config import LoraSettings, TrainingConfig
from tunery.pipeline.kernels import Kernels
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.preference import (
    PreferenceObjective,
    ReferenceLogprobs,
    accumulate_preferences,
)
from tunery.pipeline.preference_data import prepare_preference_data
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter
from tunery.pipeline.train_setup import TrainSetup

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)
BETA = 0.3


@pytest.fixture(scope="module")
def preferences(tmp_path_factory):
    from tunery.catalog.preference_data import write_preference_dataset

    return write_preference_dataset(tmp_path_factory.mktemp("data") / "prefs.jsonl", count=60)


@pytest.fixture(scope="module")
def pairs(demo_model_dir, preferences):
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_preference_data([preferences], tokenizer, chat_format, max_length=256, seed=1)
    return tokenizer.pad_token_id, data.examples[:6]


def adapted_model(model_dir):
    torch.manual_seed(0)
    model, _ = attach_lora(
        load_model(model_dir, FP32, CPU),
        LoraSettings(rank=8, alpha=16, dropout=0.0),
        gradient_checkpointing=False,
    )
    with torch.no_grad():  # B starts at zero: make the policy differ from the reference
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model


def direct_logprob(model, example) -> torch.Tensor:
    """The answer's summed log-probability from one unpacked forward pass, full logits."""
    ids = torch.tensor([example.input_ids])
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    targets = torch.tensor(example.targets)
    trained = targets != IGNORE
    picked = logits.log_softmax(-1)[trained].gather(1, targets[trained].unsqueeze(1))
    return picked.sum()


def direct_dpo_loss(model, pairs, reference) -> torch.Tensor:
    losses = []
    for pair, (ref_chosen, ref_rejected) in zip(pairs, reference.tolist(), strict=True):
        chosen = BETA * (direct_logprob(model, pair.chosen) - ref_chosen)
        rejected = BETA * (direct_logprob(model, pair.rejected) - ref_rejected)
        losses.append(-torch.nn.functional.logsigmoid(chosen - rejected))
    return torch.stack(losses).mean()


def gradients(model) -> dict[str, torch.Tensor]:
    found = {
        name: parameter.grad.clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    model.zero_grad(set_to_none=True)
    return found


@pytest.mark.parametrize(
    ("attention", "loss"),
    [("sdpa_segments", "chunked"), ("sdpa_segments", "logits"), ("sdpa", "chunked")],
)
def test_loss_and_gradients_equal_a_direct_unpacked_reference(
    demo_model_dir, pairs, attention, loss, tmp_path
):
    pad_id, examples = pairs
    model = adapted_model(demo_model_dir)
    # Reference log-probabilities of the base (adapter off), so the rewards are not zero.
    with torch.no_grad(), model.disable_adapter():
        reference = torch.tensor(
            [[direct_logprob(model, p.chosen), direct_logprob(model, p.rejected)] for p in examples]
        )
    expected_loss = direct_dpo_loss(model, examples, reference)
    expected_loss.backward()
    expected = gradients(model)

    numbered = [PairExample(i, p.chosen, p.rejected) for i, p in enumerate(examples)]
    setup = TrainSetup(
        model,
        numbered,
        TrainingConfig(batch_size=3),
        FP32,
        CPU,
        pad_id,
        checkpoint_dir=tmp_path,
        fingerprint="",
        preference=PreferenceObjective(
            BETA, 3, [], ReferenceLogprobs(reference, torch.zeros((0, 2)))
        ),
    )
    scaler = torch.amp.GradScaler(enabled=False)
    kernels = Kernels(attention=attention, loss=loss)
    with attention_in_use(model, attention):
        # Two micro-batches of three pairs: accumulation must not change the objective.
        step_loss, real_tokens, metrics = accumulate_preferences(
            setup, kernels, [numbered[:3], numbered[3:]], scaler
        )
    actual = gradients(model)

    assert math.isclose(step_loss, expected_loss.item(), rel_tol=1e-5, abs_tol=1e-5)
    assert real_tokens == sum(pair.tokens for pair in numbered)
    assert actual.keys() == expected.keys()
    for name, gradient in expected.items():
        scale = gradient.abs().max().item()
        torch.testing.assert_close(actual[name], gradient, rtol=0, atol=1e-5 * scale)
    assert set(metrics) == {
        "rewards_chosen",
        "rewards_rejected",
        "reward_margin",
        "reward_accuracy",
    }
    assert math.isclose(
        metrics["reward_margin"],
        metrics["rewards_chosen"] - metrics["rewards_rejected"],
        rel_tol=1e-6,
        abs_tol=1e-6,
    )


def dpo_recipe(make_recipe, preferences, **overrides):
    sections = {
        "method": {"type": "dpo", "beta": BETA},
        "training": {"max_steps": 6, "checkpoint_every_steps": 3, "learning_rate": 5e-4},
    }
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    return make_recipe(dataset=preferences, **sections)


def test_dpo_run_starts_at_the_reference_and_reports_its_metrics(
    data_dir, make_recipe, preferences, tmp_path
):
    recipe = dpo_recipe(
        make_recipe, preferences, validation={"split": 0.2}, training={"eval_every_steps": 3}
    )
    reporter = RecordingReporter()
    result = run_recipe(recipe, tmp_path / "out", reporter)

    first = reporter.steps[0]
    # The reference is the starting point: before the first update every reward is 0.
    assert first.loss == pytest.approx(math.log(2), abs=1e-6)
    assert (first.rewards_chosen, first.rewards_rejected) == (0.0, 0.0)
    assert first.reward_accuracy == 0.5
    assert reporter.steps[-1].reward_margin > 0
    assert [e.step for e in reporter.evaluations] == [3, 6]
    assert all(e.eval_accuracy is None for e in reporter.evaluations)
    assert reporter.evaluations[-1].eval_reward_accuracy > 0.5
    summary = result.summary
    data = summary["data"]
    assert (data["examples"], data["validation_examples"]) == (46, 11)  # 60 - 3 samples - 20%
    assert any(
        line.startswith("reference log-probabilities of 46 training and 11 validation pairs")
        for line in reporter.logs
    )
    assert summary["objective"]["method"] == "dpo" and summary["objective"]["beta"] == BETA
    assert summary["objective"]["reference"]["training_pairs"] == 46
    assert summary["data"]["kind"] == "preference"
    assert (
        summary["evaluation"]["eval_reward_accuracy"]
        == reporter.evaluations[-1].eval_reward_accuracy
    )
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert rows[2]["eval_reward_margin"] == reporter.evaluations[0].eval_reward_margin
    assert {"rewards_chosen", "reward_accuracy", "grad_norm", "learning_rate"} <= rows[0].keys()
    assert "DPO (beta 0.3)" in (tmp_path / "out" / "adapter" / "README.md").read_text()


@pytest.mark.slow
def test_resume_mid_run_equals_an_uninterrupted_run(
    data_dir, make_recipe, preferences, tmp_path, one_thread
):
    recipe = dpo_recipe(make_recipe, preferences, lora={"dropout": 0.1})
    straight = RecordingReporter()
    run_recipe(recipe, tmp_path / "straight", straight)

    interrupted = RecordingReporter(stop_after_step=4)
    with pytest.raises(RunCancelled):
        run_recipe(recipe, tmp_path / "resumed", interrupted)
    assert [p.name for p in complete_checkpoints(tmp_path / "resumed" / "checkpoints")] == [
        "step-00000003"
    ]
    resumed = RecordingReporter()
    run_recipe(recipe, tmp_path / "resumed", resumed)
    assert "resumed from the checkpoint at step 3" in resumed.logs
    # The reference came with the checkpoint: the model had moved, it was not recomputed.
    assert not any(line.startswith("reference log-probabilities") for line in resumed.logs)
    assert [s.step for s in resumed.steps] == [4, 5, 6]
    assert [
        s.as_dict() | {"training_seconds": 0, "tokens_per_second": 0, "eta_seconds": 0}
        for s in resumed.steps
    ] == [
        s.as_dict() | {"training_seconds": 0, "tokens_per_second": 0, "eta_seconds": 0}
        for s in straight.steps[3:]
    ]
    first = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    second = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_dpo_after_sft_starts_from_the_sft_adapter(data_dir, make_recipe, preferences, tmp_path):
    sft = run_recipe(make_recipe(training={"max_steps": 4}), tmp_path / "sft", RecordingReporter())
    recipe = dpo_recipe(make_recipe, preferences, init_from=str(sft.out_dir))
    reporter = RecordingReporter()
    result = run_recipe(recipe, tmp_path / "dpo", reporter)

    assert f"the adapter starts from {sft.out_dir}" in reporter.logs
    # The reference is the SFT adapter, where the policy starts: rewards 0, loss log 2.
    assert reporter.steps[0].loss == pytest.approx(math.log(2), abs=1e-6)
    assert reporter.steps[0].reward_margin == 0.0
    assert "adapter of" in result.summary["objective"]["reference"]["model"]
    assert result.summary["objective"]["start"] == f"the adapter of {sft.out_dir}"

    # Without init_from the same run starts elsewhere: the SFT adapter was really loaded.
    fresh = load_file(sft.adapter_dir / "adapter_model.safetensors")
    tuned = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.equal(fresh[key], tuned[key]) for key in fresh)


def test_init_from_with_another_adapter_shape_is_refused_with_the_field(
    data_dir, make_recipe, preferences, tmp_path
):
    sft = run_recipe(make_recipe(training={"max_steps": 1}), tmp_path / "sft", RecordingReporter())
    recipe = dpo_recipe(make_recipe, preferences, init_from=str(sft.out_dir), lora={"rank": 4})
    with pytest.raises(ConfigError) as refused:
        run_recipe(recipe, tmp_path / "dpo", RecordingReporter())
    assert [p.field for p in refused.value.problems] == ["lora.rank"]
    assert "is 4; the init_from adapter has 8" in refused.value.message
    for bad, field_message in (
        (tmp_path / "nowhere", "does not exist"),
        (tmp_path, "holds no LoRA adapter"),
    ):
        with pytest.raises(ConfigError) as refused:
            run_recipe(
                dpo_recipe(make_recipe, preferences, init_from=str(bad)),
                tmp_path / "x",
                RecordingReporter(),
            )
        assert refused.value.problems[0].field == "init_from"
        assert field_message in refused.value.message
    with pytest.raises(ConfigError, match="init_from: run_0123abcd is a run on a server"):
        run_recipe(
            dpo_recipe(make_recipe, preferences, init_from="run_0123abcd"),
            tmp_path / "y",
            RecordingReporter(),
        )


def test_a_dataset_of_the_other_kind_is_refused_with_its_field(
    data_dir, make_recipe, preferences, demo_dataset, tmp_path
):
    with pytest.raises(ConfigError) as refused:
        run_recipe(make_recipe(dataset=preferences), tmp_path / "a", RecordingReporter())
    assert refused.value.problems[0].field == "datasets.0"
    assert "holds preference pairs (preference format); method.type sft trains on chat rows" in (
        refused.value.message
    )
    with pytest.raises(ConfigError) as refused:
        run_recipe(
            make_recipe(
                method={"type": "dpo"},
                validation={"datasets": [str(demo_dataset)]},
                dataset=preferences,
            ),
            tmp_path / "b",
            RecordingReporter(),
        )
    assert refused.value.problems[0].field == "validation.datasets.0"
    assert "holds chat rows (messages format); method.type dpo trains on preference pairs" in (
        refused.value.message
    )


def test_a_prompt_without_room_for_an_answer_is_named_by_file_and_line(demo_model_dir, tmp_path):
    long_prompt = " ".join(["river"] * 200)
    rows = [
        {"prompt": "What is 2 plus 2?", "chosen": "Sure! 4.", "rejected": "4."},
        {"prompt": long_prompt, "chosen": "Sure! Yes.", "rejected": "Yes."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    with pytest.raises(DatasetError) as refused:
        prepare_preference_data([path], tokenizer, chat_format, max_length=64, seed=1)
    (problem,) = refused.value.problems
    assert (problem.file, problem.line) == (str(path), 2)
    assert "leaves no room for an answer within the sequence length (64 tokens)" in problem.message


def test_finish_now_ends_a_dpo_run_after_an_evaluation(
    data_dir, make_recipe, preferences, tmp_path
):
    recipe = dpo_recipe(make_recipe, preferences, validation={"split": 0.2})
    reporter = RecordingReporter(finish_after_step=2)
    result = run_recipe(recipe, tmp_path / "out", reporter)
    assert [s.step for s in reporter.steps] == [1, 2]
    assert [e.step for e in reporter.evaluations] == [2]
    assert result.summary["evaluation"]["finished_early"] is True
    assert result.summary["evaluation"]["eval_reward_accuracy"] is not None
    assert all(sample["base_response"] is not None for sample in result.samples)


@pytest.mark.slow
def test_early_stopping_watches_the_dpo_eval_loss_and_keeps_the_best_adapter(
    data_dir, demo_model_dir, make_recipe, tmp_path
):
    from peft import PeftModel

    from tunery.catalog.preference_data import preference_rows

    # Held-out pairs that prefer the opposite of what training teaches: every update makes
    # their DPO loss worse, so the first evaluation is the best and patience runs out.
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in preference_rows(24, seed=3)))
    reversed_rows = [
        row
        | {"preferred_output": row["non_preferred_output"]}
        | {"non_preferred_output": row["preferred_output"]}
        for row in preference_rows(8, seed=5)
    ]
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in reversed_rows))
    recipe = dpo_recipe(
        make_recipe,
        train,
        training={
            "max_steps": 20,
            "eval_every_steps": 2,
            "learning_rate": 5e-3,
            "max_seq_length": 256,
        },
        validation={"datasets": [str(held_out)]},
        early_stopping={"patience": 2},
    )
    reporter = RecordingReporter()
    result = run_recipe(recipe, tmp_path / "out", reporter)

    evaluation = result.summary["evaluation"]
    assert evaluation["stopped_early"] is True
    assert (evaluation["best_step"], evaluation["stopped_at_step"]) == (2, 6)
    assert [s.step for s in reporter.steps] == list(range(1, 7))
    losses = [e.eval_loss for e in reporter.evaluations]
    assert losses == sorted(losses) and evaluation["best_eval_loss"] == losses[0]

    # The adapter kept is the best evaluation's: its DPO loss on the held-out pairs, against
    # the base model as reference, is the one measured at step 2.
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    pairs = prepare_preference_data(
        [train],
        tokenizer,
        chat_format,
        max_length=256,
        seed=recipe.training.seed,
        custom_prompts=recipe.samples.prompts,
        validation=recipe.validation,
        validation_paths=[held_out],
    ).validation
    model = PeftModel.from_pretrained(load_model(demo_model_dir, FP32, CPU), result.adapter_dir)
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            reference = torch.tensor(
                [
                    [direct_logprob(model, p.chosen), direct_logprob(model, p.rejected)]
                    for p in pairs
                ]
            )
        kept = direct_dpo_loss(model, pairs, reference).item()
    assert kept == pytest.approx(evaluation["best_eval_loss"], rel=1e-4)
