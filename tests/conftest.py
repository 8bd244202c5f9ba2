"""Shared fixtures: the demo model (built once and cached by source hash) and a data dir."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

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
