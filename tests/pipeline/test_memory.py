"""The memory planner on real models' config shapes (no weights: counted on the meta device)."""

from __future__ import annotations

import pytest

from tunery.errors import ConfigError
from tunery.pipeline import memory
from tunery.pipeline.config import parse_recipe
from tunery.pipeline.memory import (
    GIB,
    ModelShape,
    TrainingPlan,
    check_fits,
    estimate_peak_memory,
    largest_fitting_tokens,
)

QWEN2_05B = {  # Qwen/Qwen2-0.5B config.json, the fields the planner reads
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
LLAMA_15B = {  # a Llama-style 1.5B: 2048 wide, 22 layers, 8 key/value heads, 128k vocabulary
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
}
T4_GIB = 15  # a T4's 16 GB are 15 GiB


def recipe(**training):
    lora = training.pop("lora", {})
    return parse_recipe(
        {
            "name": "m",
            "base_model": "x/y",
            "datasets": ["d.jsonl"],
            "training": training,
            "lora": lora,
        }
    )


@pytest.mark.parametrize("config", [QWEN2_05B, LLAMA_15B, MISTRAL_7B])
def test_parameter_counts_match_the_models_transformers_builds(config):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    shape = ModelShape.from_config(config)
    actual = model.num_parameters()
    # Qwen2's query/key/value biases (a few thousand parameters) are not counted.
    assert abs(shape.parameters - actual) / actual < 1e-3
    assert 0.45e9 < ModelShape.from_config(QWEN2_05B).parameters < 0.55e9
    assert 1.4e9 < ModelShape.from_config(LLAMA_15B).parameters < 1.6e9


def test_checkpointing_shrinks_activations_and_nf4_shrinks_weights():
    shape = ModelShape.from_config(LLAMA_15B)
    plain = TrainingPlan(trainable_parameters=10**7, gradient_checkpointing=False)
    checkpointed = TrainingPlan(trainable_parameters=10**7, gradient_checkpointing=True)
    nf4 = TrainingPlan(10**7, gradient_checkpointing=True, quantize_base="nf4")
    tokens = 8 * 2048
    without = estimate_peak_memory(shape, plain, tokens_per_micro_batch=tokens)
    with_checkpoints = estimate_peak_memory(shape, checkpointed, tokens_per_micro_batch=tokens)
    quantized = estimate_peak_memory(shape, nf4, tokens_per_micro_batch=tokens)
    assert with_checkpoints.activations < without.activations / 5
    # The decoder's linear layers take 4 bits; the 128k-token embeddings stay 16-bit.
    assert quantized.weights < 0.6 * with_checkpoints.weights
    assert without.weights == pytest.approx(2 * shape.parameters, rel=1e-3)
    assert without.lora_state == 16 * 10**7
    # Logits exist one chunk at a time: far below all positions' logits in fp32.
    assert without.loss < tokens * shape.vocab_size * 4 / 4


def test_a_recipe_that_fits_returns_its_estimate():
    estimate = check_fits(recipe(batch_size=8, max_seq_length=2048), QWEN2_05B, 16)
    assert 2 * GIB < estimate.total < 16 * GIB
    assert set(estimate.as_dict()) == {
        "weights",
        "lora_state",
        "activations",
        "loss",
        "total",
        "all_reduce",
    }
    assert estimate.all_reduce == 0  # one device: nothing to all-reduce


def test_each_of_several_devices_holds_the_whole_run_and_the_all_reduce():
    alone = check_fits(recipe(batch_size=8, max_seq_length=2048), QWEN2_05B, 16)
    each = check_fits(recipe(batch_size=8, max_seq_length=2048), QWEN2_05B, 16, devices=4)
    trainable = memory.lora_parameters(ModelShape.from_config(QWEN2_05B), 16, "all-linear")
    # batch_size is per device: the same weights, adapter and activations on every device.
    assert (each.weights, each.activations, each.loss) == (
        alone.weights,
        alone.activations,
        alone.loss,
    )
    assert each.all_reduce == 4 * trainable + memory.COMMUNICATOR_BYTES
    extra = int(4 * trainable * memory.SLACK) + memory.COMMUNICATOR_BYTES
    assert each.total - alone.total == pytest.approx(extra, abs=2)


def test_too_large_a_batch_names_the_batch_size_that_fits():
    too_big = recipe(batch_size=8, max_seq_length=2048, gradient_checkpointing=False)
    with pytest.raises(ConfigError) as caught:
        check_fits(too_big, QWEN2_05B, 16)
    problem = caught.value.problems[0]
    assert problem.field == "training.batch_size"
    suggested = int(caught.value.hint.split("training.batch_size ")[1].split()[0])
    assert 1 <= suggested < 8
    check_fits(
        recipe(batch_size=suggested, max_seq_length=2048, gradient_checkpointing=False),
        QWEN2_05B,
        16,
    )
    with pytest.raises(ConfigError):
        check_fits(
            recipe(batch_size=suggested + 1, max_seq_length=2048, gradient_checkpointing=False),
            QWEN2_05B,
            16,
        )


def test_too_long_a_sequence_names_the_length_that_fits():
    with pytest.raises(ConfigError) as caught:
        check_fits(
            recipe(batch_size=1, max_seq_length=4096, gradient_checkpointing=False), LLAMA_15B, 8
        )
    assert caught.value.problems[0].field == "training.max_seq_length"
    length = int(caught.value.hint.split("training.max_seq_length ")[1].split()[0])
    assert 64 <= length < 4096 and length % 64 == 0
    check_fits(
        recipe(batch_size=1, max_seq_length=length, gradient_checkpointing=False), LLAMA_15B, 8
    )


def test_a_7b_model_on_a_t4_needs_a_4_bit_base():
    with pytest.raises(ConfigError) as caught:
        check_fits(recipe(batch_size=1, max_seq_length=2048), MISTRAL_7B, T4_GIB)
    assert caught.value.problems[0].field == "lora.quantize_base"
    assert "nf4" in caught.value.hint
    fits = check_fits(
        recipe(batch_size=1, max_seq_length=2048, lora={"quantize_base": "nf4"}),
        MISTRAL_7B,
        T4_GIB,
    )
    assert fits.total < T4_GIB * GIB


def test_largest_fitting_tokens_is_the_boundary():
    shape = ModelShape.from_config(QWEN2_05B)
    plan = TrainingPlan(trainable_parameters=10**7, gradient_checkpointing=False)
    budget = 10 * GIB
    tokens = largest_fitting_tokens(shape, plan, budget)
    assert estimate_peak_memory(shape, plan, tokens_per_micro_batch=tokens).total <= budget
    assert estimate_peak_memory(shape, plan, tokens_per_micro_batch=tokens + 1).total > budget


def test_the_logits_chunk_is_the_loss_modules():
    from tunery.pipeline import loss

    assert memory.LOGITS_CHUNK_ELEMENTS == loss.LOGITS_CHUNK_ELEMENTS


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"vocab_size": "lots"}, "vocab_size"),
        ({"num_hidden_layers": True}, "num_hidden_layers"),
        ({"intermediate_size": -1}, "intermediate_size"),
    ],
)
def test_a_config_without_usable_sizes_names_the_field(change, field):
    config = {key: value for key, value in {**QWEN2_05B, **change}.items() if value is not None}
    with pytest.raises(ValueError, match=field):
        ModelShape.from_config(config)


