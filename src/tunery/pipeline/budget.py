"""How long a run is and which examples each optimizer step trains on. Torch-free.

The data order of an epoch depends on the seed and the epoch alone, so an optimizer step
number and the micro-batch size are a complete data position: a run resumed from a
checkpoint sees the same batches. A micro-batch holds ``batch_size`` examples per device
(``pipeline.distributed`` splits it across them). The control plane plans budgets with the
same function to estimate a submission.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from tunery.pipeline.config import TrainingConfig


@dataclass(frozen=True)
class Budget:
    """How long the run is: optimizer steps per epoch, in all, and epochs touched; and how
    many examples a micro-batch holds across all devices."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    micro_batch_examples: int


def effective_batch(config: TrainingConfig, devices: int) -> int:
    """Examples per optimizer step: batch size (per device) * devices * accumulation."""
    return config.batch_size * devices * config.gradient_accumulation_steps


def plan_budget(example_count: int, config: TrainingConfig, *, devices: int = 1) -> Budget:
    """The budget of a run on ``devices`` data-parallel devices (``batch_size`` each)."""
    size = config.batch_size * devices
    micro = math.ceil(example_count / size)
    per_epoch = math.ceil(micro / config.gradient_accumulation_steps)
    if config.max_steps > 0:
        return Budget(
            micro, per_epoch, config.max_steps, math.ceil(config.max_steps / per_epoch), size
        )
    return Budget(micro, per_epoch, per_epoch * config.epochs, config.epochs, size)


def epoch_order(example_count: int, seed: int, epoch: int) -> list[int]:
    order = list(range(example_count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


Item = TypeVar("Item")


def step_micro_batches(
    step: int, examples: Sequence[Item], budget: Budget, config: TrainingConfig
) -> list[list[Item]]:
    """The micro-batches of 0-based optimizer step ``step``; epochs wrap for step budgets."""
    epoch, within = divmod(step, budget.steps_per_epoch)
    order = epoch_order(len(examples), config.seed, epoch)
    first = within * config.gradient_accumulation_steps
    last = min(first + config.gradient_accumulation_steps, budget.micro_batches_per_epoch)
    size = budget.micro_batch_examples
    return [[examples[i] for i in order[m * size : (m + 1) * size]] for m in range(first, last)]
