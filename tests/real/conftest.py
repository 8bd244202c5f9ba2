"""The ``real`` tier: tunery's whole pipeline on SmolLM2-135M-Instruct (``smollm2_model_dir``).

Everything here trains, exports or serves a 134.5M-parameter model on the CPU, so runs are
a few steps of small batches; the tier stays under 10 minutes on 2 cores once the model is
built (about 35 s, cached in build/test-models/ like the demo model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunery.catalog.smollm2 import SMOLLM2_MODEL_ID
from tunery.pipeline.config import RunRecipe

# A few steps of four rows: a step of the real model costs about a second per hundred tokens.
_TRAINING = {
    "max_steps": 4,
    "learning_rate": 1e-3,
    "batch_size": 4,
    "gradient_checkpointing": False,
    "checkpoint_every_steps": 2,
    "warmup_ratio": 0.0,
    "max_seq_length": 256,
}


@pytest.fixture(scope="session")
def real_training() -> dict[str, Any]:
    """The training section of every run in this tier: four steps of four rows."""
    return dict(_TRAINING)


@pytest.fixture
def real_data_dir(tmp_path: Path, smollm2_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TUNERY_DATA_DIR whose models folder holds the built SmolLM2."""
    root = tmp_path / "tunery-data"
    (root / "models").mkdir(parents=True)
    (root / "models" / "smollm2-135m-instruct").symlink_to(smollm2_model_dir)
    monkeypatch.setenv("TUNERY_DATA_DIR", str(root))
    return root


@pytest.fixture
def real_recipe(
    make_recipe: Callable[..., RunRecipe], real_training: dict[str, Any]
) -> Callable[..., RunRecipe]:
    """``real_recipe(**overrides)``: a few steps on SmolLM2 (``real_training``), overridden."""

    def make(**overrides: Any) -> RunRecipe:
        training = {**real_training, **overrides.pop("training", {})}
        return make_recipe(base_model=SMOLLM2_MODEL_ID, training=training, **overrides)

    return make
