"""Preference tuning with DPO: the objective beside supervised fine-tuning's.

Direct Preference Optimization (Rafailov et al., 2023), sigmoid form: for a pair whose
better answer is ``c`` and worse ``r``, with ``log p`` the summed log-probability of an
answer's tokens (and the end-of-turn closing it) given the prompt,

    reward(y) = beta * (log p_policy(y) - log p_reference(y))
    loss      = -log sigmoid(reward(c) - reward(r))

averaged over the pairs of an optimizer step (all its micro-batches). The reference is the
starting point, frozen: the base model, or the ``init_from`` adapter, which is where the
trained adapter starts. So its log-probabilities are those of the policy before the first
step, computed once in a pass before training (``compute_reference``: no second model in
memory, no reference forward per step) and kept with each checkpoint, so a resumed run uses
the same ones.

The two answers of a pair are packed as two sequences of one micro-batch (the pipeline's
packing, without padding on variable-length attention), and each sequence's log-probability
is the sum of its trained positions' (``loss.trained_token_losses``).

Metrics, over the pairs of a step or an evaluation: the loss, the mean rewards of the
chosen and the rejected answers, their mean margin, and the reward accuracy: the share of
pairs ranked right, a tie counting half, so the starting point (every reward 0) scores 50%.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from tunery.pipeline.chat import Example, PairExample
from tunery.pipeline.packing import pack
from tunery.pipeline.reporting import Reporter

if TYPE_CHECKING:
    import torch

    from tunery.pipeline.attention import AttentionKind
    from tunery.pipeline.kernels import Kernels
    from tunery.pipeline.loss import LossKind
    from tunery.pipeline.train_setup import TrainSetup


@dataclass
class ReferenceLogprobs:
    """The starting point's summed log-probabilities of each pair's answers, float32 on the
    CPU: ``training[i]`` = (chosen, rejected) of training pair ``i``; ``validation`` alike."""

    training: torch.Tensor
    validation: torch.Tensor

    def as_tensors(self) -> dict[str, torch.Tensor]:
        return {"training": self.training, "validation": self.validation}

    @classmethod
    def from_tensors(cls, saved: dict[str, torch.Tensor]) -> ReferenceLogprobs:
        return cls(saved["training"].float().cpu(), saved["validation"].float().cpu())


@dataclass
class PreferenceObjective:
    """What the loop needs to train with DPO: ``beta``, the validation pairs, and the
    reference log-probabilities once computed (or restored from a checkpoint).
    ``batch_pairs``: pairs per forward pass without gradients (the training batch size)."""

    beta: float
    batch_pairs: int
    validation: list[PairExample]
    reference: ReferenceLogprobs | None = None


@dataclass(frozen=True)
class PairScores:
    """The DPO metrics over a set of pairs (means over the pairs)."""

    loss: float
    rewards_chosen: float
    rewards_rejected: float
    reward_margin: float
    reward_accuracy: float
    pairs: int

    def step_metrics(self) -> dict[str, float]:
        """The metrics as ``StepMetrics`` takes them (the loss apart)."""
        return {
            "rewards_chosen": self.rewards_chosen,
            "rewards_rejected": self.rewards_rejected,
            "reward_margin": self.reward_margin,
            "reward_accuracy": self.reward_accuracy,
        }


def pair_sequences(pairs: list[PairExample]) -> list[Example]:
    """The sequences of ``pairs`` as packed: chosen, rejected, chosen, rejected, ..."""
    return [side for pair in pairs for side in (pair.chosen, pair.rejected)]


def sequence_logprobs(
    model: Any,
    sequences: list[Example],
    *,
    pad_id: int,
    device: torch.device,
    attention: AttentionKind,
    loss: LossKind,
) -> tuple[torch.Tensor, int]:
    """Each sequence's summed log-probability of its trained targets [len(sequences)], in
    float32 at least, packed together in one forward pass; and the real tokens packed.

    The model must already use ``attention`` (``attention_in_use``).
    """
    import torch

    from tunery.pipeline.loss import trained_token_losses

    packed = pack(sequences, pad_id, device, attention, with_sequence_ids=True)
    losses, trained = trained_token_losses(loss, model, packed.forward_inputs(), packed.targets)
    assert packed.sequence_ids is not None
    sums = torch.zeros(len(sequences), dtype=losses.dtype, device=losses.device)
    return -sums.index_add(0, packed.sequence_ids[trained], losses), packed.real_tokens


def dpo_terms(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the loss, the chosen answer's reward and the rejected one's.

    ``policy``: [2 * pairs] log-probabilities as ``pair_sequences`` orders them;
    ``reference``: [pairs, 2] (chosen, rejected).
    """
    import torch

    chosen = beta * (policy[0::2] - reference[:, 0])
    rejected = beta * (policy[1::2] - reference[:, 1])
    return -torch.nn.functional.logsigmoid(chosen - rejected), chosen, rejected


