"""Whether a loaded run fits the card it is on, by the memory planner (``pipeline.memory``).

The control plane checks a submission against its tier's card from estimated row lengths
(``runs.fit``); the worker checks again before the first step, with the prepared examples'
exact tokens, the model as loaded and the memory of the card it got. A run that cannot fit
fails at once with the setting that would; an out-of-memory error that happens anyway gets
the same hint. Both are TrainingOutOfMemory, never retried: the same recipe on the same card
runs out again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tunery.errors import ConfigError, TuneryError
from tunery.pipeline.chat import sequences
from tunery.pipeline.memory import GIB, ModelShape, TrainingPlan, fit_problem

if TYPE_CHECKING:
    import torch

    from tunery.pipeline.train_setup import TrainSetup


class TrainingOutOfMemory(TuneryError):
    """The run does not fit the GPU's memory. Not transient: the same recipe on the same card
    fails again, so the run fails at once with settings that would fit."""

    code = "out_of_memory"


def card_memory_gib(device: torch.device) -> float | None:
    """The memory of the CUDA card ``device`` names; None off CUDA."""
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / GIB


def setup_fit_problem(setup: TrainSetup, card_gib: float) -> ConfigError | None:
    """Why ``setup`` would not fit a card of ``card_gib``, or None (also when the model's
    config lacks the planner's size fields)."""
    try:
        shape = ModelShape.from_config(setup.model.config.to_dict())
    except ValueError:
        return None
    model = setup.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    plan = TrainingPlan(
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        gradient_checkpointing=setup.config.gradient_checkpointing,
        quantize_base="nf4" if getattr(base, "is_loaded_in_4bit", False) else "none",
        value_bytes=2 if setup.precision.autocast is not None else 4,
        sequences_per_example=2 if setup.preference is not None else 1,
        devices=setup.data_parallel.world.size if setup.data_parallel is not None else 1,
    )
    longest = max((len(sequence.input_ids) for sequence in sequences(setup.examples)), default=1)
    return fit_problem(
        shape,
        plan,
        batch_size=setup.config.batch_size,
        sequence_length=longest,
        gpu_memory_gib=card_gib,
    )


def refuse_what_cannot_fit(setup: TrainSetup) -> None:
    """Raise TrainingOutOfMemory before the first step when the plan exceeds the card."""
    card = card_memory_gib(setup.device)
    problem = setup_fit_problem(setup, card) if card is not None else None
    if problem is not None:
        raise TrainingOutOfMemory(
            f"the run would not fit this card: {problem.problems[0]}", hint=problem.hint
        )


@contextmanager
def out_of_memory_fails(setup: TrainSetup) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into TrainingOutOfMemory with settings that fit."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise TrainingOutOfMemory(
            f"the GPU ran out of memory while training: {str(error).splitlines()[0]}",
            hint=out_of_memory_hint(setup),
        ) from None


def out_of_memory_hint(setup: TrainSetup) -> str:
    """What to change so the run fits its card: the planner's answer, else the usual levers."""
    config = setup.config
    generic = f"lower training.batch_size (now {config.batch_size}) or training.max_seq_length" + (
        "" if config.gradient_checkpointing else ", or turn gradient_checkpointing on"
    )
    card = card_memory_gib(setup.device)
    problem = setup_fit_problem(setup, card) if card is not None else None
    return problem.hint if problem is not None and problem.hint else generic
