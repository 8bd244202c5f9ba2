"""How the training loop computes on this device, chosen once per run and recorded in run.json.

- attention over packed examples (``tunery.pipeline.attention``);
- the loss without full-vocabulary logits (``tunery.pipeline.loss``);
- Liger Kernel's fused RMSNorm, RoPE and SwiGLU on CUDA where installed (Triton kernels,
  exact to bf16 rounding); on the CPU PyTorch's ``rms_norm`` is the same operations as
  transformers' norms (measured: no faster), so they stay;
- LoRA's update added inside the matrix product (``addmm`` with ``alpha`` the LoRA scale)
  instead of scaling and adding a full-width copy of the output (5% of a CPU step on the
  demo model, losses unchanged);
- ``torch.compile`` of each decoder layer's MLP and norms (attention stays eager: its
  per-example calls would recompile for every batch). ``training.compile: auto`` leaves it
  off: on CPU it did not pay for its compile time (bench/README.md); on GPUs
  ``make gpu-check`` measures it.
"""

from __future__ import annotations

import importlib.util
import types
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tunery.pipeline.attention import AttentionKind, choose_attention
from tunery.pipeline.loss import LossKind, causal_lm, choose_loss


@dataclass(frozen=True)
class Kernels:
    """The loop's choices, each with the reason it was made. The defaults are the
    references: transformers' and PEFT's own layers."""

    attention: AttentionKind
    loss: LossKind
    fused_layers: bool = False
    compiled: bool = False
    lora_addmm: bool = False
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attention": self.attention,
            "loss": self.loss,
            "fused_layers": "liger" if self.fused_layers else "none",
            "lora": "addmm" if self.lora_addmm else "peft",
            "compile": self.compiled,
            "reasons": dict(self.reasons),
        }


def choose_kernels(
    model: Any,
    device: torch.device,
    *,
    max_length: int,
    half_precision: bool,
    compile_setting: Literal["auto", "on", "off"] = "auto",
) -> Kernels:
    """Choose for ``model`` (with its adapter attached, so frozen weights are known)."""
    attention, attention_reason = choose_attention(
        causal_lm(model), device, max_length=max_length, half_precision=half_precision
    )
    loss, loss_reason = choose_loss(model, device)
    fused = device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    compiled = compile_setting == "on"
    compile_reason = {
        "on": "training.compile is on",
        "off": "training.compile is off",
        "auto": "auto: off, it did not pay for its compile time where measured",
    }[compile_setting]
    return Kernels(
        attention=attention,
        loss=loss,
        fused_layers=fused,
        compiled=compiled,
        lora_addmm=True,
        reasons={
            "attention": attention_reason,
            "loss": loss_reason,
            "fused_layers": "liger-kernel is installed" if fused else "needs CUDA and liger-kernel",
            "lora": "addmm: the scaled update accumulates into the base output in one product",
            "compile": compile_reason,
        },
    )


def apply_kernels(model: Any, kernels: Kernels) -> None:
    """Patch ``model`` in place for the layer-level choices (fused layers, compilation)."""
    lm = causal_lm(model)
    if kernels.fused_layers:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # The loss is tunery's own (it skips untrained positions), so only the layers.
        _apply_liger_kernel_to_instance(
            model=lm,
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    if kernels.lora_addmm:
        from peft.tuners.lora.layer import Linear as LoraLinear

        for module in model.modules():
            # Exactly PEFT's dense layer: its 4-bit and other subclasses compute otherwise.
            if type(module) is LoraLinear:
                # An instance attribute shadows the class's forward for this layer only.
                module.forward = types.MethodType(  # type: ignore[method-assign]
                    _lora_addmm_forward, module
                )
    if kernels.compiled:
        for layer in lm.get_decoder().layers:
            for name in ("mlp", "input_layernorm", "post_attention_layernorm"):
                module = getattr(layer, name, None)
                if module is not None:
                    module.compile(dynamic=True)


def _lora_addmm_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT's ``Linear.forward`` for one active plain LoRA adapter, with ``base + scale * B(A(x))``
    as one ``addmm``; any other case (adapters disabled or merged, several, DoRA) is PEFT's."""
    adapters = layer.active_adapters
    plain = (
        not args
        and not kwargs
        and not layer.disable_adapters
        and not layer.merged
        and len(adapters) == 1
        and adapters[0] in layer.lora_A
        and adapters[0] not in layer.lora_variant
        and not getattr(layer, "lora_bias", {}).get(adapters[0], False)
    )
    if not plain:
        # Imported here, off the common path: this forward runs for every adapted layer.
        from peft.tuners.lora.layer import Linear as LoraLinear

        return LoraLinear.forward(layer, x, *args, **kwargs)
    name = adapters[0]
    result = layer.base_layer(x)
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    low = lora_a(layer.lora_dropout[name](layer._cast_input_dtype(x, lora_a.weight.dtype)))
    if not torch.is_autocast_enabled(result.device.type) and not (
        low.dtype == result.dtype == lora_b.weight.dtype
    ):
        # Mixed dtypes outside autocast (a 16-bit base, fp32 adapters, as when generating
        # samples): addmm would refuse them; PEFT's sum promotes, then casts back.
        return (result + lora_b(low) * layer.scaling[name]).to(result.dtype)
    width = result.shape[-1]
    summed = torch.addmm(
        result.reshape(-1, width),
        low.reshape(-1, low.shape[-1]),
        lora_b.weight.t(),
        alpha=layer.scaling[name],
    )
    return summed.view(result.shape).to(result.dtype)
