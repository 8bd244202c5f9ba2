"""Cost before play: what a submission would train, how long and at what price.

Pure arithmetic on a checked submission (``runs.intake`` checks, plans memory and calls
``compute_estimate`` once per submission or estimate request), from what the tier measured.

**What is estimated is what is billed.** Billing runs from a run's first gradient step to
its end (``runs.billing``), so the estimate adds up every part of that: the gradient steps
(with their checkpoints), the evaluations, saving the adapter, the GGUF export, the sample
answers and the bundles' upload (``BILLED_PHASES``). It says apart how long a node takes to
reach the first step (``startup_seconds``: loading, data, LoRA), which is not billed.

**Tokens.** Each row's tokens are counted with the base model's tokenizer where the server
holds the model, else estimated from its characters (``runs.data_shape``), and cut at
``max_seq_length`` (else the catalog model's context). Steps are exact: the rows held out
for samples and validation are counted as ``pipeline.holdout`` holds them out, and the
budget is the training loop's ``plan_budget``.

**Costs**, for each part, from the best of:

1. ``measured``: the latest completed runs of the same model on the same tier (medians of
   their ``run.json`` timings per unit: per estimated token of training and evaluation, per
   generated token of sampling, seconds for the rest), in this module's own token unit, so
   what its count misses (the chat template's exact markers; characters per token, for a
   model without a local tokenizer) cancels out on similar data; runs of another model on the tier
   when none of this one completed, scaled by the models' parameter counts;
2. ``calibrated``: the tier's micro-benchmark of the model's shape (``runs.calibration``);
3. ``prior``: for the gradient steps and evaluations only, ``6 * parameters * tokens``
   FLOPs over the tier's assumed training TFLOPS; the other parts are then left out, and a
   note says so.

Each submitted run records its estimate (``Run.estimate``); once it completes, ``check``
sets it beside what happened (``RunPublic.estimate_check``). Runs are measured per method:
a DPO step does more per token than an SFT step (two sequences per pair, the loss of each).

**Several devices.** A tier that trains a run on N devices (``TierSettings.devices``) plans
N * ``batch_size`` examples per micro-batch, so fewer steps. Only runs measured on as many
devices count as measurements; the benchmark (one process) and the prior train at one
device's rate times N times DATA_PARALLEL_EFFICIENCY.

**DPO.** A pair's tokens are both sequences' (``runs.data_shape``). Before training, the
reference pass scores every training and validation pair once, a forward pass each: its
time is counted like an evaluation's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.catalog.models import find as catalog_find
from tunery.db import Run
from tunery.errors import ConfigError
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.pipeline.budget import effective_batch, plan_budget
from tunery.pipeline.config import RunRecipe
from tunery.pipeline.holdout import plan_holdout
from tunery.pipeline.memory import GIB, MemoryEstimate
from tunery.pipeline.timings import EVALUATIONS
from tunery.runs import billing, fit
from tunery.runs.data_shape import DataShape
from tunery.tiers import TierSettings
from tunery.wire.rest import EstimateCheck, PhaseCheck, RunEstimate

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

TRAINING, SAVING, EXPORTING, SAMPLING, UPLOADING = (
    Phase.TRAINING.value,
    Phase.SAVING.value,
    Phase.EXPORTING.value,
    Phase.SAMPLING.value,
    "uploading",
)
BILLED_PHASES = (TRAINING, EVALUATIONS, SAVING, EXPORTING, SAMPLING, UPLOADING)
"""The billed parts of a run, as ``run.json``'s ``timings`` names them (the worker adds
``uploading``); ``training`` is the gradient steps and checkpoints, without evaluations."""
STARTUP = "startup"
"""A node's time from starting the run to its first gradient step (not billed)."""
SAVE_PASSES = 2
"""Saving writes the adapter's weights, then reads them into its ZIP."""
EXPORT_PASSES = 5
"""The GGUF export goes over the model's weights about five times: the merge reads and
writes them, the converter and the quantizer each read and write a copy, the check reads
the result."""
QUANTIZED_SHARE = 4.5 / 32
"""Bytes of a Q4_K_M GGUF per byte of fp32 weights (4.5 bits a weight): what the upload
of a GGUF bundle moves."""


