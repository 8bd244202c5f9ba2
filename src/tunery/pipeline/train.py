"""The gradient steps, with padding-free packing and resumable checkpoints.

Each micro-batch of ``batch_size`` examples is packed without padding: with a variable-length
attention kernel, all of it in one row with the examples' boundaries passed to the kernel;
otherwise into as few rows as possible, with position ids restarting at every example, which
transformers turns into a block-diagonal mask (see ``tunery.pipeline.attention``). Either
way examples never see each other. The loss runs over trained positions only, in chunks,
so full-vocabulary logits are never materialised (``tunery.pipeline.loss``).

The data order of an epoch depends on the seed and the epoch alone, so an optimizer step
number is a complete data position: a run resumed from a checkpoint sees the same batches,
and with the RNG and optimizer state restored continues as if uninterrupted.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.errors import RunCancelled, TuneryError
from tunery.pipeline.card_fit import out_of_memory_fails, refuse_what_cannot_fit
from tunery.pipeline.chat import IGNORE, Example
from tunery.pipeline.checkpoints import complete_checkpoints as complete_checkpoints  # re-export
from tunery.pipeline.checkpoints import load_newest_checkpoint, save_checkpoint
from tunery.pipeline.config import TrainingConfig
from tunery.pipeline.reporting import EtaEstimator, Reporter, StepMetrics

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from tunery.pipeline.attention import AttentionKind
    from tunery.pipeline.evaluation import EvaluationPlan
    from tunery.pipeline.kernels import Kernels
    from tunery.pipeline.load import Precision
    from tunery.pipeline.loss import LossKind


class TrainingDiverged(TuneryError):
    """The loss became NaN or infinite. A user error: the same recipe diverges again."""

    code = "training_diverged"


@dataclass(frozen=True)
class Budget:
    """How long the run is: optimizer steps per epoch, in all, and epochs touched."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int


def plan_budget(example_count: int, config: TrainingConfig) -> Budget:
    micro = math.ceil(example_count / config.batch_size)
    per_epoch = math.ceil(micro / config.gradient_accumulation_steps)
    if config.max_steps > 0:
        return Budget(micro, per_epoch, config.max_steps, math.ceil(config.max_steps / per_epoch))
    return Budget(micro, per_epoch, per_epoch * config.epochs, config.epochs)


