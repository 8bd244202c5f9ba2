"""parse_recipe / load_recipe: contract defaults, every problem named by its dotted field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunery.errors import ConfigError
from tunery.pipeline.config import load_recipe, parse_recipe


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "my-run",
        "base_model": "tunery/demo-tiny",
        "datasets": ["data.jsonl"],
    }
    data.update(overrides)
    return data


def fields_of(data: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_recipe(data)
    return {problem.field: problem.message for problem in caught.value.problems}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_recipe_gets_contract_defaults() -> None:
    recipe = parse_recipe(minimal())
    assert recipe.name == "my-run"
    assert recipe.base_model == "tunery/demo-tiny"
    assert recipe.datasets == ["data.jsonl"]
    assert recipe.dataset_ids == []
    training = recipe.training
    assert training.epochs == 3
    assert training.max_steps == 0
    assert training.learning_rate == 2e-4
    assert training.batch_size == 8
    lora = recipe.lora
    assert lora.rank == 16
    assert lora.alpha == 32
    assert lora.dropout == 0.05
    assert lora.target_modules == "all-linear"
    assert recipe.export.gguf is True
    assert recipe.export.quantization == "Q4_K_M"


def test_dataset_ids_alone_are_enough_data() -> None:
    data = minimal(dataset_ids=["ds_123"])
    del data["datasets"]
    assert parse_recipe(data).dataset_ids == ["ds_123"]


def test_explicit_values_are_kept() -> None:
    recipe = parse_recipe(
        minimal(
            training={"epochs": 1, "max_steps": 30, "learning_rate": 1e-3, "batch_size": 2},
            lora={"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            export={"gguf": False},
        )
    )
    assert (recipe.training.epochs, recipe.training.max_steps) == (1, 30)
    assert recipe.training.learning_rate == 1e-3
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.export.gguf is False


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"lora": {"alpha": 0}}, "lora.alpha"),
        ({"training": {"learning_rate": -1e-4}}, "training.learning_rate"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"max_steps": -1}}, "training.max_steps"),
        ({"training": {"lr_scheduler": "cyclic"}}, "training.lr_scheduler"),
        ({"export": {"quantization": "Q8_0"}}, "export.quantization"),
    ],
)
def test_bad_hyperparameter_names_its_field(overrides: dict[str, Any], field: str) -> None:
    problems = fields_of(minimal(**overrides))
    assert list(problems) == [field]


def test_bad_value_message_says_what_is_allowed() -> None:
    problems = fields_of(minimal(lora={"rank": 0}))
    assert "greater than or equal to 1" in problems["lora.rank"]
    problems = fields_of(minimal(training={"learning_rate": -0.1}))
    assert "greater than 0" in problems["training.learning_rate"]


def test_unknown_field_is_reported_by_path() -> None:
    assert fields_of(minimal(epochs=3)) == {"epochs": "unknown field"}
    assert fields_of(minimal(lora={"rnak": 8})) == {"lora.rnak": "unknown field"}


def test_empty_target_modules_list() -> None:
    problems = fields_of(minimal(lora={"target_modules": []}))
    assert list(problems) == ["lora.target_modules"]
    assert "empty" in problems["lora.target_modules"]


def test_blank_target_module_name() -> None:
    problems = fields_of(minimal(lora={"target_modules": ["q_proj", " "]}))
    assert "blank" in problems["lora.target_modules"]


@pytest.mark.parametrize("name", ["team/run", "", "-starts-with-dash", "has space", "x" * 65])
def test_bad_run_name(name: str) -> None:
    assert list(fields_of(minimal(name=name))) == ["name"]


def test_empty_base_model() -> None:
    assert list(fields_of(minimal(base_model=""))) == ["base_model"]


def test_missing_required_fields() -> None:
    problems = fields_of({"datasets": ["d.jsonl"]})
    assert set(problems) == {"name", "base_model"}


def test_no_datasets() -> None:
    data = minimal()
    del data["datasets"]
    with pytest.raises(ConfigError) as caught:
        parse_recipe(data)
    assert len(caught.value.problems) == 1
    assert "no data" in caught.value.problems[0].message
    assert "datasets" in caught.value.problems[0].message


def test_several_problems_are_all_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_recipe(
            minimal(
                name="a/b",
                lora={"rank": 0, "target_modules": []},
                training={"learning_rate": -1, "batch_size": 0},
                colour="blue",
            )
        )
    fields = {problem.field for problem in caught.value.problems}
    assert fields == {
        "name",
        "lora.rank",
        "lora.target_modules",
        "training.learning_rate",
        "training.batch_size",
        "colour",
    }
    for field in fields:
        assert field in caught.value.message


@pytest.mark.parametrize("data", [None, [], "name: x", 42])
def test_non_mapping_payload(data: Any) -> None:
    assert fields_of(data) == {"recipe": "must be a mapping of fields"}


def test_load_recipe_resolves_datasets_against_recipe_dir(tmp_path: Path) -> None:
    recipe_path = write(
        tmp_path / "recipes" / "run.yaml",
        "name: r1\n"
        "base_model: tunery/demo-tiny\n"
        "datasets:\n"
        "  - data/train.jsonl\n"
        "  - ../shared.csv\n"
        f"  - {tmp_path / 'abs.parquet'}\n"
        "lora:\n"
        "  rank: 8\n",
    )
    recipe = load_recipe(recipe_path)
    assert recipe.datasets == [
        str((tmp_path / "recipes" / "data" / "train.jsonl").resolve()),
        str((tmp_path / "shared.csv").resolve()),
        str((tmp_path / "abs.parquet").resolve()),
    ]
    assert recipe.lora.rank == 8
    assert recipe.base_model == "tunery/demo-tiny"


def test_load_recipe_resolves_relative_local_model_dir(tmp_path: Path) -> None:
    (tmp_path / "models" / "base").mkdir(parents=True)
    recipe_path = write(
        tmp_path / "run.yaml", "name: r\nbase_model: ./models/base\ndatasets: [d.jsonl]\n"
    )
    assert load_recipe(recipe_path).base_model == str((tmp_path / "models" / "base").resolve())


def test_load_recipe_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert problem.field == str(path)
    assert "cannot read recipe" in problem.message


def test_load_recipe_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.yaml", "name: r\nbase_model: tunery/demo-tiny\ndatasets: [a.jsonl\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert problem.field == str(path)
    assert problem.message.startswith("not valid YAML at line ")
    line = int(problem.message.rsplit(" ", 1)[1])
    assert line >= 3


def test_load_recipe_invalid_yaml_line_is_exact(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "name: r\nbase_model: x\n  datasets: [a]\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert caught.value.problems[0].message == "not valid YAML at line 3"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_load_recipe_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("recipe", "must be a mapping of fields")
    ]


def test_load_recipe_reports_field_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "run.yaml",
        "name: r\nbase_model: tunery/demo-tiny\ndatasets: [d.jsonl]\ntraining:\n  batch_size: 0\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert [problem.field for problem in caught.value.problems] == ["training.batch_size"]


def test_load_recipe_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert "not valid UTF-8" in caught.value.problems[0].message
