"""The model catalog: verified models, whose family's conversion and export are tested.

A verified model is refundable when a run on it fails. Its family names the test that
covers it: ``llama-bpe`` (Llama 3 tokenizer, ``tests/gguf`` on the demo model),
``qwen2`` and ``mistral-spm`` (tiny models of those families in ``tests/gguf``). Any other
Hugging Face id or URL may be trained as a custom, non-refundable model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunery.catalog.demo import DEMO_MODEL_ID


@dataclass(frozen=True)
class CatalogModel:
    id: str
    family: str
    parameters: int
    license: str
    context_length: int
    chat_template: str
    gguf: bool = True
    verified: bool = True
    lora_defaults: dict[str, Any] = field(
        default_factory=lambda: {"rank": 16, "alpha": 32, "target_modules": "all-linear"}
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CATALOG = (
    CatalogModel(DEMO_MODEL_ID, "llama-bpe", 3_672_320, "Apache-2.0", 1024, "chatml"),
    CatalogModel("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", 494_032_768, "Apache-2.0", 32768, "chatml"),
    CatalogModel(
        "Qwen/Qwen2.5-1.5B-Instruct", "qwen2", 1_543_714_304, "Apache-2.0", 32768, "chatml"
    ),
    CatalogModel(
        "meta-llama/Llama-3.2-1B-Instruct",
        "llama-bpe",
        1_235_814_400,
        "Llama 3.2 Community License",
        131072,
        "llama3",
    ),
    CatalogModel(
        "meta-llama/Llama-3.2-3B-Instruct",
        "llama-bpe",
        3_212_749_824,
        "Llama 3.2 Community License",
        131072,
        "llama3",
    ),
    CatalogModel(
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral-spm",
        7_241_732_096,
        "Apache-2.0",
        32768,
        "mistral-inst",
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
