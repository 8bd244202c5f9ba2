"""QLoRA: a 4-bit base is refused where bitsandbytes cannot train it, and where it can, the
adapter trained against it merges into the 16-bit base weights (never a 4-bit merge)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tunery.errors import ConfigError
from tunery.pipeline.config import LoraSettings, TrainingConfig
from tunery.pipeline.load import Precision, check_quantization, load_model, load_tokenizer
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, None)


def test_nf4_needs_a_cuda_gpu():
    with pytest.raises(ConfigError) as caught:
        check_quantization("nf4", CPU)
    assert caught.value.problems[0].field == "lora.quantize_base"
    assert "CUDA" in caught.value.message
    check_quantization("none", CPU)


def test_nf4_needs_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real(name, *args),
    )
    with pytest.raises(ConfigError) as caught:
        check_quantization("nf4", torch.device("cuda"))
    assert "bitsandbytes" in caught.value.message
    assert "tunery[gpu]" in caught.value.hint


def test_a_run_asking_for_nf4_on_a_cpu_node_fails_before_training(data_dir, make_recipe, tmp_path):
    reporter = RecordingReporter()
    with pytest.raises(ConfigError) as caught:
        run_recipe(make_recipe(lora={"quantize_base": "nf4"}), tmp_path / "out", reporter)
    assert caught.value.problems[0].field == "lora.quantize_base"
    assert reporter.steps == []


@pytest.mark.slow
def test_an_adapter_trained_on_a_4_bit_base_merges_into_the_16_bit_weights(
    demo_model_dir, demo_dataset, tmp_path
):
    """bitsandbytes' CPU backend trains here when it is installed (tunery[gpu])."""
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    from tunery.gguf.merge import merge_adapter
    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.save import save_adapter
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainSetup

    tokenizer, chat_format, _ = load_tokenizer(demo_model_dir)
    data = prepare_data([demo_dataset], tokenizer, chat_format, max_length=256, seed=1)
    model = load_model(demo_model_dir, FP32, CPU, quantize_base="nf4")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    torch.manual_seed(0)
    peft_model, _ = attach_lora(
        model, LoraSettings(rank=8, alpha=16, dropout=0.0), gradient_checkpointing=False
    )
    reporter = RecordingReporter()
    config = TrainingConfig(max_steps=4, learning_rate=2e-3, batch_size=4, warmup_ratio=0)
    setup = TrainSetup(
        peft_model,
        data.examples[:16],
        config,
        FP32,
        CPU,
        tokenizer.pad_token_id,
        tmp_path / "c",
        "q",
    )
    train(setup, reporter)
    assert len(reporter.steps) == 4 and all(step.grad_norm > 0 for step in reporter.steps)
    adapter_dir = save_adapter(
        peft_model,
        tokenizer,
        chat_format,
        base_model="tunery/demo-tiny",
        adapter_dir=tmp_path / "adapter",
        model_card="card",
    )
    merge_adapter(demo_model_dir, adapter_dir, tmp_path / "merged")

    base = load_file(demo_model_dir / "model.safetensors")
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    lora_a = adapter[f"base_model.model.{name}.lora_A.weight"]
    lora_b = adapter[f"base_model.model.{name}.lora_B.weight"]
    expected = base[f"{name}.weight"] + (16 / 8) * lora_b @ lora_a
    assert merged[f"{name}.weight"].dtype == base[f"{name}.weight"].dtype
    torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged[f"{name}.weight"], base[f"{name}.weight"])
