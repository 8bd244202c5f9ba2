"""Merging a LoRA adapter into its base, one tensor at a time.

``W' = W + (alpha / r) · B @ A`` for every targeted weight, computed in float32 and stored
back in the base's own 16/32-bit dtype. The base's safetensors shards are copied and only
the targeted tensors are rewritten in place, so peak memory is one tensor instead of the
whole model, which is what loading the model with PEFT and calling ``merge_and_unload()``
costs. Adapters this module does not handle (DoRA, rank or alpha
patterns, fan-in/fan-out layers, extra saved modules) are merged through PEFT instead.
"""

from __future__ import annotations

import ctypes
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

from tunery.errors import TuneryError

ADAPTER_PREFIX = "base_model.model."
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "tokenizer.model",
    "special_tokens_map.json",
)


class MergeError(TuneryError):
    code = "merge_failed"


def streamable(adapter_config: dict[str, Any]) -> bool:
    """True when the adapter is plain LoRA on Linear layers, as tunery trains them."""
    return (
        adapter_config.get("peft_type") == "LORA"
        and not adapter_config.get("use_dora")
        and not adapter_config.get("fan_in_fan_out")
        and not adapter_config.get("rank_pattern")
        and not adapter_config.get("alpha_pattern")
        and not adapter_config.get("modules_to_save")
        and not adapter_config.get("lora_bias")
    )


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> float:
    """Write the merged model (weights, config, the adapter's tokenizer) to ``out_dir``.

    Returns the largest magnitude among the weights the adapter changed (among all weights
    where PEFT merges; inf where one is not finite), so a caller storing them in a narrower
    format can refuse what would overflow it."""
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    if streamable(adapter_config):
        largest = _merge_streaming(base_dir, adapter_dir, adapter_config, out_dir)
    else:
        largest = _merge_with_peft(base_dir, adapter_dir, out_dir)
    for name in CONFIG_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    # The adapter's tokenizer carries the chat template and pad token the run trained with.
    for name in TOKENIZER_FILES:
        if (adapter_dir / name).is_file():
            shutil.copyfile(adapter_dir / name, out_dir / name)
        elif (base_dir / name).is_file() and name == "tokenizer.model":
            shutil.copyfile(base_dir / name, out_dir / name)
    return largest


def _magnitude(tensor: Any) -> float:
    """The largest absolute value of ``tensor``; inf when any value is not finite."""
    if not tensor.numel():
        return 0.0
    largest = float(tensor.abs().max())  # one pass: max() carries a NaN through
    return largest if math.isfinite(largest) else math.inf


def _lora_pairs(adapter_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Base weight name → (A, B) from the adapter's safetensors."""
    from safetensors.torch import load_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    pairs: dict[str, tuple[Any, Any]] = {}
    for key, value in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix(ADAPTER_PREFIX).split(".lora_A.")[0]
        other = key.replace(".lora_A.", ".lora_B.")
        if other not in tensors:
            raise MergeError(f"the adapter has {key} but no {other}")
        pairs[f"{module}.weight"] = (value, tensors[other])
    return pairs


def _base_shards(base_dir: Path) -> list[Path]:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [base_dir / name for name in sorted(set(weight_map.values()))]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise MergeError(f"{base_dir} has no safetensors weights to merge into")


def _merge_streaming(
    base_dir: Path, adapter_dir: Path, adapter_config: dict[str, Any], out_dir: Path
) -> float:
    """Copy each base shard, then overwrite the targeted weights in place; returns the
    largest magnitude among the merged weights.

    Merged weights keep their shapes and dtypes, so each copied shard's header and layout
    stay valid and only the targeted tensors' bytes change. One tensor is in memory at a
    time.
    """
    import torch
    from safetensors import safe_open

    rank = adapter_config["r"]
    alpha = adapter_config["lora_alpha"]
    scale = alpha / rank**0.5 if adapter_config.get("use_rslora") else alpha / rank
    pairs = _lora_pairs(adapter_dir)
    merged_names: set[str] = set()
    largest = 0.0
    for shard in _base_shards(base_dir):
        target = out_dir / shard.name
        shutil.copyfile(shard, target)
        offsets, data_start = _tensor_offsets(shard)
        with safe_open(shard, framework="pt") as source, target.open("r+b") as out:
            for name in source.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                if name not in pairs:
                    continue
                tensor = source.get_tensor(name)
                lora_a, lora_b = pairs[name]
                delta = (lora_b.float() @ lora_a.float()) * scale
                if delta.shape != tensor.shape:
                    raise MergeError(
                        f"{name}: adapter delta {tuple(delta.shape)} does not fit "
                        f"base weight {tuple(tensor.shape)}"
                    )
                merged = (tensor.float() + delta).to(tensor.dtype).contiguous()
                largest = max(largest, _magnitude(merged))
                begin, end = offsets[name]
                raw = merged.view(-1).view(torch.uint8).numpy()
                if raw.nbytes != end - begin:
                    raise MergeError(f"{name}: merged weight does not fit its slot")
                out.seek(data_start + begin)
                out.write(raw.tobytes())
                merged_names.add(name)
    missing = sorted(set(pairs) - merged_names)
    if missing:
        raise MergeError(f"the base model has no weights named {', '.join(missing[:3])}")
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        shutil.copyfile(index, out_dir / index.name)
    _release_freed_memory()
    return largest


def _tensor_offsets(shard: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Each tensor's byte range in the data section, and where that section starts."""
    with shard.open("rb") as file:
        header_size = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(header_size))
    offsets = {
        name: (info["data_offsets"][0], info["data_offsets"][1])
        for name, info in header.items()
        if name != "__metadata__"
    }
    return offsets, 8 + header_size


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them), so the export's later
    steps do not run beside the merge's high-water mark."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return


def _merge_with_peft(base_dir: Path, adapter_dir: Path, out_dir: Path) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    if base.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise MergeError(f"the base model is stored as {base.dtype}; merging needs 16/32-bit")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    return max((_magnitude(weight) for weight in merged.state_dict().values()), default=0.0)
