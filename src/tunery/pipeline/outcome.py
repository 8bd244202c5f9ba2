"""What a finished run leaves behind: its ``RunResult`` and the summary in ``run.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.errors import TuneryError
from tunery.gguf.export import ExportError

if TYPE_CHECKING:
    from tunery.gguf.export import ExportResult
    from tunery.pipeline.config import RunRecipe
    from tunery.pipeline.load import ChatFormat, ModelReference
    from tunery.pipeline.lora import AdapterSummary


@dataclass(frozen=True)
class RunResult:
    """What a finished run left behind; ``gguf_bundle`` is None when export was off or failed
    (then ``summary["error"]`` says why and the LoRA bundle is still complete)."""

    out_dir: Path
    adapter_dir: Path
    lora_bundle: Path
    gguf_bundle: Path | None
    summary: dict[str, Any]

    @property
    def completed(self) -> bool:
        return self.summary["status"] == "completed"

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.summary["samples"]

    @property
    def final_metrics(self) -> dict[str, Any]:
        return self.summary["metrics"]


def run_summary(
    recipe: RunRecipe,
    *,
    error: dict[str, str] | None,
    reference: ModelReference,
    model_dir: Path,
    chat_format: ChatFormat,
    notes: list[str],
    data_summary: dict[str, Any],
    kernels: dict[str, Any],
    batch: dict[str, Any],
    adapter: AdapterSummary,
    final_metrics: dict[str, Any],
    evaluation: dict[str, Any] | None,
    kept: dict[str, Any] | None,
    samples: list[dict[str, Any]],
    lora_bundle: Path,
    gguf: ExportResult | None,
    objective: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    estimate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``run.json``: configuration snapshot, data, kernels, batch (per device,
    devices, effective), the objective (``objective_summary``), adapter, final metrics,
    evaluation, the kept step (``kept_step_summary``), samples, artifacts, the seconds each
    phase took (``pipeline.timings``) and the estimate they are checked against; ``status``
    is failed when ``error`` is set."""
    return {
        "name": recipe.name,
        "status": "completed" if error is None else "failed",
        "error": error,
        "config": recipe.model_dump(),
        "base_model": {
            "reference": reference.name,
            "kind": reference.kind,
            "directory": str(model_dir),
        },
        "chat_template": {"source": chat_format.source, "end_of_turn": chat_format.end_of_turn},
        "notes": notes,
        "data": data_summary,
        "kernels": kernels,
        "batch": batch,
        "objective": objective,
        "adapter": {
            "trainable_parameters": adapter.trainable_parameters,
            "total_parameters": adapter.total_parameters,
            "target_modules": adapter.target_modules,
        },
        "metrics": final_metrics,
        "evaluation": evaluation,
        "kept": kept,
        "samples": samples,
        "artifacts": {"lora": lora_bundle.name, "gguf": gguf.bundle.name if gguf else None},
        "export": {"gguf": recipe.export.gguf, "checks": gguf.checks if gguf else None},
        "timings": timings,
        "estimate": estimate,
    }


def objective_summary(recipe: RunRecipe, data_summary: dict[str, Any]) -> dict[str, Any]:
    """What the run optimised, and from where: the method, and for DPO its beta and the
    reference the rewards are measured against (the starting point, scored once)."""
    start = f"the adapter of {recipe.init_from}" if recipe.init_from else "a fresh adapter"
    if not recipe.method.preference:
        return {"method": "sft", "start": start}
    return {
        "method": "dpo",
        "loss": "sigmoid",
        "beta": recipe.method.dpo_beta,
        "start": start,
        "reference": {
            "model": (
                f"the base model with the adapter of {recipe.init_from} (the starting point)"
                if recipe.init_from
                else "the base model (the starting point: a fresh adapter changes nothing)"
            ),
            "log_probabilities": "computed once in a pass before training, dropout off, "
            "and kept with every checkpoint for resuming",
            "training_pairs": data_summary.get("examples"),
            "validation_pairs": data_summary.get("validation_examples"),
        },
    }


def kept_step_summary(
    history: list[dict[str, Any]], step: int | None, evaluated: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The step whose adapter the run delivers, when it is not the last step trained (early
    stopping kept the best evaluation's, the divergence guard the best before the rise):
    its step, its training loss and, when it was evaluated, its eval loss."""
    if step is None:
        return None
    row = next((row for row in history if row.get("step") == step), {})
    best = evaluated if evaluated is not None and evaluated.get("best_step") == step else {}
    return {"step": step, "loss": row.get("loss"), "eval_loss": best.get("best_eval_loss")}


def after_save_failure(failure: Exception, stage: str) -> TuneryError:
    """The error a run reports when ``stage`` fails after the LoRA bundle was saved.

    The run then ends with the LoRA bundle alone, as any export failure does.
    """
    if isinstance(failure, TuneryError):
        return failure
    return ExportError(
        f"{stage} failed: {type(failure).__name__}: {failure}",
        hint="the LoRA bundle is complete and can be downloaded",
    )
