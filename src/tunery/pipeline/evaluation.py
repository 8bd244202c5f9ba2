"""Evaluation on the validation examples: eval loss and mean token accuracy.

The examples are packed as training packs them (same attention), without gradients and
with dropout off; the loss is the cross-entropy per trained token over all of them, and
the accuracy the share of trained tokens whose greedy prediction is the target. Logits
exist only at trained positions, one micro-batch at a time. A DPO run's validation pairs
are scored by its objective instead (``preference.score_pairs``): the eval loss is the DPO
loss, with the rewards, their margin and the reward accuracy beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tunery.pipeline.chat import IGNORE, Example, PairExample
from tunery.pipeline.early_stopping import EarlyStopping
from tunery.pipeline.packing import pack
from tunery.pipeline.preference import PairScores, PreferenceObjective, score_pairs
from tunery.pipeline.reporting import PREFERENCE_EVAL_FIELDS, EvalMetrics, Reporter

if TYPE_CHECKING:
    import torch

    from tunery.pipeline.attention import AttentionKind
    from tunery.pipeline.budget import Budget
    from tunery.pipeline.kernels import Kernels
    from tunery.pipeline.loss import LossKind
    from tunery.pipeline.train_setup import TrainerState, TrainSetup

EVAL_BATCH_EXAMPLES = 8
"""Validation examples packed per forward pass, whatever the training batch size."""


@dataclass(frozen=True)
class Evaluation:
    loss: float
    """Cross-entropy per trained token (the DPO loss per pair for preference pairs)."""
    accuracy: float | None
    """Share of trained tokens predicted exactly (greedy); None for preference pairs."""
    tokens: int
    """Trained tokens evaluated."""
    seconds: float
    preference: PairScores | None = None
    """The DPO metrics, for preference pairs."""


def evaluate(
    model: Any,
    examples: list[Example],
    *,
    pad_id: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
    attention: AttentionKind = "sdpa",
) -> Evaluation:
    """Evaluate ``model`` on ``examples``; leaves the model in the mode it found it in.

    ``attention`` must be the attention the model uses now (``attention_in_use``).
    """
    import torch

    started = time.perf_counter()
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    tokens = 0
    try:
        with torch.no_grad():
            for first in range(0, len(examples), EVAL_BATCH_EXAMPLES):
                chunk = examples[first : first + EVAL_BATCH_EXAMPLES]
                batch = pack(chunk, pad_id, device, attention)
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    batch_loss, batch_correct = _score(model, batch)
                loss_sum += batch_loss
                correct += batch_correct
                tokens += sum(example.trained_tokens for example in chunk)
    finally:
        model.train(was_training)
    # One device sync for the whole evaluation.
    loss, hits = loss_sum.item(), correct.item()
    return Evaluation(
        loss=loss / tokens if tokens else float("nan"),
        accuracy=hits / tokens if tokens else 0.0,
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )


def _score(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and correct predictions over the trained tokens of one packed batch."""
    import torch

    targets = batch.targets
    trained = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
    output = model(**batch.forward_inputs(), logits_to_keep=trained, use_cache=False)
    logits = output.logits.float()
    wanted = targets[:, trained]
    mask = wanted != IGNORE
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        wanted.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    correct = ((logits.argmax(dim=-1) == wanted) & mask).sum()
    return loss.double(), correct


@dataclass
class EvaluationPlan:
    """When the training loop evaluates, and what it keeps of the evaluations.

    ``best_adapter_dir`` set (early stopping on): the adapter of each new best evaluation
    is written there, so the run can end with the best one rather than the last.
    """

    examples: list[Example] | list[PairExample]
    every_steps: int
    early_stopping: EarlyStopping
    best_adapter_dir: Path | None = None
    preference: PreferenceObjective | None = None
    """Set for DPO runs: ``examples`` are pairs, scored against its reference."""

    def resume(self, saved: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's early-stopping state (None: from the start)."""
        self.early_stopping = EarlyStopping.from_dict(
            saved,
            patience=self.early_stopping.patience,
            min_delta=self.early_stopping.min_delta,
        )

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to evaluate after ``step``: every ``every_steps`` and after the last."""
        if not self.examples:
            return False
        return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)


def evaluate_and_report(
    plan: EvaluationPlan,
    model: Any,
    reporter: Reporter,
    *,
    step: int,
    total_steps: int,
    pad_id: int,
    device: torch.device,
    autocast: torch.dtype | None,
    attention: AttentionKind,
    loss: LossKind = "logits",
) -> EvalMetrics:
    """Evaluate after ``step``, update early stopping, keep a new best adapter, report."""
    if plan.preference is not None:
        result = _evaluate_pairs(
            plan.preference,
            model,
            cast("list[PairExample]", plan.examples),  # a preference plan holds pairs
            pad_id=pad_id,
            device=device,
            autocast=autocast,
            attention=attention,
            loss=loss,
        )
    else:
        result = evaluate(
            model,
            cast("list[Example]", plan.examples),
            pad_id=pad_id,
            device=device,
            autocast=autocast,
            attention=attention,
        )
    improved = plan.early_stopping.observe(step, result.loss)
    if improved and plan.best_adapter_dir is not None:
        save_best_adapter(model, plan.best_adapter_dir, step=step, loss=result.loss)
    best = plan.early_stopping
    metrics = EvalMetrics(
        step=step,
        total_steps=total_steps,
        eval_loss=result.loss,
        eval_accuracy=result.accuracy,
        best_eval_loss=best.best_loss if best.best_loss is not None else result.loss,
        best_step=best.best_step if best.best_step is not None else step,
        examples=len(plan.examples),
        seconds=result.seconds,
        **(
            {f"eval_{name}": value for name, value in result.preference.step_metrics().items()}
            if result.preference is not None
            else {}
        ),
    )
    reporter.eval_metrics(metrics)
    return metrics


def _evaluate_pairs(
    objective: PreferenceObjective,
    model: Any,
    pairs: list[PairExample],
    *,
    pad_id: int,
    device: torch.device,
    autocast: torch.dtype | None,
    attention: AttentionKind,
    loss: LossKind,
) -> Evaluation:
    started = time.perf_counter()
    assert objective.reference is not None
    scores = score_pairs(
        model,
        pairs,
        objective.reference.validation,
        beta=objective.beta,
        batch_pairs=objective.batch_pairs,
        pad_id=pad_id,
        device=device,
        autocast=autocast,
        attention=attention,
        loss=loss,
    )
    return Evaluation(
        loss=scores.loss,
        accuracy=None,
        tokens=sum(pair.trained_tokens for pair in pairs),
        seconds=time.perf_counter() - started,
        preference=scores,
    )


BEST_ADAPTER_FILE = "adapter.safetensors"
BEST_STEP_FILE = "best.json"


def save_best_adapter(model: Any, directory: Path, *, step: int, loss: float) -> None:
    """Write the adapter weights atomically (a rename), with the step they belong to."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    staging = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    weights = {
        key: value.detach().cpu().contiguous()
        for key, value in get_peft_model_state_dict(model).items()
    }
    save_file(weights, staging / BEST_ADAPTER_FILE)
    (staging / BEST_STEP_FILE).write_text(json.dumps({"step": step, "eval_loss": loss}))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)