def epoch_order(example_count: int, seed: int, epoch: int) -> list[int]:
    order = list(range(example_count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_micro_batches(
    step: int, examples: list[Example], budget: Budget, config: TrainingConfig
) -> list[list[Example]]:
    """The micro-batches of 0-based optimizer step ``step``; epochs wrap for step budgets."""
    epoch, within = divmod(step, budget.steps_per_epoch)
    order = epoch_order(len(examples), config.seed, epoch)
    first = within * config.gradient_accumulation_steps
    last = min(first + config.gradient_accumulation_steps, budget.micro_batches_per_epoch)
    size = config.batch_size
    return [[examples[i] for i in order[m * size : (m + 1) * size]] for m in range(first, last)]


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # [rows, length], restarting at each example
    targets: torch.Tensor  # [rows, length], IGNORE where nothing is trained
    real_tokens: int
    attention_inputs: dict[str, Any] = field(default_factory=dict)  # where examples start

    def forward_inputs(self) -> dict[str, Any]:
        """The model-forward keywords for this batch (the attention's included)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            **self.attention_inputs,
        }


def pack(
    batch: list[Example], pad_id: int, device: torch.device, attention: AttentionKind = "sdpa"
) -> PackedBatch:
    """Pack ``batch`` for ``attention``: one flattened row for variable-length kernels, else
    first-fit-decreasing rows whose tails are padded as their own segment (attending only to
    themselves, never trained)."""
    import torch

    from tunery.pipeline.attention import FLATTENED, attention_inputs

    if attention in FLATTENED:
        rows = [list(batch)]
        fill = [sum(len(example.input_ids) for example in batch)]
    else:
        rows, fill = _first_fit_rows(batch)
    width = max(fill)
    ids, positions, targets = [], [], []
    for row, used in zip(rows, fill, strict=True):
        row_ids: list[int] = []
        row_positions: list[int] = []
        row_targets: list[int] = []
        for example in row:
            row_ids.extend(example.input_ids)
            row_positions.extend(range(len(example.input_ids)))
            row_targets.extend(example.targets)
        tail = width - used
        row_ids.extend([pad_id] * tail)
        row_positions.extend(range(tail))
        row_targets.extend([IGNORE] * tail)
        ids.append(row_ids)
        positions.append(row_positions)
        targets.append(row_targets)

    def tensor(values: list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    lengths = tuple(len(example.input_ids) for example in rows[0])
    extra = attention_inputs(attention, lengths, device) if attention in FLATTENED else {}
    return PackedBatch(tensor(ids), tensor(positions), tensor(targets), sum(fill), extra)


def _first_fit_rows(batch: list[Example]) -> tuple[list[list[Example]], list[int]]:
    # Rows as long as the longest example: masked attention computes the whole row (masked
    # pairs included), so shorter rows cost fewer attention pairs for the same tokens.
    capacity = max(len(example.input_ids) for example in batch)
    rows: list[list[Example]] = []
    fill: list[int] = []
    for example in sorted(batch, key=lambda item: len(item.input_ids), reverse=True):
        size = len(example.input_ids)
        for index, used in enumerate(fill):
            if used + size <= capacity:
                rows[index].append(example)
                fill[index] += size
                break
        else:
            rows.append([example])
            fill.append(size)
    return rows, fill


def batch_loss_sum(model: PeftModel, batch: PackedBatch, loss: LossKind = "logits") -> torch.Tensor:
    """Summed cross-entropy over trained targets; logits only where a target is trained.

    The model must already use the attention ``batch`` was packed for (``attention_in_use``).
    """
    from tunery.pipeline.loss import trained_loss_sum

    return trained_loss_sum(loss, model, batch.forward_inputs(), batch.targets)


@dataclass
class TrainerState:
    """What a checkpoint records besides tensors, and what the run reports at the end."""

    step: int = 0
    trained_tokens: int = 0
    training_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    early_stopping: dict[str, Any] | None = None
    """The early-stopping state after the latest evaluation (``EarlyStopping.as_dict``)."""
    finished_early: bool = False
    """"Finish now" ended training before its budget."""


@dataclass(frozen=True)
class TrainSetup:
    model: PeftModel
    examples: list[Example]
    config: TrainingConfig
    precision: Precision
    device: torch.device
    pad_id: int
    checkpoint_dir: Path
    fingerprint: str  # identifies the recipe + data; a checkpoint of another is not resumed
    kernels: Kernels | None = None  # None: choose_kernels for the device and model
    evaluation: EvaluationPlan | None = None  # None: no validation data, no evaluations
    on_checkpoint: Callable[[Path], None] | None = None  # each complete checkpoint's directory


def train(setup: TrainSetup, reporter: Reporter) -> TrainerState:
    """Run the optimizer steps, resuming from the newest complete checkpoint if there is one.

    Applies the layer-level kernel choices to the model in place (``apply_kernels``); the
    attention choice holds for the loop only. Evaluates as ``setup.evaluation`` plans and
    stops early when it says so; stops after the current step when
    ``reporter.should_finish()`` turns true. Raises RunCancelled (between steps) when
    ``reporter.should_stop()`` turns true, TrainingDiverged on a non-finite loss and
    TrainingOutOfMemory before the first step when the run cannot fit its card, or when the
    GPU runs out of memory anyway (``tunery.pipeline.card_fit``).
    """
    import torch
    from transformers import get_scheduler

    from tunery.pipeline.attention import attention_in_use
    from tunery.pipeline.evaluation import evaluate_or_finish
    from tunery.pipeline.kernels import apply_kernels

    config = setup.config
    budget = plan_budget(len(setup.examples), config)
    refuse_what_cannot_fit(setup)
    model = setup.model
    kernels = setup.kernels or default_kernels(setup)
    apply_kernels(model, kernels)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * budget.total_steps),
        num_training_steps=budget.total_steps,
    )
    # Loss scaling keeps fp16 gradients from underflowing; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(enabled=setup.precision.autocast == torch.float16)
    state = TrainerState()
    resumed = load_newest_checkpoint(setup, optimizer, scheduler, scaler)
    if resumed is not None:
        state = resumed
        reporter.log(f"resumed from the checkpoint at step {state.step}")
        reporter.resumed(list(state.history))  # the loop appends to state.history
    if setup.evaluation is not None:
        setup.evaluation.resume(state.early_stopping)
    eta = EtaEstimator()
    model.train()
    with attention_in_use(model, kernels.attention), out_of_memory_fails(setup):
        while state.step < budget.total_steps:
            if reporter.should_stop():
                raise RunCancelled(f"cancelled at step {state.step} of {budget.total_steps}")
            started = time.perf_counter()
            micro_batches = step_micro_batches(state.step, setup.examples, budget, config)
            loss_total, real_tokens = _accumulate_gradients(setup, kernels, micro_batches, scaler)
            if not math.isfinite(loss_total):
                raise _diverged(loss_total, state.step + 1)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm).item()
            learning_rate = scheduler.get_last_lr()[0]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if setup.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            eta.add(seconds)
            state.step += 1
            state.trained_tokens += real_tokens
            state.training_seconds += seconds
            metrics = StepMetrics(
                step=state.step,
                total_steps=budget.total_steps,
                epoch=round(state.step / budget.steps_per_epoch, 4),
                epochs=budget.epochs,
                loss=loss_total,
                learning_rate=learning_rate,
                grad_norm=grad_norm,
                tokens_per_second=real_tokens / seconds if seconds > 0 else 0.0,
                trained_tokens=state.trained_tokens,
                training_seconds=state.training_seconds,
                eta_seconds=eta.remaining(budget.total_steps - state.step),
            )
            state.history.append(metrics.as_dict())
            reporter.metrics(metrics)
            # Evaluated before the checkpoint, so a resumed run never misses an evaluation.
            ends_here = evaluate_or_finish(setup, kernels, state, budget, reporter)
            if state.step % config.checkpoint_every_steps == 0 and state.step < budget.total_steps:
                saved = save_checkpoint(setup, state, optimizer, scheduler, scaler)
                if setup.on_checkpoint is not None:
                    setup.on_checkpoint(saved)
            if ends_here:
                break
    return state


def default_kernels(setup: TrainSetup) -> Kernels:
    """``choose_kernels`` for a setup that names none, with the config's compile setting."""
    from tunery.pipeline.kernels import choose_kernels

    return choose_kernels(
        setup.model,
        setup.device,
        max_length=max(len(example.input_ids) for example in setup.examples),
        half_precision=setup.precision.autocast is not None,
        compile_setting=setup.config.compile,
    )


def _accumulate_gradients(
    setup: TrainSetup, kernels: Kernels, micro_batches: list[list[Example]], scaler: Any
) -> tuple[float, int]:
    """Forward and backward over one optimizer step's micro-batches.

    Returns the step's loss (per trained token of the whole step, so accumulation does not
    change the objective) and the real tokens it processed.
    """
    import torch

    autocast = setup.precision.autocast
    step_targets = sum(example.trained_tokens for batch in micro_batches for example in batch)
    losses = []
    real_tokens = 0
    for micro_batch in micro_batches:
        packed = pack(micro_batch, setup.pad_id, setup.device, kernels.attention)
        with torch.autocast(setup.device.type, dtype=autocast, enabled=autocast is not None):
            loss = batch_loss_sum(setup.model, packed, kernels.loss) / step_targets
        scaler.scale(loss).backward()
        losses.append(loss.detach())
        real_tokens += packed.real_tokens
    # One device sync per step, not per micro-batch.
    return torch.stack(losses).sum().item(), real_tokens


def _diverged(loss: float, step: int) -> TrainingDiverged:
    # Checked before the optimizer step, so no NaN reaches the weights or a checkpoint.
    return TrainingDiverged(
        f"training diverged: the loss became {loss} at step {step}",
        hint="lower training.learning_rate or lora.alpha, or clip harder with a lower "
        "training.max_grad_norm",
    )
