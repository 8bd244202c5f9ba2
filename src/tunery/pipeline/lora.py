"""Attaching a LoRA adapter to the frozen base with PEFT, targets checked against the model;
starting it from a completed run's adapter (``init_from``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.errors import ConfigError, FieldProblem
from tunery.pipeline.config import LoraSettings

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class AdapterSummary:
    trainable_parameters: int
    total_parameters: int
    target_modules: list[str]

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / self.total_parameters


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Short names of the Linear layers LoRA can target, the output head excluded."""
    import torch

    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }
    return sorted(names)


def attach_lora(
    model: PreTrainedModel, settings: LoraSettings, *, gradient_checkpointing: bool
) -> tuple[PeftModel, AdapterSummary]:
    """Freeze ``model`` and wrap it with a trainable adapter; raises ConfigError on bad modules."""
    from peft import LoraConfig, get_peft_model

    available = linear_module_names(model)
    if settings.target_modules == "all-linear":
        targets = available
    else:
        unknown = sorted(set(settings.target_modules) - set(available))
        if unknown:
            raise ConfigError.single(
                "lora.target_modules",
                f"{', '.join(unknown)} not in this model; its linear modules are "
                f"{', '.join(available)}",
            )
        targets = list(settings.target_modules)
    if gradient_checkpointing:
        # transformers 5.24 renamed the switch; older 5.x releases only have the first name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # PEFT scales by alpha/r: a float
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    return peft_model, AdapterSummary(trainable, total, targets)


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def initial_adapter_dir(path: Path) -> Path:
    """The adapter directory ``init_from`` names: an adapter directory itself, or a run's
    output directory holding ``adapter/``; ConfigError when it is neither."""
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file() and (candidate / ADAPTER_WEIGHTS).is_file():
            return candidate
    raise ConfigError.single(
        "init_from",
        f"{path} holds no LoRA adapter ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}, directly or "
        "in adapter/)",
        hint="name the output directory of a completed run, or its adapter directory",
    )


def load_initial_adapter(
    model: PeftModel, adapter_dir: Path, settings: LoraSettings, summary: AdapterSummary
) -> None:
    """Start the attached adapter from the one in ``adapter_dir`` (``init_from``).

    It must have the shape this run's adapter has (rank, alpha, target modules): a run
    continues an adapter, it does not reshape one. Raises ConfigError naming the field.
    """
    import json

    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError.single(
            "init_from", f"its {ADAPTER_CONFIG} is unreadable: {error}"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError.single("init_from", f"its {ADAPTER_CONFIG} is not an object")
    targets = config.get("target_modules")
    saved_targets = sorted(targets) if isinstance(targets, list) else targets
    differences = [
        ("lora.rank", config.get("r"), settings.rank),
        ("lora.alpha", config.get("lora_alpha"), settings.alpha),
        ("lora.target_modules", saved_targets, sorted(summary.target_modules)),
    ]
    problems = [
        FieldProblem(field, f"is {ours!r}; the init_from adapter has {theirs!r}")
        for field, theirs, ours in differences
        if theirs != ours
    ]
    if problems:
        raise ConfigError(problems, hint="use the LoRA settings of the run you start from")
    try:
        weights = load_file(adapter_dir / ADAPTER_WEIGHTS)
    except (OSError, SafetensorError) as error:
        raise ConfigError.single(
            "init_from", f"its adapter weights are unreadable: {error}"
        ) from None
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ConfigError.single(
            "init_from",
            f"its adapter does not fit this model ({len(unexpected)} weights without a place, "
            f"such as {unexpected[0]})",
        )
