"""The model catalog: verified models, whose family's conversion and export are tested.

A verified model is refundable when a run on it fails. Its family names the test that
covers it: ``llama-bpe`` (Llama 3 tokenizer, ``tests/gguf`` on the demo model),
``qwen2`` and ``mistral-spm`` (tiny models of those families in ``tests/gguf``). Any other
Hugging Face id or URL may be trained as a custom, non-refundable model.

Two models tunery builds itself (``build``), into ``DATA_DIR/models/FOLDER``: the demo model
``tunery/demo-tiny`` (random weights pretrained here on the demo corpus, in a minute) and
``tunery/smollm2-135m-instruct``, a real pretrained model dequantized from the GGUF a pinned
package carries (family ``smollm``: llama.cpp's name for its pre-tokenizer; ``tests/real``).

Each entry carries the config.json fields that set its size (``shape``), so a run on it is
checked against its tier's card before it queues (``tunery.pipeline.memory``); a test
checks they add up to ``parameters``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunery.catalog.demo import DEMO_MODEL_ID, DEMO_MODEL_SHAPE
from tunery.catalog.smollm2 import (
    CONTEXT_LENGTH,
    SMOLLM2_MODEL_ID,
    SMOLLM2_PARAMETERS,
    SMOLLM2_SHAPE,
)


@dataclass(frozen=True)
class LocalBuild:
    """How tunery builds a catalog model itself (``tunery demo-model --model FOLDER``)."""

    folder: str
    """Its folder under ``DATA_DIR/models``, and the name ``tunery demo-model`` takes."""
    builder: str
    """``module:function`` that writes the model into a folder, imported when it runs."""
    takes: str
    """How long a build takes on 2 cores, said to whoever waits for it."""
    offline: bool
    """True when the build needs no network: servers then list the model before it is
    built (a run builds it); otherwise only once it is there."""


@dataclass(frozen=True)
class CatalogModel:
    id: str
    family: str
    parameters: int
    license: str
    context_length: int
    chat_template: str
    shape: dict[str, Any]
    """config.json's size fields, as the memory planner reads them (``ModelShape``)."""
    gguf: bool = True
    verified: bool = True
    lora_defaults: dict[str, Any] = field(
        default_factory=lambda: {"rank": 16, "alpha": 32, "target_modules": "all-linear"}
    )
    build: LocalBuild | None = None
    """Set for a model tunery builds itself; None for a Hugging Face model."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shape(
    hidden: int,
    layers: int,
    heads: int,
    key_value_heads: int,
    intermediate: int,
    vocab: int,
    *,
    tied: bool,
    head_dim: int | None = None,
) -> dict[str, Any]:
    """config.json's size fields of a Llama-style model (head_dim when it is not hidden/heads)."""
    shape: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": key_value_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
    }
    if head_dim is not None:
        shape["head_dim"] = head_dim
    return shape


CATALOG = (
    CatalogModel(
        DEMO_MODEL_ID,
        "llama-bpe",
        3_672_320,
        "Apache-2.0",
        1024,
        "chatml",
        DEMO_MODEL_SHAPE,
        build=LocalBuild(
            "demo-tiny", "tunery.catalog.demo:build_demo_model", "about a minute", offline=True
        ),
    ),
    CatalogModel(
        SMOLLM2_MODEL_ID,
        "smollm",
        SMOLLM2_PARAMETERS,
        "Apache-2.0",
        CONTEXT_LENGTH,
        "chatml",
        SMOLLM2_SHAPE,
        build=LocalBuild(
            "smollm2-135m-instruct",
            "tunery.catalog.smollm2:build_smollm2_model",
            "under a minute once the 93 MB package is fetched",
            offline=False,
        ),
    ),
    CatalogModel(
        "Qwen/Qwen2.5-0.5B-Instruct",
        "qwen2",
        494_032_768,
        "Apache-2.0",
        32768,
        "chatml",
        _shape(896, 24, 14, 2, 4864, 151936, tied=True),
    ),
    CatalogModel(
        "Qwen/Qwen2.5-1.5B-Instruct",
        "qwen2",
        1_543_714_304,
        "Apache-2.0",
        32768,
        "chatml",
        _shape(1536, 28, 12, 2, 8960, 151936, tied=True),
    ),
    CatalogModel(
        "meta-llama/Llama-3.2-1B-Instruct",
        "llama-bpe",
        1_235_814_400,
        "Llama 3.2 Community License",
        131072,
        "llama3",
        _shape(2048, 16, 32, 8, 8192, 128256, tied=True, head_dim=64),
    ),
    CatalogModel(
        "meta-llama/Llama-3.2-3B-Instruct",
        "llama-bpe",
        3_212_749_824,
        "Llama 3.2 Community License",
        131072,
        "llama3",
        _shape(3072, 28, 24, 8, 8192, 128256, tied=True, head_dim=128),
    ),
    CatalogModel(
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral-spm",
        7_241_732_096,
        "Apache-2.0",
        32768,
        "mistral-inst",
        _shape(4096, 32, 32, 8, 14336, 32000, tied=False),
        lora_defaults={
            "rank": 16,
            "alpha": 32,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
    ),
)


def catalog() -> tuple[CatalogModel, ...]:
    return CATALOG


def find(model_id: str) -> CatalogModel | None:
    return next((entry for entry in CATALOG if entry.id == model_id), None)


def find_build(name: str) -> CatalogModel | None:
    """The catalog model tunery builds under the id or folder ``name``, if any."""
    return next(
        (
            entry
            for entry in CATALOG
            if entry.build is not None and name in (entry.id, entry.build.folder)
        ),
        None,
    )


def is_built(model_dir: Path) -> bool:
    """Whether a built model is complete there (builds appear by a final rename)."""
    return (model_dir / "model.safetensors").is_file()


def listed(models_dir: Path) -> tuple[CatalogModel, ...]:
    """The catalog a server offers: a model whose build needs the network appears once it
    is built in ``models_dir`` (``tunery demo-model --model FOLDER``)."""
    return tuple(
        entry
        for entry in CATALOG
        if entry.build is None or entry.build.offline or is_built(models_dir / entry.build.folder)
    )
