"""Preference datasets: both formats round-trip with their kind; every bad pair names its
file, line and cause."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunery.errors import DatasetError
from tunery.pipeline.datasets import Message, dataset_kind, kind_mismatch, read_dataset


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def openai_pair(prompt: str = "Hi?", better: str = "Hello!", worse: str = "Go away.") -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": better}],
        "non_preferred_output": [{"role": "assistant", "content": worse}],
    }


def test_openai_preference_format_round_trips(tmp_path: Path) -> None:
    row = openai_pair()
    row["input"]["messages"] = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How are you?"},
    ]
    row["input"]["tools"] = []
    row["input"]["parallel_tool_calls"] = False
    summary = read_dataset(write_jsonl(tmp_path / "p.jsonl", [row, openai_pair()]))

    assert (summary.format, summary.kind, summary.row_count, summary.rows) == (
        "preference",
        "preference",
        2,
        [],
    )
    pair = summary.pairs[0]
    assert (pair.file, pair.line) == (str(tmp_path / "p.jsonl"), 1)
    # The conversation before the answers is never trained on, its assistant turn included.
    assert [(m.role, m.trained) for m in pair.prompt] == [
        ("system", False),
        ("user", False),
        ("assistant", False),
        ("user", False),
    ]
    assert pair.chosen == (Message("assistant", "Hello!"),)
    assert pair.rejected == (Message("assistant", "Go away."),)


def test_prompt_chosen_rejected_as_strings_or_messages(tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "5."},
        {
            "prompt": [{"role": "user", "content": "What is 2 plus 2?"}],
            "chosen": [{"role": "assistant", "content": "4."}],
            "rejected": [{"role": "assistant", "content": "5."}],
            "id": "x1",
        },
    ]
    summary = read_dataset(write_jsonl(tmp_path / "p.jsonl", rows))
    assert (summary.format, summary.kind) == ("prompt_chosen_rejected", "preference")
    first, second = summary.pairs
    assert first.prompt == second.prompt == (Message("user", "What is 2 plus 2?", trained=False),)
    assert first.chosen == second.chosen == (Message("assistant", "4."),)


def test_csv_and_parquet_hold_pairs(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerow(["What is 2 plus 2?", "4.", "5."])
    assert read_dataset(path).pairs[0].rejected == (Message("assistant", "5."),)

    openai_csv = tmp_path / "o.csv"
    row = openai_pair()
    with openai_csv.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(list(row))
        writer.writerow([json.dumps(value) for value in row.values()])
    assert read_dataset(openai_csv).pairs[0].chosen == (Message("assistant", "Hello!"),)

    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([openai_pair(), openai_pair(worse="No.")]), parquet)
    summary = read_dataset(parquet)
    assert summary.kind == "preference" and summary.pairs[1].rejected[0].content == "No."


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {
                "input": openai_pair()["input"],
                "preferred_output": openai_pair()["preferred_output"],
            },
            "'non_preferred_output' missing (needed with 'input', 'preferred_output')",
        ),
        (
            {"prompt": "Hi?", "chosen": "Hello!"},
            "'rejected' missing (needed with 'chosen', 'prompt')",
        ),
        (
            openai_pair(better="Same.", worse="Same."),
            "'preferred_output' and 'non_preferred_output' are identical",
        ),
        ({"prompt": "Hi?", "chosen": "Yes.", "rejected": "Yes."}, "'chosen' and 'rejected' are"),
        ({"prompt": "Hi?", "chosen": "  ", "rejected": "No."}, "'chosen' is empty"),
        ({"prompt": "", "chosen": "Yes.", "rejected": "No."}, "'prompt' is empty"),
        (
            openai_pair() | {"preferred_output": []},
            "'preferred_output' is empty; give the answer as an assistant message",
        ),
        (
            openai_pair() | {"non_preferred_output": [{"role": "assistant", "content": ""}]},
            "non_preferred_output[0].content is empty",
        ),
        (
            openai_pair() | {"preferred_output": [{"role": "user", "content": "Hello!"}]},
            "preferred_output[0].role is 'user'; an answer holds assistant messages only",
        ),
        (
            openai_pair()
            | {"input": {"messages": [{"role": "user", "content": "Hi"}], "tools": [{}]}},
            "'input.tools' is not supported",
        ),
        (openai_pair() | {"input": {"prompt": "Hi"}}, "'input' has unknown field(s) 'prompt'"),
        (openai_pair() | {"input": "Hi"}, "'input' must be an object with 'messages', not str"),
        (
            openai_pair() | {"input": {"messages": [{"role": "assistant", "content": "Hi"}]}},
            "'input.messages' must end with a user message",
        ),
        (
            {"prompt": [{"role": "system", "content": "Be kind."}], "chosen": "a", "rejected": "b"},
            "'prompt' must end with a user message",
        ),
        (
            {"prompt": "Hi", "chosen": "a", "rejected": "b", "completion": "c"},
            "unknown field(s) 'completion' in a prompt_chosen_rejected row",
        ),
        (
            openai_pair()
            | {"preferred_output": [{"role": "assistant", "content": "a", "weight": 0}]},
            "preferred_output[0] has unknown field(s) 'weight'",
        ),
    ],
)
def test_bad_pair_is_named_by_file_and_line(
    tmp_path: Path, row: dict[str, Any], expected: str
) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            openai_pair()
            if "input" in row
            else {"prompt": "Fine?", "chosen": "Yes.", "rejected": "No."},
            row,
        ],
    )
    with pytest.raises(DatasetError) as refused:
        read_dataset(path)
    (problem,) = refused.value.problems
    assert (problem.file, problem.line) == (str(path), 2)
    assert expected in problem.message


def test_pairs_and_chat_rows_do_not_mix_in_one_file(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    path = write_jsonl(tmp_path / "p.jsonl", [openai_pair(), chat])
    with pytest.raises(DatasetError, match="line 2: this row is in messages format but the file"):
        read_dataset(path)


def test_kinds_and_the_mismatch_sentence() -> None:
    assert [dataset_kind(name) for name in ("messages", "text", "preference")] == [
        "sft",
        "sft",
        "preference",
    ]
    assert dataset_kind("prompt_chosen_rejected") == "preference"
    assert kind_mismatch("sft", "alpaca", "dpo") == (
        "holds chat rows (alpaca format); method.type dpo trains on preference pairs"
    )


def test_the_example_dpo_recipe_continues_the_demo_run() -> None:
    from tunery.pipeline.config import load_recipe

    examples = Path(__file__).resolve().parents[2] / "examples"
    sft = load_recipe(examples / "demo-recipe.yaml")
    dpo = load_recipe(examples / "demo-dpo-recipe.yaml")
    assert (dpo.method.type, dpo.method.dpo_beta) == ("dpo", 0.1)
    # Relative to the recipe file, as datasets are: the demo run's default output directory.
    assert dpo.init_from == str((examples.parent / "runs" / sft.name).resolve())
    assert not dpo.init_from_run
    assert (dpo.base_model, dpo.lora.rank, dpo.lora.alpha, dpo.lora.target_modules) == (
        sft.base_model,
        sft.lora.rank,
        sft.lora.alpha,
        sft.lora.target_modules,
    )
    assert read_dataset(Path(dpo.datasets[0])).kind == "preference"
