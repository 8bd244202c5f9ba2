"""parse_model_reference: classifies a base model without torch or the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunery.errors import ConfigError
from tunery.pipeline.load import ModelReference, parse_model_reference


def rejected(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_model_reference(text)
    (problem,) = caught.value.problems
    assert problem.field == "base_model"
    return caught.value


def test_demo_id() -> None:
    assert parse_model_reference("tunery/demo-tiny") == ModelReference(
        kind="demo", name="tunery/demo-tiny"
    )


def test_demo_id_with_surrounding_whitespace() -> None:
    assert parse_model_reference("  tunery/demo-tiny\n").kind == "demo"


def test_hub_id() -> None:
    assert parse_model_reference("Qwen/Qwen2.5-0.5B-Instruct") == ModelReference(
        kind="hub",
        name="Qwen/Qwen2.5-0.5B-Instruct",
        repo_id="Qwen/Qwen2.5-0.5B-Instruct",
    )


def test_hub_url() -> None:
    reference = parse_model_reference("https://huggingface.co/HuggingFaceTB/SmolLM2-135M")
    assert reference == ModelReference(
        kind="hub", name="HuggingFaceTB/SmolLM2-135M", repo_id="HuggingFaceTB/SmolLM2-135M"
    )
    assert reference.revision is None


def test_hub_url_with_revision() -> None:
    reference = parse_model_reference("https://huggingface.co/org/model/tree/v1.0")
    assert (reference.kind, reference.repo_id, reference.revision) == ("hub", "org/model", "v1.0")
    assert reference.name == "org/model"


def test_short_hub_url() -> None:
    reference = parse_model_reference("https://hf.co/org/model")
    assert (reference.kind, reference.repo_id) == ("hub", "org/model")


@pytest.mark.parametrize(
    ("url", "revision"),
    [
        ("https://huggingface.co/org/model/", None),
        ("https://huggingface.co/org/model/tree/main/", "main"),
    ],
)
def test_hub_url_with_trailing_slash(url: str, revision: str | None) -> None:
    reference = parse_model_reference(url)
    assert (reference.kind, reference.repo_id, reference.revision) == ("hub", "org/model", revision)


def test_existing_local_dir(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    reference = parse_model_reference(str(model))
    assert reference.kind == "local"
    assert reference.path == model.resolve()
    assert reference.name == str(model.resolve())
    assert reference.repo_id is None


def test_relative_local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    reference = parse_model_reference("./m")
    assert (reference.kind, reference.path) == ("local", (tmp_path / "m").resolve())


def test_missing_local_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    error = rejected(str(missing))
    assert str(missing) in error.problems[0].message
    assert "config.json" in error.problems[0].message
    assert "base_model" in error.message


def test_local_dir_without_config(tmp_path: Path) -> None:
    error = rejected(str(tmp_path))
    assert "no config.json" in error.problems[0].message


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/model",
        "http://huggingface.co/org/model",
        "https://huggingface.co/org",
        "https://huggingface.co/org/model/blob/main/config.json",
        "https://huggingface.co/datasets/org/name/extra",
    ],
)
def test_non_hub_url(url: str) -> None:
    error = rejected(url)
    assert "is not a Hugging Face model URL" in error.problems[0].message
    assert "huggingface.co/ORG/NAME" in error.hint


@pytest.mark.parametrize("text", ["not a model!", "just-a-name", "a/b/c", "org/"])
def test_garbage(text: str) -> None:
    error = rejected(text)
    assert "is not a catalog id, Hugging Face id" in error.problems[0].message


@pytest.mark.parametrize("text", ["", "   "])
def test_blank_is_rejected_even_where_cwd_is_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    # A blank base model must not silently mean "the current directory".
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rejected(text)
