"""The streaming merge gives exactly what PEFT's merge_and_unload gives, shard by shard."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tunery.gguf.export import F16_LARGEST, ExportError, export_gguf
from tunery.gguf.merge import MergeError, merge_adapter


@pytest.fixture(scope="module")
def adapter_dir(demo_model_dir, tmp_path_factory):
    """A random (non-zero) LoRA adapter on the demo model, as tunery would save it."""
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    config = LoraConfig(r=8, lora_alpha=24, target_modules="all-linear", init_lora_weights=False)
    directory = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(directory, save_embedding_layers=False)
    return directory


def reference_merge(demo_model_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()


def test_streaming_merge_equals_peft(demo_model_dir, adapter_dir, tmp_path):
    largest = merge_adapter(demo_model_dir, adapter_dir, tmp_path / "merged")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    expected = reference_merge(demo_model_dir, adapter_dir)
    changed = [name for name in merged if name.endswith("_proj.weight")]
    assert changed and largest == max(float(merged[name].abs().max()) for name in changed)
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6)
    assert (tmp_path / "merged" / "config.json").is_file()


def test_sharded_base_models_merge_shard_by_shard(demo_model_dir, adapter_dir, tmp_path):
    sharded = tmp_path / "sharded-base"
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    base.save_pretrained(sharded, max_shard_size="2MB")
    shards = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) > 3
    merge_adapter(sharded, adapter_dir, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    expected = reference_merge(demo_model_dir, adapter_dir)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6)


def test_untargeted_weights_are_byte_identical_to_the_base(demo_model_dir, adapter_dir, tmp_path):
    merge_adapter(demo_model_dir, adapter_dir, tmp_path / "merged")
    base = load_file(demo_model_dir / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert torch.equal(base["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    assert not torch.equal(
        base["model.layers.0.self_attn.q_proj.weight"],
        merged["model.layers.0.self_attn.q_proj.weight"],
    )


def test_adapter_for_another_model_is_refused(demo_model_dir, adapter_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("adapter_config.json",):
        (foreign / name).write_bytes((adapter_dir / name).read_bytes())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    from safetensors.torch import save_file

    save_file(
        {key.replace("layers.0.", "layers.9."): value for key, value in tensors.items()},
        foreign / "adapter_model.safetensors",
    )
    with pytest.raises(MergeError) as caught:
        merge_adapter(demo_model_dir, foreign, tmp_path / "merged")
    assert "layers.9" in caught.value.message


def test_weights_a_16_bit_gguf_cannot_hold_are_refused_before_converting(
    demo_model_dir, adapter_dir, tmp_path
):
    # What a run at learning rate 1 on a large rank leaves: finite LoRA weights whose
    # product is far beyond 16-bit floats (the quantizer would meet inf in the f16 GGUF).
    huge = tmp_path / "huge"
    shutil.copytree(adapter_dir, huge)
    tensors = load_file(huge / "adapter_model.safetensors")
    scaled = {key: value * 1e6 if ".lora_B." in key else value for key, value in tensors.items()}
    save_file(scaled, huge / "adapter_model.safetensors")
    assert merge_adapter(demo_model_dir, huge, tmp_path / "merged") > F16_LARGEST
    broken = {key: value.clone() for key, value in tensors.items()}
    next(value for key, value in broken.items() if ".lora_B." in key)[0, 0] = float("nan")
    save_file(broken, tmp_path / "adapter_model.safetensors")
    nan_adapter = tmp_path / "nan"
    shutil.copytree(adapter_dir, nan_adapter)
    shutil.move(tmp_path / "adapter_model.safetensors", nan_adapter / "adapter_model.safetensors")
    assert merge_adapter(demo_model_dir, nan_adapter, tmp_path / "merged-nan") == float("inf")

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as caught:
        export_gguf(
            adapter_dir=huge,
            base_model_dir=demo_model_dir,
            out_dir=out,
            run_name="huge",
            base_model="tunery/demo-tiny",
            dataset_names=["demo"],
            end_of_turn="<|im_end|>",
            sample_prompts=[],
            max_new_tokens=8,
        )
    assert "beyond the 65504 a 16-bit GGUF can hold" in caught.value.message
    assert "lower training.learning_rate" in caught.value.hint
    assert list(out.iterdir()) == []  # nothing partial remains
