"""Step 6: gradient steps, with padding-free packing and resumable checkpoints.

Each micro-batch of ``batch_size`` examples is packed into as few rows as possible, with
position ids restarting at every example. transformers reads restarting positions as
packed sequences and masks attention block-diagonally, so examples never see each other
and no compute goes to padding. Logits are computed only where a target is trained.

The data order of an epoch depends on the seed and the epoch alone, so an optimizer step
number is a complete data position: a run resumed from a checkpoint sees the same batches,
and with the RNG and optimizer state restored continues as if uninterrupted.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.errors import RunCancelled
from tunery.pipeline.config import TrainingConfig
from tunery.pipeline.data import IGNORE, Example
from tunery.pipeline.reporting import EtaEstimator, Reporter, StepMetrics

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from tunery.pipeline.load import Precision

COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS_KEPT = 2


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


def pack(batch: list[Example], pad_id: int, device: torch.device) -> PackedBatch:
    """First-fit-decreasing packing of ``batch`` into rows; tails are padded as their own
    segment so they attend only to themselves and are never trained."""
    import torch

    # Rows as long as the longest example: the attention kernels compute the whole row
    # (masked pairs included), so shorter rows cost fewer attention pairs for the same tokens.
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

    return PackedBatch(tensor(ids), tensor(positions), tensor(targets), sum(fill))


def batch_loss_sum(model: PeftModel, batch: PackedBatch) -> torch.Tensor:
    """Summed cross-entropy over trained targets; logits only where a target is trained."""
    import torch

    trained = (batch.targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
    output = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        logits_to_keep=trained,
        use_cache=False,
    )
    logits = output.logits.float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        batch.targets[:, trained].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


@dataclass
class TrainerState:
    """What a checkpoint records besides tensors, and what the run reports at the end."""

    step: int = 0
    trained_tokens: int = 0
    training_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


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


def train(setup: TrainSetup, reporter: Reporter) -> TrainerState:
    """Run the optimizer steps, resuming from the newest complete checkpoint if there is one.

    Raises RunCancelled (between steps) when ``reporter.should_stop()`` turns true.
    """
    import torch
    from transformers import get_scheduler

    config = setup.config
    budget = plan_budget(len(setup.examples), config)
    model = setup.model
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
    scaler = torch.amp.GradScaler(enabled=setup.precision.autocast == torch.float16)
    state = TrainerState()
    resumed = _load_newest_checkpoint(setup, optimizer, scheduler, scaler)
    if resumed is not None:
        state = resumed
        reporter.log(f"resumed from the checkpoint at step {state.step}")
        reporter.resumed(list(state.history))  # the loop appends to state.history
    autocast: Callable[[], Any] = (
        (lambda: torch.autocast(setup.device.type, dtype=setup.precision.autocast))
        if setup.precision.autocast is not None
        else nullcontext
    )
    eta = EtaEstimator()
    model.train()
    while state.step < budget.total_steps:
        if reporter.should_stop():
            raise RunCancelled(f"cancelled at step {state.step} of {budget.total_steps}")
        started = time.perf_counter()
        micro_batches = step_micro_batches(state.step, setup.examples, budget, config)
        step_targets = sum(example.trained_tokens for batch in micro_batches for example in batch)
        loss_total = 0.0
        real_tokens = 0
        for micro_batch in micro_batches:
            packed = pack(micro_batch, setup.pad_id, setup.device)
            with autocast():
                loss = batch_loss_sum(model, packed) / step_targets
            scaler.scale(loss).backward()
            loss_total += loss.item()
            real_tokens += packed.real_tokens
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
        if state.step % config.checkpoint_every_steps == 0 and state.step < budget.total_steps:
            save_checkpoint(setup, state, optimizer, scheduler, scaler)
    return state


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    setup: TrainSetup, state: TrainerState, optimizer: Any, scheduler: Any, scaler: Any
) -> Path:
    """Write a checkpoint atomically: temp dir, fsync, rename, then the marker last."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = setup.checkpoint_dir
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    staging = root / f".tmp-step-{state.step:08d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    adapter = {
        key: value.detach().cpu().contiguous()
        for key, value in get_peft_model_state_dict(setup.model).items()
    }
    save_file(adapter, staging / "adapter.safetensors")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
        },
        staging / "training_state.pt",
    )
    (staging / "trainer_state.json").write_text(
        json.dumps(
            {
                "fingerprint": setup.fingerprint,
                "step": state.step,
                "trained_tokens": state.trained_tokens,
                "training_seconds": state.training_seconds,
                "history": state.history,
            }
        )
    )
    for item in staging.iterdir():
        _fsync(item)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    marker = final / COMPLETE_MARKER
    marker.write_text("ok\n")
    _fsync(marker)
    _fsync(root)
    complete = complete_checkpoints(root)
    for old in complete[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoints whose marker was written, oldest first; half-written ones are ignored."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.glob("step-*") if (path / COMPLETE_MARKER).is_file())


def _load_newest_checkpoint(
    setup: TrainSetup, optimizer: Any, scheduler: Any, scaler: Any
) -> TrainerState | None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for checkpoint in reversed(complete_checkpoints(setup.checkpoint_dir)):
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        if saved["fingerprint"] != setup.fingerprint:
            continue
        adapter = load_file(checkpoint / "adapter.safetensors", device=str(setup.device))
        set_peft_model_state_dict(setup.model, adapter)
        training = torch.load(
            checkpoint / "training_state.pt", weights_only=True, map_location=setup.device
        )
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        scaler.load_state_dict(training["scaler"])
        torch.random.set_rng_state(training["rng"]["torch"].cpu())
        if "cuda" in training["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in training["rng"]["cuda"]])
        return TrainerState(
            step=saved["step"],
            trained_tokens=saved["trained_tokens"],
            training_seconds=saved["training_seconds"],
            history=saved["history"],
        )
    return None
