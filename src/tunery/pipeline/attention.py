"""Attention over packed examples, chosen once per run for the device and the model.

A micro-batch's examples are packed without padding. Two layouts exist:

- *flattened*: every example of the micro-batch in one row, their boundaries passed to the
  attention as cumulative lengths, so each example attends causally to itself and nothing
  is computed across examples or on padding. Kernels: flash-attention through transformers
  (``flash_attention_2``, CUDA, where the ``flash_attn`` package is installed), PyTorch's own
  variable-length flash kernel (``torch_varlen``, CUDA), or one SDPA call per example
  (``sdpa_segments``, any device).
- *rows*: first-fit rows with position ids restarting at each example; transformers turns
  the restarts into a block-diagonal mask (``sdpa``). Masked pairs are still computed and
  the dense mask costs memory: the fallback for models the others do not cover (sliding
  windows shorter than the examples, logit soft-capping, attention dropout).

``choose_attention`` picks the first that applies; ``attention_in_use`` switches the model to
it for the training loop only, so generation afterwards uses the model's own attention.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

AttentionKind = Literal["flash_attention_2", "torch_varlen", "sdpa_segments", "sdpa"]
FLATTENED: frozenset[str] = frozenset({"flash_attention_2", "torch_varlen", "sdpa_segments"})
"""Kinds that take one flattened row per micro-batch with the examples' boundaries."""

SEGMENTS_KWARG = "tunery_segment_lengths"
"""Model-forward keyword carrying the examples' lengths (a tuple of ints) to sdpa_segments."""
_REGISTERED = {"sdpa_segments": "tunery_sdpa_segments", "torch_varlen": "tunery_torch_varlen"}
_SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)
"""``enable_gqa`` arrived in PyTorch 2.5."""


def _sdpa_segments(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA over each example of a flattened row ``[1, heads, tokens, dim]``."""
    lengths = kwargs.get(SEGMENTS_KWARG)
    if lengths is None:
        raise ValueError(f"sdpa_segments attention needs {SEGMENTS_KWARG} (see attention_inputs)")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and not _SDPA_HAS_GQA:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    outputs = []
    start = 0
    for length in lengths:
        end = start + length
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=groups > 1 and _SDPA_HAS_GQA,
            )
        )
        start = end
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _torch_varlen(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """PyTorch's variable-length flash attention over a flattened row (CUDA only)."""
    from torch.nn.attention.varlen import varlen_attn

    boundaries = kwargs["cu_seq_lens_q"]
    longest = kwargs["max_length_q"]
    # [1, heads, tokens, dim] -> [tokens, heads, dim], the kernel's layout.
    output: torch.Tensor = varlen_attn(  # type: ignore[assignment]  # one tensor unless return_aux
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        boundaries,
        boundaries,
        longest,
        longest,
        scale=scaling,
        **_varlen_causal_arguments(),
    )
    return output.unsqueeze(0), None


def _varlen_causal_arguments() -> dict[str, Any]:
    # The signature changed between PyTorch releases: is_causal became window_size=(-1, 0),
    # and grouped-query attention became an explicit flag.
    parameters = inspect.signature(
        importlib.import_module("torch.nn.attention.varlen").varlen_attn
    ).parameters
    arguments: dict[str, Any] = (
        {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    )
    if "enable_gqa" in parameters:
        arguments["enable_gqa"] = True
    return arguments


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_REGISTERED["sdpa_segments"], _sdpa_segments)
    AttentionInterface.register(_REGISTERED["torch_varlen"], _torch_varlen)


_register()


def implementation_name(kind: AttentionKind) -> str:
    """The ``attn_implementation`` transformers knows ``kind`` by."""
    return _REGISTERED.get(kind, kind)


def flattened_layout_applies(model: PreTrainedModel, max_length: int) -> tuple[bool, str]:
    """Whether per-example causal attention computes exactly what the model's own does.

    Returns the answer and, when it is no, the reason (recorded with the choice).
    """
    config = model.config
    if getattr(config, "attn_logit_softcapping", None):
        return False, "the model soft-caps attention logits"
    if getattr(config, "attention_dropout", 0.0):
        return False, "the model uses attention dropout"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < max_length:
        return False, f"the model's sliding window ({window}) is shorter than the examples"
    return True, ""


def choose_attention(
    model: PreTrainedModel, device: torch.device, *, max_length: int, half_precision: bool
) -> tuple[AttentionKind, str]:
    """The fastest exact attention for packed examples here, and why it was chosen.

    On CPU, one SDPA call per example measured fastest on the demo model (see bench/README).
    """
    applies, reason = flattened_layout_applies(model, max_length)
    if not applies:
        return "sdpa", f"block-diagonal mask: {reason}"
    if device.type == "cuda":
        if half_precision and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2", "flash-attn is installed"
        if half_precision and torch_varlen_works(device):
            return "torch_varlen", "PyTorch's varlen flash kernel passed its self-check"
    return "sdpa_segments", "one causal SDPA call per example"


def torch_varlen_works(device: torch.device) -> bool:
    """Runs PyTorch's varlen kernel once against per-example SDPA (forward and backward).

    Its signature and coverage differ between releases and cards, so it is used only where
    this self-check passes.
    """
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False

    class Probe(torch.nn.Module):
        num_key_value_groups = 2

    generator = torch.Generator(device=device).manual_seed(0)
    shapes = ((1, 4, 40, 64), (1, 2, 40, 64), (1, 2, 40, 64))
    tensors = [
        torch.randn(shape, device=device, dtype=torch.bfloat16, generator=generator)
        for shape in shapes
    ]
    lengths = (17, 23)
    results = []
    try:
        attentions: tuple[tuple[Callable[..., tuple[torch.Tensor, None]], dict[str, Any]], ...] = (
            (_sdpa_segments, {SEGMENTS_KWARG: lengths}),
            (_torch_varlen, attention_inputs("torch_varlen", lengths, device)),
        )
        for function, kwargs in attentions:
            inputs = [tensor.clone().requires_grad_() for tensor in tensors]
            output, _ = function(Probe(), *inputs, None, scaling=0.125, **kwargs)
            output.float().square().sum().backward()
            results.append([output.detach(), *(tensor.grad for tensor in inputs)])
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False
    return all(
        torch.allclose(left.float(), right.float(), atol=3e-2, rtol=3e-2)
        for left, right in zip(*results, strict=True)
    )


def attention_inputs(
    kind: AttentionKind, lengths: tuple[int, ...], device: torch.device
) -> dict[str, Any]:
    """Extra model-forward keywords that tell ``kind`` where a flattened row's examples are."""
    if kind == "sdpa_segments":
        return {SEGMENTS_KWARG: lengths}
    if kind in ("flash_attention_2", "torch_varlen"):
        boundaries = [0]
        for length in lengths:
            boundaries.append(boundaries[-1] + length)
        cumulative = torch.tensor(boundaries, dtype=torch.int32, device=device)
        longest = max(lengths)
        return {
            "cu_seq_lens_q": cumulative,
            "cu_seq_lens_k": cumulative,
            "max_length_q": longest,
            "max_length_k": longest,
        }
    return {}


@contextmanager
def attention_in_use(model: Any, kind: AttentionKind) -> Iterator[None]:
    """Switch ``model`` (a PEFT model or a bare transformers model) to ``kind``, then back."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    base.set_attn_implementation(implementation_name(kind))
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
