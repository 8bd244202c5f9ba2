"""The estimate's prior on a local tier: a micro-benchmark per model shape, measured once.

Until a run of a model completed on a tier, its estimate rests on how fast the tier trains
that model's shape (``tunery.pipeline.calibration``): measured here by a short benchmark in a
worker-like process on this machine, whose nodes are the local tiers, and cached in
``DATA_DIR/calibrations`` by tier, shape and the recipe's settings that change a step's cost.
A benchmark starts when an estimate asks for one it lacks, one at a time, and only while the
tier's nodes are free (a busy node would measure the run beside it); until it is done the
estimate says so and falls back on the tier's assumed TFLOPS. Tiers on a Ray cluster are not
measured this way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tunery.pipeline.config import RunRecipe
from tunery.pipeline.memory import ModelShape
from tunery.runs import fit, store
from tunery.runs.data_shape import DataShape
from tunery.runs.plane import ControlPlane
from tunery.tiers import TierSettings

logger = logging.getLogger(__name__)
BENCHMARK_SECONDS = 900
"""A benchmark that takes longer is given up (and tried again by a later estimate)."""
MIN_EXAMPLE_TOKENS = 64
_running = threading.Lock()


def request_for(recipe: RunRecipe, data: DataShape, limit: int | None) -> dict[str, Any] | None:
    """What a benchmark of this run measures: its model's shape, the recipe's settings that
    change a step's cost, and its examples' typical length (rounded up to a power of two, so
    runs on similar data share one). None when the server does not know the model's shape."""
    config = fit.model_config(recipe.base_model)
    if config is None:
        return None
    try:
        shape = ModelShape.from_config(config)
    except ValueError:
        return None
    lengths = [min(tokens, limit or tokens) for tokens in data.row_tokens] or [0]
    typical = max(MIN_EXAMPLE_TOKENS, round(sum(lengths) / len(lengths)))
    return {
        "shape": {
            "hidden_size": shape.hidden_size,
            "num_hidden_layers": shape.layers,
            "vocab_size": shape.vocab_size,
            "intermediate_size": shape.intermediate_size,
            "num_attention_heads": shape.attention_heads,
            "num_key_value_heads": shape.key_value_heads,
            "head_dim": shape.head_dim,
            "tie_word_embeddings": shape.tied_embeddings,
        },
        "recipe": {
            "name": "calibration",
            "base_model": recipe.base_model,
            "datasets": ["calibration.jsonl"],
            "training": {
                "batch_size": recipe.training.batch_size,
                "gradient_accumulation_steps": recipe.training.gradient_accumulation_steps,
                "gradient_checkpointing": recipe.training.gradient_checkpointing,
                "mixed_precision": recipe.training.mixed_precision,
                "compile": recipe.training.compile,
            },
            "lora": {
                "rank": recipe.lora.rank,
                "target_modules": recipe.lora.target_modules,
                "quantize_base": recipe.lora.quantize_base,
            },
        },
        "example_tokens": 1 << (typical - 1).bit_length(),
    }


def _path(plane: ControlPlane, tier: TierSettings, request: dict[str, Any]) -> Path:
    key = json.dumps({"tier": tier.id, **request}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return plane.settings.data_dir / "calibrations" / f"{digest}.json"


def cached(plane: ControlPlane, tier: TierSettings, request: dict[str, Any]) -> dict | None:
    """The benchmark's measurement for this tier and request, if it was measured."""
    try:
        return json.loads(_path(plane, tier, request).read_text())
    except (OSError, ValueError):
        return None


def measurable(plane: ControlPlane, tier: TierSettings) -> bool:
    """Whether this server measures ``tier`` itself: its nodes are this machine's."""
    return (
        plane.settings.calibrate_estimates
        and plane.workers.kind == "local"
        and any(node.tier == tier.id for node in plane.settings.nodes)
    )


def start(plane: ControlPlane, tier: TierSettings, request: dict[str, Any]) -> bool:
    """Start measuring in the background unless a benchmark runs already or a node of the
    tier is busy; True when it started."""
    with plane.sessions() as session:
        busy = store.busy_nodes(session)
    if any(node.tier == tier.id and node.name in busy for node in plane.settings.nodes):
        return False
    if not _running.acquire(blocking=False):
        return False
    threading.Thread(
        target=_measure, args=(plane, tier, request), name="calibration", daemon=True
    ).start()
    return True


def measure(plane: ControlPlane, tier: TierSettings, request: dict[str, Any]) -> dict | None:
    """Measure now, in this thread (the demo's seeding does, before its first run)."""
    with _running:
        return _run(plane, tier, request)


def _measure(plane: ControlPlane, tier: TierSettings, request: dict[str, Any]) -> None:
    try:
        _run(plane, tier, request)
    finally:
        _running.release()


def _run(plane: ControlPlane, tier: TierSettings, request: dict[str, Any]) -> dict | None:
    node = next((n for n in plane.settings.nodes if n.tier == tier.id), None)
    threads = node.threads if node is not None else None
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNERY_")}
    try:
        answer = subprocess.run(
            [sys.executable, "-m", "tunery.worker.calibrate"],
            input=json.dumps({**request, "threads": threads}),
            capture_output=True,
            text=True,
            timeout=BENCHMARK_SECONDS,
            env=env,
            check=True,
        )
        result = json.loads(answer.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as failure:
        # The estimate falls back on the tier's assumed TFLOPS; a later estimate tries again.
        logger.warning("calibrating %s failed: %s", tier.id, failure)
        return None
    path = _path(plane, tier, request)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(path)
    return result
