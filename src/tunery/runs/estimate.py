"""Cost before play: what a submission would train, how long and at what price.

Pure arithmetic on a checked submission (``runs.intake`` checks, plans memory and calls
``compute_estimate`` once per submission or estimate request); the only query is the
throughput runs of the same model on the same tier measured.

**Tokens.** The control plane loads no tokenizer: each row's tokens are estimated from its
characters (``runs.data_shape``), cut at ``max_seq_length`` (else the catalog model's
context). Steps are exact:
the rows held out for samples and validation are counted as ``pipeline.holdout`` holds them
out, and the budget is the training loop's own ``plan_budget``.

**Throughput.** Measured on the latest completed runs of the same base model on the same
tier (the median of up to MEASURED_RUNS), in this module's own token unit, so the
characters-per-token approximation cancels out for a model that was measured. Until there
are any, the prior: ``6 * parameters * tokens`` FLOPs over the tier's assumed training
TFLOPS (``TierSettings.assumed_tflops``; evaluations cost a third of that per token, being
forward passes). Each submitted run records its estimate (``Run.estimate``); once it
completes, its training seconds are the measurement.

**Several devices.** A tier that trains a run on N devices (``TierSettings.devices``) plans
N * ``batch_size`` examples per micro-batch, so fewer steps. Only runs measured on as many
devices count as measurements; the prior is one device's times N times
DATA_PARALLEL_EFFICIENCY.
"""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.catalog.models import find as catalog_find
from tunery.db import Run
from tunery.errors import ConfigError
from tunery.lifecycle import RunStatus
from tunery.pipeline.budget import effective_batch, plan_budget
from tunery.pipeline.config import RunRecipe
from tunery.pipeline.holdout import plan_holdout
from tunery.pipeline.memory import GIB, MemoryEstimate
from tunery.runs import billing
from tunery.runs.data_shape import DataShape
from tunery.tiers import TierSettings
from tunery.wire.rest import RunEstimate

MEASURED_RUNS = 10
FLOPS_PER_PARAMETER_TOKEN = 6
"""Forward (2) and backward (4) FLOPs per parameter and token: with LoRA the weight
gradients are skipped but gradient checkpointing's recomputation takes their place."""
EVAL_COST_SHARE = 1 / 3
"""An evaluation token costs a forward pass: a third of a training token."""
DATA_PARALLEL_EFFICIENCY = 0.85
"""The share of N× one device's throughput a run on N devices of one node is assumed to
reach until one was measured: each step waits for its slowest device and for an all-reduce
of the adapter's gradients. On two CPU cores with gloo tunery measured 1.7-1.9× for 2
processes (bench/data_parallel.py, bench/README.md); NCCL over NVLink costs less."""


def measured_throughput(
    session: Session, tier: str, base_model: str, *, devices: int = 1
) -> tuple[float | None, int]:
    """Estimated tokens per training second of the latest completed runs of ``base_model``
    on ``tier`` with ``devices`` devices (median), and how many runs that is."""
    runs = session.scalars(
        select(Run)
        .where(
            Run.tier == tier,
            Run.status == RunStatus.COMPLETED.value,
            Run.estimate.is_not(None),
        )
        .order_by(Run.finished_at.desc())
        .limit(20 * MEASURED_RUNS)
    )
    rates = []
    for run in runs:
        planned = run.estimate or {}
        rate = measured_rate(planned, run.metrics or {})
        same = run.config.get("base_model") == base_model
        if rate is not None and same and planned.get("devices", 1) == devices:
            rates.append(rate)
        if len(rates) == MEASURED_RUNS:
            break
    return (statistics.median(rates) if rates else None), len(rates)


def measured_rate(estimate: dict[str, Any], metrics: dict[str, Any]) -> float | None:
    """A completed run's throughput in estimated tokens per training second, from the
    estimate it was submitted with and its last step's metrics."""
    seconds, steps = metrics.get("training_seconds"), metrics.get("step")
    planned, tokens = estimate.get("total_steps"), estimate.get("tokens")
    if not (seconds and steps and planned and tokens):
        return None
    return tokens * steps / planned / seconds


