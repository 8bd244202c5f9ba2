"""Recipe values that would be accepted and fail later are refused at submission.

Each is a ConfigError (a 422) naming the field, never a run that fails on a worker: seeds
no RNG takes, non-finite or unbounded hyperparameters, step budgets of centuries, Hub
revisions that walk up a path, base_model strings the filesystem chokes on, attestations
that are not booleans.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tunery.errors import ConfigError
from tunery.pipeline.config import (
    MAX_BASE_MODEL_CHARS,
    MAX_GRAD_NORM,
    MAX_LORA_ALPHA,
    MAX_SEED,
    MAX_STEPS,
    MIN_SEQ_LENGTH,
    parse_recipe,
)
from tunery.pipeline.load import parse_model_reference


def recipe(**sections: Any) -> dict[str, Any]:
    return {"name": "r", "base_model": "tunery/demo-tiny", "datasets": ["d.jsonl"], **sections}


def refused_fields(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_recipe(data)
    return {problem.field: problem.message for problem in caught.value.problems}


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("training", "seed", 2**64),
        ("training", "seed", MAX_SEED + 1),
        ("training", "seed", -1),
        ("training", "max_steps", 10**9),
        ("training", "max_steps", MAX_STEPS + 1),
        ("training", "learning_rate", math.inf),
        ("training", "learning_rate", math.nan),
        ("training", "max_grad_norm", math.inf),
        ("training", "max_grad_norm", math.nan),
        ("training", "max_grad_norm", MAX_GRAD_NORM * 10),
        ("training", "warmup_ratio", math.nan),
        ("training", "max_seq_length", MIN_SEQ_LENGTH - 1),
        ("lora", "alpha", math.inf),
        ("lora", "alpha", math.nan),
        ("lora", "alpha", MAX_LORA_ALPHA + 1),
        ("lora", "rank", 1025),
        ("lora", "dropout", math.nan),
        ("lora", "target_modules", ["q_proj", "../../etc"]),
        ("lora", "target_modules", ["q_proj; rm -rf"]),
        ("lora", "target_modules", [f"m{index}" for index in range(65)]),
        ("attestations", "dataset_rights", "yes"),
        ("attestations", "dataset_rights", 1),
        ("attestations", "model_license", "true"),
        ("attestations", "model_license", 1.0),
    ],
)
def test_out_of_range_value_names_its_field(section: str, field: str, value: Any) -> None:
    problems = refused_fields(recipe(**{section: {field: value}}))
    assert list(problems) == [f"{section}.{field}"]


def test_limits_themselves_are_accepted() -> None:
    accepted = parse_recipe(
        recipe(
            training={
                "seed": MAX_SEED,
                "max_steps": MAX_STEPS,
                "max_grad_norm": MAX_GRAD_NORM,
                "max_seq_length": MIN_SEQ_LENGTH,
            },
            lora={"alpha": MAX_LORA_ALPHA, "target_modules": ["q_proj", "model.layers.0.mlp"]},
            attestations={"dataset_rights": True, "model_license": False},
        )
    )
    assert accepted.training.seed == MAX_SEED
    assert accepted.attestations.dataset_rights is True


def test_torch_takes_the_largest_seed() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(MAX_SEED)


def test_base_model_longer_than_the_cap() -> None:
    problems = refused_fields(recipe(base_model="a" * (MAX_BASE_MODEL_CHARS + 1)))
    assert list(problems) == ["base_model"]


@pytest.mark.parametrize(
    "reference",
    [
        "https://huggingface.co/org/name/tree/..",
        "https://huggingface.co/org/name/tree/.",
        "https://huggingface.co/org/name/tree/main..x",
        "org/na..me",
        "org--x/name",
        "x" * 5_000,
        "model\x00name",
        "~no-such-user-here/model",
        "/" + "a" * 300 + "/" + "b" * 300,
    ],
)
def test_model_references_that_would_fail_later(reference: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model_reference(reference)
    assert [problem.field for problem in caught.value.problems] == ["base_model"]


def test_deeply_nested_recipe_file_is_a_config_error(tmp_path: Path) -> None:
    from tunery.pipeline.config import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert caught.value.problems[0].field == str(path)