@dataclass(frozen=True)
class Measured:
    """Per-unit costs earlier completed runs on a tier measured (medians), already scaled
    to the model of the run being estimated."""

    runs: int
    same_model: bool
    train_seconds_per_token: float
    eval_seconds_per_token: float | None = None
    sample_seconds_per_token: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of saving, exporting, uploading, and the startup."""


def measured_basis(
    session: Session,
    tier: str,
    base_model: str,
    parameters: int | None,
    *,
    devices: int = 1,
    method: str = "sft",
) -> Measured | None:
    """What the latest completed runs of ``method`` on ``tier`` with ``devices`` devices
    measured: of ``base_model`` when there are any, else of other models scaled by parameters
    (when both sizes are known)."""
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
    same: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for run in runs:
        if (run.estimate or {}).get("devices", 1) != devices or method_of(run.config) != method:
            continue
        if run.config.get("base_model") == base_model:
            if len(same) < MEASURED_RUNS and (costs := run_costs(run, 1.0)) is not None:
                same.append(costs)
        elif parameters and (measured := (run.estimate or {}).get("parameters")):
            if len(other) >= MEASURED_RUNS:
                continue
            scale = parameters / measured
            if (costs := run_costs(run, scale)) is not None:
                other.append(costs)
    chosen = same or other
    if not chosen:
        return None

    def median(key: str) -> float | None:
        values = [costs[key] for costs in chosen if costs.get(key) is not None]
        return statistics.median(values) if values else None

    seconds = {
        key: value
        for key in (SAVING, EXPORTING, UPLOADING, STARTUP)
        if (value := median(key)) is not None
    }
    train = median("train_seconds_per_token")
    assert train is not None  # every run's costs have it
    return Measured(
        runs=len(chosen),
        same_model=bool(same),
        train_seconds_per_token=train,
        eval_seconds_per_token=median("eval_seconds_per_token"),
        sample_seconds_per_token=median("sample_seconds_per_token"),
        seconds=seconds,
    )


def method_of(config: dict[str, Any]) -> str:
    """A stored run's ``method.type`` (runs from before methods existed are sft)."""
    method = config.get("method") or {}
    return method.get("type", "sft") if isinstance(method, dict) else "sft"


def run_costs(run: Run, scale: float) -> dict[str, float] | None:
    """A completed run's costs per unit (times ``scale``), from the estimate it was
    submitted with, its last step and its ``run.json`` timings; None when it measured none."""
    estimate, metrics = run.estimate or {}, run.metrics or {}
    summary = run.summary or {}
    timings = summary.get("timings") or {}
    steps, planned = metrics.get("step"), estimate.get("total_steps")
    tokens = estimate.get("tokens")
    if not (steps and planned and tokens):
        return None
    done = steps / planned
    evaluated = timings.get(EVALUATIONS) or 0.0
    # Runs from before timings were recorded have their steps' own seconds only.
    wall = (timings.get(TRAINING) or 0.0) - evaluated or metrics.get("training_seconds")
    if not wall:
        return None
    costs = {"train_seconds_per_token": scale * wall / (tokens * done)}
    if evaluated and estimate.get("evaluation_tokens"):
        costs["eval_seconds_per_token"] = scale * evaluated / (estimate["evaluation_tokens"] * done)
    if timings.get(SAMPLING) and estimate.get("sample_tokens"):
        costs["sample_seconds_per_token"] = scale * timings[SAMPLING] / estimate["sample_tokens"]
    for key in (SAVING, UPLOADING):
        if timings.get(key):
            costs[key] = scale * timings[key]
    if timings.get(EXPORTING) and (summary.get("artifacts") or {}).get("gguf"):
        costs[EXPORTING] = scale * timings[EXPORTING]
    if summary.get("startup_seconds"):
        costs[STARTUP] = scale * summary["startup_seconds"]
    return costs


