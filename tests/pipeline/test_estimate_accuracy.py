"""The estimate against real runs of the demo: exact steps, billed time within a factor of 2.

Slow: it benchmarks the demo model's shape and trains the demo twice. The first run's
estimate stands on the benchmark (``pipeline.calibration``), as a server's does before any
run of the model completed on the tier; the second one's on the first run's ``run.json``
timings, as a server's does after. Both ratios are recorded as test properties (they depend
on the machine); the second is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunery.db import Run
from tunery.pipeline.calibration import calibrate
from tunery.pipeline.config import load_recipe
from tunery.pipeline.recipe import run_recipe
from tunery.pipeline.reporting import RecordingReporter
from tunery.runs.calibration import request_for
from tunery.runs.data_shape import combined_shape, file_shape
from tunery.runs.estimate import BILLED_PHASES, Measured, compute_estimate, run_costs
from tunery.tiers import TierSettings

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CPU_TIER = TierSettings(id="cpu", name="CPU", credits_per_minute=1.0)


def billed(summary: dict) -> float:
    """What a server bills of a run (``run.json`` timings; no upload without a server)."""
    timings = summary["timings"]
    return sum(timings.get(phase, 0.0) for phase in BILLED_PHASES if phase != "evaluations")


def test_the_estimate_matches_the_demo_run(data_dir, tmp_path, record_property) -> None:
    recipe = load_recipe(EXAMPLES / "demo-recipe.yaml")
    training = recipe.training.model_copy(update={"max_steps": 40})
    recipe = recipe.model_copy(
        update={"training": training, "export": recipe.export.model_copy(update={"gguf": False})}
    )
    shape = file_shape(Path(recipe.datasets[0]))
    request = request_for(recipe, shape, None)
    assert request is not None
    benchmark = calibrate(request["shape"], recipe, example_tokens=request["example_tokens"])
    benchmark["import_seconds"] = 0.0  # this process imported torch long ago

    def estimate(measured: Measured | None):
        return compute_estimate(
            recipe,
            CPU_TIER,
            shape,
            combined_shape([]),
            measured=measured,
            calibration=benchmark,
            balance=100.0,
        )

    prior = estimate(None)
    assert prior.throughput_source == "calibrated"
    assert set(prior.phases) == {"training", "evaluations", "saving", "sampling", "uploading"}
    first = run_recipe(recipe, tmp_path / "first", RecordingReporter(), estimate=prior.model_dump())
    assert prior.total_steps == first.final_metrics["total_steps"] == 40
    assert first.summary["estimate"]["seconds"] == prior.seconds
    record_property("calibrated_to_actual", billed(first.summary) / prior.seconds)

    # What the server keeps of a completed run is what the next estimate learns from.
    done = Run(estimate=prior.model_dump(), metrics=first.final_metrics, summary=first.summary)
    costs = run_costs(done, 1.0)
    assert costs is not None
    measured = Measured(
        runs=1,
        same_model=True,
        train_seconds_per_token=costs["train_seconds_per_token"],
        eval_seconds_per_token=costs.get("eval_seconds_per_token"),
        sample_seconds_per_token=costs.get("sample_seconds_per_token"),
        seconds={key: costs[key] for key in ("saving",) if key in costs},
    )
    again = estimate(measured)
    assert again.throughput_source == "measured"
    second = run_recipe(recipe, tmp_path / "second", RecordingReporter())
    assert again.total_steps == second.final_metrics["total_steps"]
    ratio = billed(second.summary) / again.seconds
    record_property("measured_to_actual", ratio)
    assert 0.5 <= ratio <= 2.0, ratio
