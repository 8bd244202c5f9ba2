"""The control plane's token counts against what a worker tokenises.

The memory check and the estimate plan a run from ``runs.data_shape``; where the server
holds the base model, that counts with the model's own tokenizer, so rows whose characters
per token are far from 4 (digits, code) are planned at their real length.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunery.pipeline.chat import Encoder
from tunery.pipeline.datasets import read_dataset
from tunery.pipeline.load import load_tokenizer
from tunery.runs.data_shape import file_shape
from tunery.runs.token_count import TOKENS_PER_MESSAGE, model_token_count, model_tokenizer

DIGITS = " ".join(str(7**power) for power in range(40, 60))
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Add these up: {DIGITS}"},
            {"role": "assistant", "content": f"The digits were {DIGITS[::-1]}."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Which city is the capital of Greece?"},
            {"role": "assistant", "content": "The capital of Greece is Athens."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Write a function that adds numbers."},
            {"role": "assistant", "content": "def total(values):\n    return sum(values)\n"},
        ]
    },
]
TEXT_ROWS = [{"text": f"def total(values):\n    return sum(values)  # {DIGITS[:80]}\n"}]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def worker_tokens(model_dir: Path, path: Path) -> list[int]:
    """Each row's tokens as a worker's data preparation makes them."""
    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=False)
    return [encoder.encode(row).tokens for row in read_dataset(path).rows]


def test_rows_are_counted_with_the_models_tokenizer(demo_model_dir: Path, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "digits.jsonl", ROWS)
    tokenizer = model_tokenizer(str(demo_model_dir), demo_model_dir.parent)
    assert tokenizer is not None and tokenizer.path == str(demo_model_dir / "tokenizer.json")

    counted = file_shape(path, model_token_count(tokenizer))
    from_characters = file_shape(path)
    real = worker_tokens(demo_model_dir, path)

    assert counted.rows == counted.chat_rows == 3
    for estimate, actual in zip(counted.row_tokens, real, strict=True):
        assert estimate == pytest.approx(actual, rel=0.05), (counted.row_tokens, real)
    assert counted.longest_sequence_tokens == max(counted.row_tokens)
    # Characters alone miss the digit-heavy row by far more than the tokenizer does.
    assert from_characters.row_tokens[0] < 0.6 * real[0]

    text = write_rows(tmp_path / "text.jsonl", TEXT_ROWS)
    (text_tokens,) = file_shape(text, model_token_count(tokenizer)).row_tokens
    assert file_shape(text, model_token_count(tokenizer)).chat_rows == 0
    assert text_tokens == pytest.approx(worker_tokens(demo_model_dir, text)[0], rel=0.05)


def test_a_pair_counts_its_prompt_with_either_answer(demo_model_dir: Path, tmp_path: Path) -> None:
    pair = {
        "prompt": [{"role": "user", "content": "Spell out 12345."}],
        "chosen": [{"role": "assistant", "content": "one two three four five"}],
        "rejected": [{"role": "assistant", "content": DIGITS}],
    }
    path = write_rows(tmp_path / "pairs.jsonl", [pair])
    tokenizer = model_tokenizer(str(demo_model_dir), demo_model_dir.parent)
    assert tokenizer is not None
    counted = file_shape(path, model_token_count(tokenizer))
    chosen_rows = [{"messages": pair["prompt"] + pair["chosen"]}]
    rejected_rows = [{"messages": pair["prompt"] + pair["rejected"]}]
    chosen = worker_tokens(demo_model_dir, write_rows(tmp_path / "c.jsonl", chosen_rows))[0]
    rejected = worker_tokens(demo_model_dir, write_rows(tmp_path / "r.jsonl", rejected_rows))[0]

    assert counted.rows == counted.chat_rows == 1
    assert counted.longest_sequence_tokens == pytest.approx(rejected, rel=0.05)
    assert counted.row_tokens[0] == pytest.approx(chosen + rejected, rel=0.05)


def test_the_tokenizer_is_read_only_from_the_models_directory(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(demo_model_dir, models / "demo-tiny")
    in_models = models / "demo-tiny" / "tokenizer.json"

    # A catalog id, built in the models directory, and a local model inside it.
    assert model_tokenizer("tunery/demo-tiny", models).path == str(in_models)
    assert model_tokenizer(str(models / "demo-tiny"), models).path == str(in_models)
    # Anything else is counted from characters: a model the server does not hold, a
    # directory outside the models directory, one reached by walking up, a relative name.
    assert model_tokenizer("tunery/smollm2-135m-instruct", models) is None
    assert model_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct", models) is None
    assert model_tokenizer(str(demo_model_dir), models) is None
    assert model_tokenizer(f"{models}/../{demo_model_dir.name}", models) is None
    assert model_tokenizer("./demo-tiny", models) is None


def test_a_model_without_a_readable_tokenizer_is_counted_from_characters(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "digits.jsonl", ROWS)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "tokenizer.json").write_text('{"model": "not a tokenizer"')
    tokenizer = model_tokenizer(str(broken), tmp_path)
    assert tokenizer is not None
    assert file_shape(path, model_token_count(tokenizer)) == file_shape(path)


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 / 0 }}",
        "{{ messages[0]['missing'].upper() }}",
        "{{ raise_exception('no system role') }}",
        "{% for %}",
        "{{ ''.__class__.__mro__ }}",
    ],
)
def test_a_template_that_cannot_render_falls_back_to_markers_per_message(
    tmp_path: Path, demo_model_dir: Path, template: str
) -> None:
    model = tmp_path / "odd-template"
    shutil.copytree(demo_model_dir, model)
    (model / "chat_template.jinja").write_text(template)
    tokenizer = model_tokenizer(str(model), tmp_path)
    assert tokenizer is not None
    count = model_token_count(tokenizer)
    assert (count.per_conversation, count.per_message) == (0, TOKENS_PER_MESSAGE)
    assert file_shape(write_rows(tmp_path / "rows.jsonl", ROWS), count).rows == 3