def compute_estimate(
    recipe: RunRecipe,
    tier: TierSettings,
    data: DataShape,
    validation: DataShape,
    *,
    measured: Measured | None,
    calibration: dict[str, Any] | None,
    balance: float,
    memory: MemoryEstimate | None = None,
) -> RunEstimate:
    """The estimate from counted rows and what the tier measured (``measured`` runs, else
    its ``calibration`` of the model's shape, else its assumed TFLOPS).

    ``memory``: the run's planned peak on the tier's card (``fit.peak_memory``), None where
    it is not planned."""
    catalog = catalog_find(recipe.base_model)
    shape = fit.model_shape(recipe.base_model)
    parameters = catalog.parameters if catalog else (shape.parameters if shape else None)
    limit = recipe.training.max_seq_length or (catalog.context_length if catalog else None)
    if limit is not None and recipe.method.preference:
        limit *= 2  # a pair's row holds two sequences, each cut at the limit
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
    evaluation_tokens = validation_tokens * _evaluations(
        recipe, budget.total_steps, validation_examples
    )
    # The tuned model answers each sample prompt (from its GGUF during the export when
    # there is one), and so does the base model, beside it.
    generated = (len(recipe.samples.prompts) or holdout.samples) * recipe.samples.max_new_tokens
    sample_tokens = generated if recipe.export.gguf else 2 * generated
    notes = _problems_notes(recipe, holdout.training)
    if recipe.method.preference:
        # The reference pass: every training and validation pair once, forward only.
        evaluation_tokens += tokens_per_epoch + validation_tokens
        notes.append(
            "DPO: each pair trains its two answers after the prompt (both counted in the "
            "tokens), and a reference pass scores every pair once before training (counted "
            "in the time)"
        )

    train, source = _train_seconds_per_token(measured, calibration, tier, parameters)
    if train is not None and source != "measured" and devices > 1:
        train /= devices * DATA_PARALLEL_EFFICIENCY
        notes.append(
            f"time assumed for {devices} devices at {DATA_PARALLEL_EFFICIENCY:.0%} of "
            f"{devices}x one device's throughput, until a run on them is measured"
        )
    phases: dict[str, float] = {}
    if train is not None:
        phases[TRAINING] = tokens * train
        eval_cost = _first(
            measured.eval_seconds_per_token if measured else None,
            calibration.get("eval_seconds_per_token") if calibration else None,
        )
        phases[EVALUATIONS] = evaluation_tokens * (eval_cost or train * EVAL_COST_SHARE)
    else:
        notes.append(
            "no time estimate: the model's size is unknown and no run of it on this tier "
            "was measured yet"
        )
    others = _other_phases(recipe, measured, calibration, parameters, sample_tokens, generated)
    phases.update({key: value for key, value in others.items() if key != STARTUP})
    missing = [key for key in (SAVING, SAMPLING, UPLOADING) if key not in phases]
    if recipe.export.gguf and EXPORTING not in phases:
        missing.insert(1, EXPORTING)
    if train is not None and missing:
        notes.append(
            f"not counted yet: {', '.join(missing)} (no run of this model measured them on "
            "this tier, and no benchmark of its shape either)"
        )
    if memory is None and tier.memory_gib is not None:
        notes.append(
            "no memory plan: the server does not know this model's size; its worker checks "
            "that the run fits the card before training"
        )
    seconds = sum(phases.values()) if train is not None else None
    price = tier.credits_per_minute
    credits = billing.credits_for(seconds, price, whole_minutes=False) if seconds else None
    return RunEstimate(
        tier=tier.id,
        base_model=recipe.base_model,
        parameters=parameters,
        rows=data.rows,
        examples=holdout.training,
        validation_examples=validation_examples,
        tokens_per_epoch=tokens_per_epoch,
        tokens=tokens,
        evaluation_tokens=evaluation_tokens,
        sample_tokens=sample_tokens,
        total_steps=budget.total_steps,
        epochs=budget.epochs,
        devices=devices,
        effective_batch=effective_batch(recipe.training, devices),
        seconds=round(seconds, 1) if seconds is not None else None,
        phases={key: round(value, 1) for key, value in phases.items()},
        startup_seconds=round(others[STARTUP], 1) if STARTUP in others else None,
        tokens_per_second=round(1 / train, 1) if train else None,
        throughput_source=source,
        measured_runs=measured.runs if measured else 0,
        credits=credits,
        credits_per_minute=price,
        balance=round(balance, 4),
        covered=None if credits is None else credits <= balance,
        peak_memory_gib=round(memory.total / GIB, 1) if memory else None,
        gpu_memory_gib=tier.memory_gib,
        notes=notes,
    )


