"""Validation data, evaluation, early-stopping state and base answers on the demo model."""

from __future__ import annotations

import math

import pytest
import torch

from tunery.errors import ConfigError
from tunery.pipeline.chat import Encoder
from tunery.pipeline.config import ValidationSettings
from tunery.pipeline.data import prepare_data
from tunery.pipeline.early_stopping import EarlyStopping
from tunery.pipeline.evaluation import (
    EvaluationPlan,
    evaluate,
    evaluate_and_report,
    restore_best_adapter,
)
from tunery.pipeline.load import Precision, load_model, load_tokenizer
from tunery.pipeline.lora import attach_lora
from tunery.pipeline.reporting import RecordingReporter
from tunery.pipeline.samples import base_cache_key, base_responses

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)


@pytest.fixture(scope="module")
def tokenizer_and_format(demo_model_dir):
    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    return tokenizer, chat_format


@pytest.fixture
def lora_model(demo_model_dir, make_recipe):
    recipe = make_recipe()
    model, _ = attach_lora(
        load_model(demo_model_dir, FP32, CPU), recipe.lora, gradient_checkpointing=False
    )
    return model


def test_the_default_split_holds_out_the_tail_of_the_training_rows(
    tokenizer_and_format, demo_dataset
):
    tokenizer, chat_format = tokenizer_and_format
    data = prepare_data(
        [demo_dataset],
        tokenizer,
        chat_format,
        max_length=512,
        seed=1,
        validation=ValidationSettings(),
    )
    # 400 rows: 3 sample prompts, then 5% of the 397 left.
    assert (len(data.examples), len(data.validation), data.validation_source) == (377, 20, "split")
    everything = prepare_data([demo_dataset], tokenizer, chat_format, max_length=512, seed=1)
    # The same shuffle: the split is the tail of the rows that would otherwise be trained.
    assert everything.examples[: len(data.examples)] == data.examples
    assert everything.examples[len(data.examples) :] == data.validation
    assert data.summary()["validation_examples"] == 20


def test_separate_validation_files_win_over_the_split(tokenizer_and_format, demo_dataset, tmp_path):
    tokenizer, chat_format = tokenizer_and_format
    held_out = tmp_path / "val.jsonl"
    held_out.write_text("".join(demo_dataset.read_text().splitlines(keepends=True)[:12]))
    data = prepare_data(
        [demo_dataset],
        tokenizer,
        chat_format,
        max_length=512,
        seed=1,
        validation=ValidationSettings(split=0.3),
        validation_paths=[held_out],
    )
    assert (len(data.examples), len(data.validation), data.validation_source) == (
        397,
        12,
        "datasets",
    )


def test_a_validation_set_without_trainable_rows_names_its_field(
    tokenizer_and_format, demo_dataset, tmp_path
):
    tokenizer, chat_format = tokenizer_and_format
    # The assistant's answer is cut off by the limit: nothing left to evaluate.
    long_prompt = '{"messages": [{"role": "user", "content": "' + "word " * 200 + '"}, '
    long_prompt += '{"role": "assistant", "content": "ok"}]}\n'
    held_out = tmp_path / "val.jsonl"
    held_out.write_text(long_prompt)
    with pytest.raises(ConfigError) as caught:
        prepare_data(
            [demo_dataset],
            tokenizer,
            chat_format,
            max_length=64,
            seed=1,
            validation=ValidationSettings(),
            validation_paths=[held_out],
        )
    assert [problem.field for problem in caught.value.problems] == ["validation.datasets"]


def test_early_stopping_without_held_out_rows_names_patience(
    tokenizer_and_format, demo_dataset, tmp_path
):
    tokenizer, chat_format = tokenizer_and_format
    small = tmp_path / "small.jsonl"
    small.write_text("".join(demo_dataset.read_text().splitlines(keepends=True)[:50]))
    with pytest.raises(ConfigError) as caught:
        prepare_data(
            [small],
            tokenizer,
            chat_format,
            max_length=512,
            seed=1,
            validation=ValidationSettings(),
            require_validation=True,
        )
    assert [problem.field for problem in caught.value.problems] == ["early_stopping.patience"]


