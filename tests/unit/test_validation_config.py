"""The validation, evaluation and early-stopping fields: bounds, defaults, the holdout rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunery.errors import ConfigError
from tunery.pipeline.config import ValidationSettings, load_recipe, parse_recipe
from tunery.pipeline.holdout import plan_holdout, validation_rows


def recipe_data(**overrides: Any) -> dict[str, Any]:
    return {"name": "r", "base_model": "tunery/demo-tiny", "datasets": ["d.jsonl"], **overrides}


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_recipe(data)
    return {problem.field: problem.message for problem in caught.value.problems}


def test_defaults_keep_training_as_it_was() -> None:
    recipe = parse_recipe(recipe_data())
    assert recipe.validation.split is None
    assert recipe.validation.datasets == recipe.validation.dataset_ids == []
    assert recipe.training.eval_every_steps == 0
    assert (recipe.early_stopping.patience, recipe.early_stopping.min_delta) == (0, 0.0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"validation": {"split": 0.51}}, "validation.split"),
        ({"validation": {"split": -0.1}}, "validation.split"),
        ({"training": {"eval_every_steps": -1}}, "training.eval_every_steps"),
        ({"early_stopping": {"patience": -1}}, "early_stopping.patience"),
        ({"early_stopping": {"min_delta": -0.01}}, "early_stopping.min_delta"),
        ({"validation": {"holdout": 0.1}}, "validation.holdout"),
    ],
)
def test_out_of_bounds_values_name_their_field(overrides: dict[str, Any], field: str) -> None:
    assert list(problems(recipe_data(**overrides))) == [field]


def test_patience_without_validation_data_is_blocked_with_its_field() -> None:
    found = problems(
        recipe_data(
            validation={"split": 0},
            training={"eval_every_steps": 10},
            early_stopping={"patience": 3},
        )
    )
    assert list(found) == ["early_stopping.patience"]
    assert "validation" in found["early_stopping.patience"]


def test_patience_without_evaluations_during_training_is_blocked() -> None:
    found = problems(recipe_data(validation={"split": 0.1}, early_stopping={"patience": 3}))
    assert list(found) == ["training.eval_every_steps"]


def test_both_early_stopping_problems_at_once() -> None:
    found = problems(recipe_data(validation={"split": 0}, early_stopping={"patience": 2}))
    assert set(found) == {"early_stopping.patience", "training.eval_every_steps"}


def test_patience_with_separate_validation_data_or_a_split_is_accepted() -> None:
    separate = parse_recipe(
        recipe_data(
            validation={"split": 0, "datasets": ["val.jsonl"]},
            training={"eval_every_steps": 5},
            early_stopping={"patience": 2, "min_delta": 0.01},
        )
    )
    assert separate.validation.separate
    default_split = parse_recipe(
        recipe_data(training={"eval_every_steps": 5}, early_stopping={"patience": 2})
    )
    assert default_split.early_stopping.patience == 2


def test_load_recipe_resolves_validation_files(tmp_path: Path) -> None:
    path = tmp_path / "recipes" / "run.yaml"
    path.parent.mkdir()
    path.write_text(
        "name: r\nbase_model: tunery/demo-tiny\ndatasets: [train.jsonl]\n"
        "validation:\n  datasets: [val/v.jsonl]\n",
        encoding="utf-8",
    )
    recipe = load_recipe(path)
    assert recipe.validation.datasets == [str((tmp_path / "recipes" / "val" / "v.jsonl").resolve())]


@pytest.mark.parametrize(
    ("rows", "split", "held"),
    [
        (199, None, 0),  # below the default rule's 200 rows
        (200, None, 10),  # 5%
        (397, None, 20),  # rounded up
        (100_000, None, 500),  # capped
        (1000, 0, 0),
        (100, 0.1, 10),
        (5, 0.01, 1),  # a set split holds out at least one row
        (2, 0.5, 1),  # and leaves at least one to train on
    ],
)
def test_validation_rows_rule(rows: int, split: float | None, held: int) -> None:
    assert validation_rows(rows, ValidationSettings(split=split)) == held


def test_separate_validation_data_wins_over_the_split() -> None:
    settings = ValidationSettings(split=0.3, dataset_ids=["ds_1"])
    assert validation_rows(1000, settings) == 0


def test_plan_holdout_takes_samples_first_then_the_split() -> None:
    plan = plan_holdout(400, 400, custom_prompts=False, validation=ValidationSettings())
    assert (plan.samples, plan.validation, plan.training) == (3, 20, 377)
    small = plan_holdout(20, 20, custom_prompts=False, validation=ValidationSettings(split=0.5))
    assert (small.samples, small.validation, small.training) == (0, 10, 10)
    custom = plan_holdout(400, 400, custom_prompts=True, validation=ValidationSettings(split=0))
    assert (custom.samples, custom.validation, custom.training) == (0, 0, 400)