def _first(*values: float | None) -> float | None:
    return next((value for value in values if value is not None), None)


def _train_seconds_per_token(
    measured: Measured | None,
    calibration: dict[str, Any] | None,
    tier: TierSettings,
    parameters: int | None,
) -> tuple[float | None, str | None]:
    if measured is not None:
        return measured.train_seconds_per_token, "measured"
    if calibration is not None:
        return calibration["train_seconds_per_token"], "calibrated"
    if parameters and tier.assumed_tflops:
        flops = tier.assumed_tflops * 1e12
        return FLOPS_PER_PARAMETER_TOKEN * parameters / flops, "prior"
    return None, None


def _other_phases(
    recipe: RunRecipe,
    measured: Measured | None,
    calibration: dict[str, Any] | None,
    parameters: int | None,
    sample_tokens: int,
    generated: int,
) -> dict[str, float]:
    """Saving, exporting, sampling, uploading and the startup: measured, else from the
    benchmark's rates (``calibration``), else left out."""
    known = dict(measured.seconds) if measured else {}
    if measured is not None and measured.sample_seconds_per_token is not None:
        known[SAMPLING] = measured.sample_seconds_per_token * sample_tokens
    if calibration is not None and parameters:
        io = calibration["weights_seconds_per_parameter"]
        decode = calibration["decode_seconds_per_token"]
        trainable = fit.adapter_parameters(recipe) or 0
        benchmarked = {
            SAVING: io * trainable * SAVE_PASSES,
            EXPORTING: io * parameters * EXPORT_PASSES + decode * generated,
            SAMPLING: decode * sample_tokens,
            UPLOADING: io * parameters * QUANTIZED_SHARE if recipe.export.gguf else 0.0,
            STARTUP: calibration["import_seconds"] + io * parameters,
        }
        known = {**benchmarked, **known}
    if not recipe.export.gguf:
        known.pop(EXPORTING, None)
    return known


def check(
    estimate: dict[str, Any], summary: dict[str, Any], billed_seconds: float, credits: float
) -> EstimateCheck:
    """A completed run's estimate beside what happened: billed time and credits, the
    startup, and each billed part (``run.json``'s timings)."""
    timings = summary.get("timings") or {}

    def ratio(actual: float | None, estimated: float | None) -> float | None:
        return round(actual / estimated, 3) if actual is not None and estimated else None

    phases = {}
    for key in BILLED_PHASES:
        estimated = (estimate.get("phases") or {}).get(key)
        actual = timings.get(key)
        if key == TRAINING and actual is not None:
            actual -= timings.get(EVALUATIONS) or 0.0
        if estimated is not None or actual is not None:
            phases[key] = PhaseCheck(
                estimated=estimated, actual=round(actual, 1) if actual is not None else None
            )
    startup = summary.get("startup_seconds")
    return EstimateCheck(
        estimated_seconds=estimate.get("seconds"),
        actual_seconds=round(billed_seconds, 1),
        seconds_ratio=ratio(billed_seconds, estimate.get("seconds")),
        estimated_credits=estimate.get("credits"),
        actual_credits=round(credits, 4),
        credits_ratio=ratio(credits, estimate.get("credits")),
        estimated_startup_seconds=estimate.get("startup_seconds"),
        actual_startup_seconds=round(startup, 1) if startup is not None else None,
        startup_ratio=ratio(startup, estimate.get("startup_seconds")),
        source=estimate.get("throughput_source"),
        phases=phases,
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