def compute_estimate(
    recipe: RunRecipe,
    tier: TierSettings,
    data: DataShape,
    validation: DataShape,
    *,
    rate: float | None,
    measured: int,
    balance: float,
    memory: MemoryEstimate | None = None,
) -> RunEstimate:
    """The estimate from counted rows and a throughput (None: the tier's prior).

    ``memory``: the run's planned peak on the tier's card (``fit.peak_memory``), None where
    it is not planned."""
    catalog = catalog_find(recipe.base_model)
    limit = recipe.training.max_seq_length or (catalog.context_length if catalog else None)
    holdout = plan_holdout(
        data.rows,
        data.chat_rows,
        custom_prompts=bool(recipe.samples.prompts),
        validation=recipe.validation,
    )
    all_tokens = sum(min(tokens, limit or tokens) for tokens in data.row_tokens)
    tokens_per_epoch = round(all_tokens * holdout.training / data.rows) if data.rows else 0
    devices = tier.devices
    budget = plan_budget(max(holdout.training, 1), recipe.training, devices=devices)
    tokens = round(tokens_per_epoch / budget.steps_per_epoch * budget.total_steps)
    if validation.rows:
        validation_examples = validation.rows
        validation_tokens = sum(min(t, limit or t) for t in validation.row_tokens)
    else:
        validation_examples = holdout.validation
        validation_tokens = round(all_tokens * holdout.validation / data.rows) if data.rows else 0
    eval_tokens = validation_tokens * _evaluations(recipe, budget.total_steps, validation_examples)
    notes = _problems_notes(recipe, holdout.training)
    price = tier.credits_per_minute
    source = "measured" if rate is not None else None
    if rate is None and catalog is not None and tier.assumed_tflops:
        flops = tier.assumed_tflops * 1e12
        rate, source = flops / (FLOPS_PER_PARAMETER_TOKEN * catalog.parameters), "prior"
        if devices > 1:
            rate *= devices * DATA_PARALLEL_EFFICIENCY
            notes.append(
                f"time assumed for {devices} devices at {DATA_PARALLEL_EFFICIENCY:.0%} of "
                f"{devices}x one device's throughput, until a run on them is measured"
            )
    if rate is None:
        notes.append(
            "no time estimate: the model's size is unknown and no run of it on this tier "
            "was measured yet"
        )
    if memory is None and tier.memory_gib is not None:
        notes.append(
            "no memory plan: the server does not know this model's size; its worker checks "
            "that the run fits the card before training"
        )
    seconds = (tokens + eval_tokens * EVAL_COST_SHARE) / rate if rate else None
    credits = billing.credits_for(seconds, price, whole_minutes=False) if seconds else None
    return RunEstimate(
        tier=tier.id,
        base_model=recipe.base_model,
        parameters=catalog.parameters if catalog else None,
        rows=data.rows,
        examples=holdout.training,
        validation_examples=validation_examples,
        tokens_per_epoch=tokens_per_epoch,
        tokens=tokens,
        total_steps=budget.total_steps,
        epochs=budget.epochs,
        devices=devices,
        effective_batch=effective_batch(recipe.training, devices),
        seconds=round(seconds, 1) if seconds is not None else None,
        tokens_per_second=round(rate, 1) if rate else None,
        throughput_source=source,
        measured_runs=measured,
        credits=credits,
        credits_per_minute=price,
        balance=round(balance, 4),
        covered=None if credits is None else credits <= balance,
        peak_memory_gib=round(memory.total / GIB, 1) if memory else None,
        gpu_memory_gib=tier.memory_gib,
        notes=notes,
    )


def _evaluations(recipe: RunRecipe, total_steps: int, validation_examples: int) -> int:
    if not validation_examples:
        return 0
    every = recipe.training.eval_every_steps
    return (total_steps // every if every else 0) + 1


def _problems_notes(recipe: RunRecipe, examples: int) -> list[str]:
    """Raises ConfigError when no row is left to train on; else notes for the user."""
    if examples == 0:
        raise ConfigError.single(
            "dataset_ids", "no rows are left to train on after the sample and validation rows"
        )
    if recipe.early_stopping.patience:
        return ["early stopping may end the run sooner, and bill less"]
    return []
