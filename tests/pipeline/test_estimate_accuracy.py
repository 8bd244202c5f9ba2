"""The estimate against real runs of the demo: exact steps, time within a factor of 2.

Slow: it trains the demo twice. The first run's estimate uses the tier's prior (its ratio
to the actual time is recorded as a test property: it depends on the machine); the second
run's uses the throughput the first one measured, as the server's estimate does once a run
of the model completed on the tier, and is what is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunery.pipeline.config import load_recipe
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter
from tunery.runs.data_shape import combined_shape, file_shape
from tunery.runs.estimate import compute_estimate, measured_rate
from tunery.tiers import TierSettings

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CPU_TIER = TierSettings(id="cpu", name="CPU", credits_per_minute=1.0)


def test_the_estimate_matches_the_demo_run(data_dir, tmp_path, record_property) -> None:
    recipe = load_recipe(EXAMPLES / "demo-recipe.yaml")
    training = recipe.training.model_copy(update={"max_steps": 40})
    recipe = recipe.model_copy(
        update={"training": training, "export": recipe.export.model_copy(update={"gguf": False})}
    )
    shape = file_shape(Path(recipe.datasets[0]))

    def estimate(rate: float | None):
        return compute_estimate(
            recipe, CPU_TIER, shape, combined_shape([]), rate=rate, measured=0, balance=100.0
        )

    prior = estimate(None)
    first = run_recipe(recipe, tmp_path / "first", RecordingReporter()).final_metrics
    assert prior.total_steps == first["total_steps"] == 40
    record_property("prior_to_actual", prior.seconds / first["training_seconds"])

    measured = estimate(measured_rate(prior.model_dump(), first))
    second = run_recipe(recipe, tmp_path / "second", RecordingReporter()).final_metrics
    assert measured.total_steps == second["total_steps"]
    ratio = measured.seconds / second["training_seconds"]
    record_property("measured_to_actual", ratio)
    assert 0.5 <= ratio <= 2.0, ratio
