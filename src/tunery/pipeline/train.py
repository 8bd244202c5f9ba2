"""The gradient steps: packed micro-batches, accumulated, clipped, checkpointed.

Each optimizer step trains on the micro-batches ``budget.step_micro_batches`` names, packed
without padding (``tunery.pipeline.packing``). The loss runs over trained positions only, in
chunks, so full-vocabulary logits are never materialised (``tunery.pipeline.loss``). With
the RNG and optimizer state restored from a checkpoint, a resumed run continues as if
uninterrupted. On several processes each trains on its share of every step and the
gradients are all-reduced (``tunery.pipeline.distributed``); rank 0 writes the checkpoints.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from tunery.errors import RunCancelled, RunPaused
from tunery.pipeline.budget import plan_budget, step_micro_batches
from tunery.pipeline.card_fit import out_of_memory_fails, refuse_what_cannot_fit
from tunery.pipeline.chat import Example, sequences
from tunery.pipeline.checkpoints import (
    load_newest_checkpoint,
    save_checkpoint,
    saved_micro_batch_examples,
)
from tunery.pipeline.distributed import DataParallel
from tunery.pipeline.divergence import DivergenceGuard
from tunery.pipeline.packing import batch_loss_and_hits, pack
from tunery.pipeline.reporting import EtaEstimator, Reporter, StepMetrics
from tunery.pipeline.train_setup import TrainerState, TrainSetup

if TYPE_CHECKING:
    from tunery.pipeline.kernels import Kernels


def train(setup: TrainSetup, reporter: Reporter) -> TrainerState:
    """Run the optimizer steps, resuming from the newest complete checkpoint if there is one.

    Applies the layer-level kernel choices to the model in place (``apply_kernels``); the
    attention choice holds for the loop only. Evaluates as ``setup.evaluation`` plans and
    stops early when it says so; stops after the current step when
    ``reporter.should_finish()`` turns true. Raises RunCancelled (between steps) when
    ``reporter.should_stop()`` turns true, RunPaused after the current step's checkpoint
    when ``reporter.should_pause()`` does (a run resumed from it trains every step once),
    TrainingDiverged when the loss diverges (``tunery.pipeline.divergence``: the exception
    carries the best step's adapter) and TrainingOutOfMemory before the first step when the
    run cannot fit its card, or when the GPU runs out of memory anyway
    (``tunery.pipeline.card_fit``).
    """
    import torch
    from transformers import get_scheduler

    from tunery.pipeline.attention import attention_in_use
    from tunery.pipeline.evaluation import evaluate_or_finish
    from tunery.pipeline.kernels import apply_kernels
    from tunery.pipeline.preference import compute_reference

    config = setup.config
    parallel = setup.data_parallel or DataParallel.single(setup.device)
    budget = plan_budget(len(setup.examples), config, devices=planned_devices(setup))
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
    state = TrainerState(micro_batch_examples=budget.micro_batch_examples)
    resumed = load_newest_checkpoint(setup, optimizer, scheduler, scaler)
    if resumed is not None:
        state = resumed
        reporter.log(f"resumed from the checkpoint at step {state.step}")
        reporter.resumed(list(state.history))  # the loop appends to state.history
        state.micro_batch_examples = budget.micro_batch_examples
    if setup.evaluation is not None:
        setup.evaluation.resume(state.early_stopping)
    parallel.start(trainable)
    eta = EtaEstimator()
    guard = DivergenceGuard.watching(budget.total_steps, state.history)
    model.train()
    with attention_in_use(model, kernels.attention), out_of_memory_fails(setup):
        if setup.preference is not None and setup.preference.reference is None:
            compute_reference(setup, kernels, reporter)
        while state.step < budget.total_steps:
            if reporter.should_stop():
                raise RunCancelled(f"cancelled at step {state.step} of {budget.total_steps}")
            started = time.perf_counter()
            micro_batches = parallel.share(
                state.step,
                step_micro_batches(state.step, setup.examples, budget, config),
                batch_size=config.batch_size,
                seed=config.seed,
            )
            loss_total, real_tokens, objective_metrics = parallel.all_reduce(
                trainable, *_objective_step(setup, kernels, micro_batches, scaler)
            )
            guard.observe(state.step + 1, loss_total, model, done_steps=state.step)
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
                **objective_metrics,
            )
            state.history.append(metrics.as_dict())
            reporter.metrics(metrics)
            # Evaluated before the checkpoint, so a resumed run never misses an evaluation.
            ends_here = parallel.agree(evaluate_or_finish(setup, kernels, state, budget, reporter))
            checkpoint_due = state.step % config.checkpoint_every_steps == 0
            # A pause is agreed by every rank with the step's all-reduce, as Finish now is.
            pausing = not ends_here and reporter.should_pause()
            if (
                (checkpoint_due or pausing)
                and state.step < budget.total_steps
                and parallel.world.is_main
            ):
                saved = save_checkpoint(setup, state, optimizer, scheduler, scaler)
                if setup.on_checkpoint is not None:
                    setup.on_checkpoint(saved)
            if ends_here:
                break
            if pausing and state.step < budget.total_steps:
                raise RunPaused(state.step)
    return state


def planned_devices(setup: TrainSetup) -> int:
    """The devices the run's budget is planned for: those of the checkpoint it resumes
    (its micro-batch over ``batch_size``), else the processes training it now."""
    saved = saved_micro_batch_examples(setup)
    if saved is not None:
        return max(1, saved // setup.config.batch_size)
    return setup.data_parallel.world.size if setup.data_parallel is not None else 1


def default_kernels(setup: TrainSetup) -> Kernels:
    """``choose_kernels`` for a setup that names none, with the config's compile setting."""
    from tunery.pipeline.kernels import choose_kernels

    return choose_kernels(
        setup.model,
        setup.device,
        max_length=max(len(sequence.input_ids) for sequence in sequences(setup.examples)),
        half_precision=setup.precision.autocast is not None,
        compile_setting=setup.config.compile,
    )


def _objective_step(
    setup: TrainSetup, kernels: Kernels, micro_batches: list[list[Any]], scaler: Any
) -> tuple[float, int, dict[str, float]]:
    """One optimizer step's gradients by the run's objective: the step's loss, the real
    tokens it processed, and the objective's own metrics (DPO's rewards; SFT's mean token
    accuracy where the loss kernel keeps logits).

    A rank of a data-parallel run may get no examples (a short last micro-batch): it adds
    nothing, and names the same metrics as the others, for the all-reduce."""
    if setup.preference is not None:
        from tunery.pipeline.preference import PairScores, accumulate_preferences

        if not micro_batches:
            return 0.0, 0, PairScores(0.0, 0.0, 0.0, 0.0, 0.0, 0).step_metrics()
        return accumulate_preferences(setup, kernels, micro_batches, scaler)
    if not micro_batches:
        return 0.0, 0, {} if kernels.loss == "liger" else {"accuracy": 0.0}
    loss, tokens, accuracy = _accumulate_gradients(setup, kernels, micro_batches, scaler)
    return loss, tokens, {} if accuracy is None else {"accuracy": accuracy}


def _accumulate_gradients(
    setup: TrainSetup, kernels: Kernels, micro_batches: list[list[Example]], scaler: Any
) -> tuple[float, int, float | None]:
    """Forward and backward over one optimizer step's micro-batches.

    Returns the step's loss (per trained token of the whole step, so accumulation does not
    change the objective), the real tokens it processed, and its mean token accuracy (the
    share of trained tokens predicted exactly before the update; None where the loss keeps
    no logits).
    """
    import torch

    autocast = setup.precision.autocast
    step_targets = sum(example.trained_tokens for batch in micro_batches for example in batch)
    losses = []
    hits: list[torch.Tensor] = []
    counted = True
    real_tokens = 0
    for micro_batch in micro_batches:
        packed = pack(micro_batch, setup.pad_id, setup.device, kernels.attention)
        with torch.autocast(setup.device.type, dtype=autocast, enabled=autocast is not None):
            loss, correct = batch_loss_and_hits(setup.model, packed, kernels.loss)
            loss = loss / step_targets
        scaler.scale(loss).backward()
        losses.append(loss.detach().float())
        if correct is None:
            counted = False
        else:
            hits.append(correct.float())
        real_tokens += packed.real_tokens
    # One device sync per step, not per micro-batch.
    correct = torch.stack(hits).sum() if hits else torch.zeros((), device=setup.device)
    loss_total, correct_total = torch.stack([torch.stack(losses).sum(), correct]).tolist()
    accuracy = correct_total / step_targets if counted and step_targets else None
    return loss_total, real_tokens, accuracy
