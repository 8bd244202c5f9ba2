"""Cross-entropy over trained positions without materialising full-vocabulary logits.

The backbone's hidden states are taken at trained positions only; the output head and the
loss then run over them in chunks of positions, so at most one chunk of logits exists at a
time. Three kinds:

- ``liger``: Liger Kernel's fused linear cross-entropy (Triton, CUDA), where installed;
- ``chunked``: ``ChunkedLinearCrossEntropy`` below, on any device;
- ``logits``: the model's own forward with ``logits_to_keep`` (the reference), for models
  whose head does more than a matrix product (soft-capped or scaled logits), or whose head
  is trained.

Both fused kinds compute the gradient with respect to the hidden states in the forward
pass, chunk by chunk, which costs the same matrix products as the reference's backward.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

LossKind = Literal["liger", "chunked", "logits"]
LOGITS_CHUNK_ELEMENTS = 2**26
"""Logits computed at once: positions per chunk × vocabulary (256 MiB in fp32)."""
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def chunk_positions(vocab_size: int) -> int:
    """Positions per chunk for a vocabulary: LOGITS_CHUNK_ELEMENTS logits, at least one row."""
    return max(1, LOGITS_CHUNK_ELEMENTS // vocab_size)


def causal_lm(model: Any) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def choose_loss(model: Any, device: torch.device) -> tuple[LossKind, str]:
    """The loss kind for ``model`` on ``device``, and why."""
    lm = causal_lm(model)
    extras = [name for name in _HEAD_EXTRAS if getattr(lm.config, name, None) not in (None, 1.0)]
    if extras:
        return "logits", f"the model's head applies {extras[0]}"
    head = lm.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return "logits", "the output head is not a plain bias-free linear layer"
    if head.weight.requires_grad:
        return "logits", "the output head is trained"
    if device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        return "liger", "liger-kernel is installed (fused linear cross-entropy)"
    return "chunked", f"chunks of {chunk_positions(head.out_features)} positions"


def _chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    gradient: bool,
    hits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy of each position of ``hidden @ weight.T`` against ``targets`` (float32 at
    least), and, when ``gradient``, its gradient with respect to ``hidden``, chunk by chunk;
    ``hits``, when given, counts the targets that are the chunk's greedy prediction."""
    # Logits and the losses in at least float32, as the reference takes them.
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    losses = torch.empty(hidden.shape[0], dtype=accumulate, device=hidden.device)
    gradients = torch.empty_like(hidden) if gradient else None
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = (hidden[rows] @ weight.t()).to(accumulate)
        wanted = targets[rows].unsqueeze(1)
        normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
        losses[rows] = (normaliser - logits.gather(1, wanted)).squeeze(1)
        if hits is not None:
            hits += (logits.argmax(dim=-1) == targets[rows]).sum()
        if gradients is not None:
            # d(loss)/d(logits) = softmax - one_hot, computed in place over the chunk.
            probabilities = logits.sub_(normaliser).exp_()
            probabilities.scatter_add_(
                1,
                wanted,
                torch.full(wanted.shape, -1.0, dtype=logits.dtype, device=wanted.device),
            )
            gradients[rows] = probabilities.to(weight.dtype) @ weight
    return losses, gradients


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``sum(cross_entropy(hidden @ weight.T, targets))`` for a frozen ``weight``.

    ``hidden``: [positions, hidden_size]; ``targets``: [positions], every one trained.
    The forward pass computes the gradient with respect to ``hidden`` chunk by chunk and
    keeps only that; the backward pass scales it. ``weight`` gets no gradient (it must be
    frozen). Logits are taken in float32 for the softmax, as the reference does. ``hits``,
    when given, is a counter the forward pass adds the targets predicted exactly to (the
    logits exist only here, one chunk at a time).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        hits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx.counted = hits is not None
        losses, gradient = _chunked_cross_entropy(
            hidden, weight, targets, chunk, ctx.needs_input_grad[0], hits
        )
        ctx.save_for_backward(gradient)
        return losses.sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (gradient,) = ctx.saved_tensors
        nothing = (None, None, None, None) if ctx.counted else (None, None, None)
        return ((gradient * grad_output).to(gradient.dtype), *nothing)


class ChunkedLinearTokenLosses(torch.autograd.Function):
    """``cross_entropy(hidden @ weight.T, targets)`` per position, for a frozen ``weight``:
    as ``ChunkedLinearCrossEntropy`` without the sum, for objectives that weigh positions
    differently (each sequence's log-probability in DPO)."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        losses, gradient = _chunked_cross_entropy(
            hidden, weight, targets, chunk, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(gradient)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (gradient,) = ctx.saved_tensors
        return (gradient * grad_output.unsqueeze(1)).to(gradient.dtype), None, None, None


def trained_loss_sum(
    kind: LossKind, model: Any, forward_inputs: dict[str, Any], targets: torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy over ``targets`` (IGNORE where nothing is trained).

    ``forward_inputs``: the model-forward keywords (input ids, position ids, attention
    inputs); ``targets`` has the shape of the input ids.
    """
    return trained_loss_and_hits(kind, model, forward_inputs, targets)[0]


def trained_loss_and_hits(
    kind: LossKind, model: Any, forward_inputs: dict[str, Any], targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``trained_loss_sum`` and how many trained targets the model predicts exactly
    (greedy), counted from the logits the loss computes anyway; None with ``liger``, whose
    fused loss never has them."""
    from tunery.pipeline.chat import IGNORE

    if kind == "logits":
        trained = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
        output = model(**forward_inputs, logits_to_keep=trained, use_cache=False)
        logits = output.logits.float()
        wanted = targets[:, trained]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            wanted.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        # IGNORE is never an argmax, so untrained positions never count.
        return loss, (logits.detach().argmax(dim=-1) == wanted).sum()
    lm = causal_lm(model)
    hidden = lm.get_decoder()(**forward_inputs, use_cache=False).last_hidden_state
    selected = targets != IGNORE
    hidden, wanted = hidden[selected], targets[selected]
    weight = lm.get_output_embeddings().weight
    if kind == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, wanted), None
    hits = torch.zeros((), dtype=torch.long, device=hidden.device)
    loss = ChunkedLinearCrossEntropy.apply(
        hidden, weight, wanted, chunk_positions(weight.shape[0]), hits
    )
    return loss, hits


def trained_token_losses(
    kind: LossKind, model: Any, forward_inputs: dict[str, Any], targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each trained target (minus its log-probability), float32 at least.

    Returns the losses [trained positions] and the boolean mask of ``targets`` they belong
    to, in row-major order. Liger's fused loss only sums, so ``liger`` runs as ``chunked``.
    """
    from tunery.pipeline.chat import IGNORE

    selected = targets != IGNORE
    if kind == "logits":
        trained = selected.any(dim=0).nonzero().squeeze(-1)
        output = model(**forward_inputs, logits_to_keep=trained, use_cache=False)
        logits = output.logits.float()
        kept = targets[:, trained]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            kept.reshape(-1),
            ignore_index=IGNORE,
            reduction="none",
        )
        # The kept columns hold every trained position, in the same row-major order.
        return losses[(kept != IGNORE).reshape(-1)], selected
    lm = causal_lm(model)
    hidden = lm.get_decoder()(**forward_inputs, use_cache=False).last_hidden_state
    weight = lm.get_output_embeddings().weight
    losses = ChunkedLinearTokenLosses.apply(
        hidden[selected], weight, targets[selected], chunk_positions(weight.shape[0])
    )
    return losses, selected