def restore_best_adapter(model: Any, directory: Path, *, step: int, device: torch.device) -> bool:
    """Load the best adapter into ``model`` if ``directory`` holds the one of ``step``.

    False when it holds another step's (a checkpoint older than the best was resumed and
    training ended before reaching it again): the model keeps its weights then.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    marker = directory / BEST_STEP_FILE
    if not marker.is_file() or json.loads(marker.read_text())["step"] != step:
        return False
    set_peft_model_state_dict(model, load_file(directory / BEST_ADAPTER_FILE, device=str(device)))
    return True


def evaluation_summary(
    evaluations: list[dict[str, Any]], stopping: EarlyStopping, *, finished_early: bool
) -> dict[str, Any] | None:
    """The run's evaluation as ``run.json``, the model card and the run object carry it:
    the last evaluation, the best one, and whether training ended early (and why)."""
    if not evaluations:
        return None
    last = evaluations[-1]
    return {
        "step": last["step"],
        "total_steps": last["total_steps"],
        "eval_loss": last["eval_loss"],
        "eval_accuracy": last["eval_accuracy"],
        **{name: last[name] for name in PREFERENCE_EVAL_FIELDS if name in last},
        "best_eval_loss": stopping.best_loss,
        "best_step": stopping.best_step,
        "stopped_early": stopping.stopped_at_step is not None
        and stopping.stopped_at_step < last["total_steps"],
        "stopped_at_step": stopping.stopped_at_step,
        "finished_early": finished_early,
    }


def with_evaluations(
    history: list[dict[str, Any]], evaluations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Step rows with ``eval_loss`` and ``eval_accuracy`` (and a DPO run's eval rewards) on
    the steps evaluated after, as ``metrics.jsonl`` and the metrics API give them."""
    fields = ("eval_loss", "eval_accuracy", *PREFERENCE_EVAL_FIELDS)
    by_step = {
        row["step"]: {name: row[name] for name in fields if name in row} for row in evaluations
    }
    return [{**row, **by_step.get(row["step"], {})} for row in history]


def evaluate_or_finish(
    setup: TrainSetup, kernels: Kernels, state: TrainerState, budget: Budget, reporter: Reporter
) -> bool:
    """Evaluate when due (and before finishing now); True when training ends at this step:
    early stopping ran out of patience, or "Finish now" was asked."""
    plan = setup.evaluation
    finishing = state.step < budget.total_steps and reporter.should_finish()
    if plan is not None and (plan.due(state.step, budget.total_steps) or finishing):
        evaluation = evaluate_and_report(
            plan,
            setup.model,
            reporter,
            step=state.step,
            total_steps=budget.total_steps,
            pad_id=setup.pad_id,
            device=setup.device,
            autocast=setup.precision.autocast,
            attention=kernels.attention,
            loss=kernels.loss,
        )
        state.evaluations.append(evaluation.as_dict())
        state.early_stopping = plan.early_stopping.as_dict()
        if plan.early_stopping.should_stop and state.step < budget.total_steps:
            reporter.log(
                f"stopping early at step {state.step} of {budget.total_steps}: the eval loss "
                f"has not improved for {plan.early_stopping.patience} evaluations"
            )
            return True
    if finishing:
        state.finished_early = True
        reporter.log(f"finishing now at step {state.step} of {budget.total_steps}")
    return finishing


def keep_best_adapter(
    plan: EvaluationPlan, model: Any, *, last_step: int, device: torch.device, reporter: Reporter
) -> int | None:
    """With early stopping on, end with the best evaluation's adapter rather than the last;
    returns the step it was restored from (None: the model keeps its last weights)."""
    best = plan.early_stopping.best_step
    if plan.best_adapter_dir is None or best is None or best == last_step:
        return None
    if not restore_best_adapter(model, plan.best_adapter_dir, step=best, device=device):
        return None
    reporter.log(
        f"kept the adapter of step {best}, the best evaluation "
        f"(eval loss {plan.early_stopping.best_loss:.4f})"
    )
    return best
