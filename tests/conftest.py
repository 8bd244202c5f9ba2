"""Shared fixtures: the demo model (built once and cached by source hash) and a data dir."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunery.pipeline.config import RunRecipe, parse_recipe

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MODEL_CACHE = REPO / "build" / "test-models"


def _demo_source_hash() -> str:
    import tunery.catalog.demo as demo
    import tunery.catalog.demo_data as demo_data

    digest = hashlib.sha256()
    for module in (demo, demo_data):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo base model, rebuilt only when its builder's source changes."""
    from tunery.catalog.demo import build_demo_model

    target = MODEL_CACHE / f"demo-tiny-{_demo_source_hash()}"
    if not (target / "model.safetensors").is_file():
        for stale in MODEL_CACHE.glob("demo-tiny-*"):
            shutil.rmtree(stale, ignore_errors=True)
        build_demo_model(target)
    return target


@pytest.fixture
def data_dir(tmp_path: Path, demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TUNERY_DATA_DIR whose catalog already holds the demo model."""
    root = tmp_path / "tunery-data"
    (root / "models").mkdir(parents=True)
    (root / "models" / "demo-tiny").symlink_to(demo_model_dir, target_is_directory=True)
    monkeypatch.setenv("TUNERY_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def demo_dataset() -> Path:
    return EXAMPLES / "demo-dataset.jsonl"


def demo_recipe(dataset: Path, **overrides: Any) -> RunRecipe:
    """A recipe on the demo model with a small budget; dict overrides merge into sections."""
    payload: dict[str, Any] = {
        "name": "test-run",
        "base_model": "tunery/demo-tiny",
        "datasets": [str(dataset)],
        "training": {
            "max_steps": 8,
            "learning_rate": 2e-3,
            "batch_size": 8,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 4,
            "warmup_ratio": 0.0,
        },
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 12},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(payload.get(key), dict):
            payload[key] = {**payload[key], **value}
        else:
            payload[key] = value
    return parse_recipe(payload)


@pytest.fixture
def make_recipe(demo_dataset: Path) -> Callable[..., RunRecipe]:
    """``make_recipe(**overrides)``: the demo recipe with overrides (see ``demo_recipe``)."""
    return lambda **overrides: demo_recipe(overrides.pop("dataset", demo_dataset), **overrides)