def test_a_dpo_run_plans_two_sequences_per_pair():
    def dpo(**training):
        return parse_recipe(
            {
                "name": "m",
                "base_model": "x/y",
                "datasets": ["d.jsonl"],
                "training": training,
                "method": {"type": "dpo"},
            }
        )

    pairs = check_fits(dpo(batch_size=4, max_seq_length=1024), QWEN2_05B, 80)
    rows = check_fits(recipe(batch_size=8, max_seq_length=1024), QWEN2_05B, 80)
    assert pairs.total == rows.total  # 4 pairs of two sequences hold 8 sequences' tokens
    with pytest.raises(ConfigError) as caught:
        check_fits(
            dpo(batch_size=8, max_seq_length=2048, gradient_checkpointing=False), QWEN2_05B, 16
        )
    assert caught.value.problems[0].field == "training.batch_size"
    suggested = int(caught.value.hint.split("training.batch_size ")[1].split()[0])
    fits = dpo(batch_size=suggested, max_seq_length=2048, gradient_checkpointing=False)
    check_fits(fits, QWEN2_05B, 16)
    with pytest.raises(ConfigError):
        check_fits(
            dpo(batch_size=suggested + 1, max_seq_length=2048, gradient_checkpointing=False),
            QWEN2_05B,
            16,
        )
