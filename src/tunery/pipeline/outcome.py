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
    adapter: AdapterSummary,
    final_metrics: dict[str, Any],
    evaluation: dict[str, Any] | None,
    samples: list[dict[str, Any]],
    lora_bundle: Path,
    gguf: ExportResult | None,
) -> dict[str, Any]:
    """The content of ``run.json``: configuration snapshot, data, kernels, adapter, final
    metrics, evaluation, samples and artifacts; ``status`` is failed when ``error`` is set."""
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
        "adapter": {
            "trainable_parameters": adapter.trainable_parameters,
            "total_parameters": adapter.total_parameters,
            "target_modules": adapter.target_modules,
        },
        "metrics": final_metrics,
        "evaluation": evaluation,
        "samples": samples,
        "artifacts": {"lora": lora_bundle.name, "gguf": gguf.bundle.name if gguf else None},
        "export": {"gguf": recipe.export.gguf, "checks": gguf.checks if gguf else None},
    }


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