def test_eval_loss_and_accuracy_equal_a_direct_computation(
    tokenizer_and_format, demo_dataset, lora_model
):
    tokenizer, chat_format = tokenizer_and_format
    data = prepare_data(
        [demo_dataset],
        tokenizer,
        chat_format,
        max_length=512,
        seed=1,
        validation=ValidationSettings(),
    )
    result = evaluate(lora_model, data.validation, pad_id=tokenizer.pad_token_id, device=CPU)
    loss_sum, correct, tokens = 0.0, 0, 0
    lora_model.eval()
    with torch.no_grad():
        for example in data.validation:
            logits = lora_model(input_ids=torch.tensor([example.input_ids])).logits[0]
            targets = torch.tensor(example.targets)
            trained = targets != -100
            loss_sum += torch.nn.functional.cross_entropy(
                logits[trained], targets[trained], reduction="sum"
            ).item()
            correct += (logits[trained].argmax(-1) == targets[trained]).sum().item()
            tokens += int(trained.sum())
    assert result.tokens == tokens
    assert result.loss == pytest.approx(loss_sum / tokens, rel=1e-4)
    assert result.accuracy == pytest.approx(correct / tokens)
    assert lora_model.training is False  # left as found


def test_early_stopping_counts_evaluations_without_improvement() -> None:
    stopping = EarlyStopping(patience=2, min_delta=0.1)
    assert stopping.observe(10, 2.0)
    assert not stopping.observe(20, 1.95)  # better, but not by min_delta
    assert not stopping.should_stop
    assert stopping.observe(30, 1.5)
    assert not stopping.observe(40, 1.6)
    assert not stopping.observe(50, 1.7)
    assert stopping.should_stop and stopping.stopped_at_step == 50
    assert (stopping.best_loss, stopping.best_step) == (1.5, 30)
    restored = EarlyStopping.from_dict(stopping.as_dict(), patience=2, min_delta=0.1)
    assert restored == stopping
    assert not EarlyStopping(patience=0).should_stop


def test_the_best_adapter_is_kept_and_restored(
    tokenizer_and_format, demo_dataset, lora_model, tmp_path
):
    tokenizer, chat_format = tokenizer_and_format
    data = prepare_data(
        [demo_dataset],
        tokenizer,
        chat_format,
        max_length=512,
        seed=1,
        validation=ValidationSettings(),
    )
    plan = EvaluationPlan(data.validation, 10, EarlyStopping(patience=1), tmp_path / "best")
    reporter = RecordingReporter()
    common = {"total_steps": 30, "pad_id": tokenizer.pad_token_id, "device": CPU}
    kept = evaluate_and_report(
        plan, lora_model, reporter, step=10, autocast=None, attention="sdpa", **common
    )
    with torch.no_grad():
        for name, parameter in lora_model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)  # a worse adapter
    worse = evaluate_and_report(
        plan, lora_model, reporter, step=20, autocast=None, attention="sdpa", **common
    )
    assert worse.eval_loss > kept.eval_loss and plan.early_stopping.should_stop
    assert [e.step for e in reporter.evaluations] == [10, 20]
    assert reporter.evaluations[1].best_step == 10
    assert not restore_best_adapter(lora_model, tmp_path / "best", step=20, device=CPU)
    assert restore_best_adapter(lora_model, tmp_path / "best", step=10, device=CPU)
    again = evaluate(lora_model, data.validation, pad_id=tokenizer.pad_token_id, device=CPU)
    assert math.isclose(again.loss, kept.eval_loss, rel_tol=1e-6)


def test_base_answers_are_generated_with_the_adapter_off_and_cached(
    tokenizer_and_format, demo_dataset, lora_model, tmp_path
):
    tokenizer, chat_format = tokenizer_and_format
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=512, seed=1)
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=False)
    with torch.no_grad():
        for name, parameter in lora_model.named_parameters():
            if "lora_B" in name:
                parameter.add_(1.0)  # the tuned model now answers differently
    key = base_cache_key("tunery/demo-tiny", data.samples, max_new_tokens=8)
    cache = tmp_path / "cache" / f"{key}.json"
    decoding = {"end_of_turn": chat_format.end_of_turn, "max_new_tokens": 8, "device": CPU}
    first, cached = base_responses(
        lora_model, tokenizer, encoder, data.samples, cache_file=cache, **decoding
    )
    assert not cached and cache.is_file() and len(first) == 3
    base_model = lora_model.get_base_model()
    with lora_model.disable_adapter():
        direct = [
            tokenizer.decode(
                base_model.generate(
                    input_ids=torch.tensor([encoder.prompt_ids(prompt.messages)]),
                    max_new_tokens=8,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )[0, len(encoder.prompt_ids(prompt.messages)) :],
                skip_special_tokens=True,
            ).strip()
            for prompt in data.samples
        ]
    # Greedy with the same stop tokens: equal up to where a stop token cut it short.
    assert all(d.startswith(f) or f.startswith(d) for f, d in zip(first, direct, strict=True))
    again, cached = base_responses(
        lora_model, tokenizer, encoder, data.samples, cache_file=cache, **decoding
    )
    assert cached and again == first
    assert base_cache_key("tunery/demo-tiny", data.samples, max_new_tokens=9) != key
