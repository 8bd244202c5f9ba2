"""Will a run fit its tier's card? Checked as it is submitted, so a run that cannot fit is
refused with the batch size or sequence length that would, instead of running out of
memory after its wait in the queue.

The model's size comes from the catalog (``CatalogModel.shape``) or, for a model in the
server's models directory, its config.json; a Hugging Face model outside the catalog is
checked by its worker on the card, before training (``pipeline.card_fit``). A micro-batch
holds at most ``batch_size`` examples of the data's longest row (a DPO run: both sequences
of ``batch_size`` pairs, each as long as the longest side), whose tokens are counted with
the model's tokenizer where the server holds the model (``runs.data_shape``) and cut at
``max_seq_length`` or the model's context. A Hub model's rows are estimated from their
characters, which vary by language (a Chinese row has about one token per character, not a
quarter): a run this underestimates passes here and is refused by its worker's check before
the first step, with the same hint. Tiers without a card memory
(``cpu``) are not checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunery.catalog.models import find as catalog_find
from tunery.errors import ConfigError
from tunery.pipeline.config import RunRecipe
from tunery.pipeline.load import parse_model_reference
from tunery.pipeline.memory import MemoryEstimate, ModelShape, check_fits, lora_parameters
from tunery.runs.data_shape import DataShape
from tunery.tiers import TierSettings

MODEL_CONFIG_BYTES = 1_000_000
"""A local model's config.json past this size is not read (real ones are a few KiB)."""


def model_config(base_model: str) -> dict[str, Any] | None:
    """The size fields of ``base_model``'s config.json, when the server can know them.

    ``base_model`` has passed the submission's checks: a local path is inside the models
    directory.
    """
    try:
        reference = parse_model_reference(base_model)
    except ConfigError:
        return None
    if reference.kind == "local" and reference.path is not None:
        return _local_config(reference.path / "config.json")
    entry = catalog_find(reference.repo_id or reference.name)
    if entry is None:
        return None
    return {**entry.shape, "max_position_embeddings": entry.context_length}


def _local_config(path: Path) -> dict[str, Any] | None:
    # Unreadable or odd configs are left to the worker, which refuses them when it loads.
    try:
        if path.stat().st_size > MODEL_CONFIG_BYTES:
            return None
        config = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_shape(base_model: str) -> ModelShape | None:
    """``base_model``'s shape, when the server knows it (the catalog, or a local config)."""
    config = model_config(base_model)
    if config is None:
        return None
    try:
        return ModelShape.from_config(config)
    except ValueError:
        return None  # an odd config: its worker reports what it makes of it


def adapter_parameters(recipe: RunRecipe) -> int | None:
    """The adapter's trainable parameters, when the server knows the model's shape."""
    shape = model_shape(recipe.base_model)
    if shape is None:
        return None
    return lora_parameters(shape, recipe.lora.rank, recipe.lora.target_modules)


def adapter_share(recipe: RunRecipe) -> float | None:
    """The adapter's trainable parameters as a share of the base model's, when the server
    knows the model's shape."""
    shape = model_shape(recipe.base_model)
    trainable = adapter_parameters(recipe)
    if shape is None or trainable is None or not shape.parameters:
        return None
    return trainable / shape.parameters


def peak_memory(recipe: RunRecipe, tier: TierSettings, data: DataShape) -> MemoryEstimate | None:
    """The run's planned peak memory on each of ``tier``'s cards; None when it is not checked.

    Raises ConfigError naming the setting to change when it does not fit.
    """
    card = tier.memory_gib
    config = model_config(recipe.base_model) if card else None
    if card is None or config is None:
        return None
    try:
        return check_fits(
            recipe,
            config,
            card,
            longest_example=data.longest_sequence_tokens or None,
            card_name=f"the {tier.name}",
            devices=tier.devices,
        )
    except ValueError:
        return None  # a local config.json without the usual size fields: the worker checks