def _sums(losses: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """[5] sums over pairs: loss, chosen rewards, rejected rewards, margins, right rankings."""
    import torch

    margin = chosen - rejected
    right = (margin > 0).to(margin.dtype) + 0.5 * (margin == 0).to(margin.dtype)
    return torch.stack(
        [losses.sum(), chosen.sum(), rejected.sum(), margin.sum(), right.sum()]
    ).detach()


def _scores(sums: torch.Tensor, pairs: int) -> PairScores:
    loss, chosen, rejected, margin, right = (value / pairs for value in sums.tolist())
    return PairScores(loss, chosen, rejected, margin, right, pairs)


def accumulate_preferences(
    setup: TrainSetup, kernels: Kernels, micro_batches: list[list[PairExample]], scaler: Any
) -> tuple[float, int, dict[str, float]]:
    """Forward and backward over one optimizer step's micro-batches of pairs.

    Returns the step's loss (the mean over all its pairs, so accumulation does not change
    the objective), the real tokens processed, and the step's DPO metrics.
    """
    import torch

    objective = setup.preference
    assert objective is not None and objective.reference is not None
    autocast = setup.precision.autocast
    step_pairs = sum(len(batch) for batch in micro_batches)
    totals = torch.zeros(5, dtype=torch.float64, device=setup.device)
    real_tokens = 0
    for micro_batch in micro_batches:
        indices = torch.tensor([pair.index for pair in micro_batch])
        reference = objective.reference.training[indices].to(setup.device)
        with torch.autocast(setup.device.type, dtype=autocast, enabled=autocast is not None):
            policy, tokens = sequence_logprobs(
                setup.model,
                pair_sequences(micro_batch),
                pad_id=setup.pad_id,
                device=setup.device,
                attention=kernels.attention,
                loss=kernels.loss,
            )
            losses, chosen, rejected = dpo_terms(policy, reference, objective.beta)
        scaler.scale(losses.sum() / step_pairs).backward()
        totals += _sums(losses, chosen, rejected)
        real_tokens += tokens
    # One device sync per step, not per micro-batch.
    scores = _scores(totals, step_pairs)
    return scores.loss, real_tokens, scores.step_metrics()


def logprobs_of(
    model: Any,
    pairs: list[PairExample],
    *,
    batch_pairs: int,
    pad_id: int,
    device: torch.device,
    autocast: torch.dtype | None,
    attention: AttentionKind,
    loss: LossKind,
) -> torch.Tensor:
    """[len(pairs), 2] (chosen, rejected) log-probabilities under ``model`` as it is now,
    without gradients and with dropout off; float32 on the CPU. Leaves the model's mode.

    ``batch_pairs`` pairs per forward pass: the training batch size, so the pass holds no
    more tokens at once than a training step (and saves no activations for a backward)."""
    import torch

    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for first in range(0, len(pairs), batch_pairs):
                chunk = pairs[first : first + batch_pairs]
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    values, _ = sequence_logprobs(
                        model,
                        pair_sequences(chunk),
                        pad_id=pad_id,
                        device=device,
                        attention=attention,
                        loss=loss,
                    )
                parts.append(values.float().view(-1, 2))
    finally:
        model.train(was_training)
    if not parts:
        return torch.zeros((0, 2))
    return torch.cat(parts).cpu()


def compute_reference(setup: TrainSetup, kernels: Kernels, reporter: Reporter) -> None:
    """The reference pass: the model as it starts scores every training and validation pair.

    Must run before the first optimizer step (the model is then the starting point) and
    with the loop's attention in use.
    """
    objective = setup.preference
    assert objective is not None
    started = time.perf_counter()
    options: dict[str, Any] = {
        "batch_pairs": objective.batch_pairs,
        "pad_id": setup.pad_id,
        "device": setup.device,
        "autocast": setup.precision.autocast,
        "attention": kernels.attention,
        "loss": kernels.loss,
    }
    objective.reference = ReferenceLogprobs(
        training=logprobs_of(setup.model, cast("list[PairExample]", setup.examples), **options),
        validation=logprobs_of(setup.model, objective.validation, **options),
    )
    reporter.log(
        f"reference log-probabilities of {len(setup.examples)} training and "
        f"{len(objective.validation)} validation pairs computed from the starting point in "
        f"{time.perf_counter() - started:.1f} s"
    )


def score_pairs(
    model: Any,
    pairs: list[PairExample],
    reference: torch.Tensor,
    *,
    beta: float,
    batch_pairs: int,
    pad_id: int,
    device: torch.device,
    autocast: torch.dtype | None,
    attention: AttentionKind,
    loss: LossKind,
) -> PairScores:
    """The DPO metrics of ``model`` on ``pairs`` against their ``reference`` [pairs, 2]."""
    import torch

    policy = logprobs_of(
        model,
        pairs,
        batch_pairs=batch_pairs,
        pad_id=pad_id,
        device=device,
        autocast=autocast,
        attention=attention,
        loss=loss,
    )
    with torch.no_grad():
        losses, chosen, rejected = dpo_terms(policy.view(-1), reference, beta)
    return _scores(_sums(losses.double(), chosen.double(), rejected.double()), len(pairs))
