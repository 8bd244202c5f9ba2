"""Attaching a LoRA adapter to the frozen base with PEFT, targets checked against the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunery.errors import ConfigError
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
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    return peft_model, AdapterSummary(trainable, total, targets)
