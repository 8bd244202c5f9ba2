"""read_dataset: every accepted format round-trips, every bad input names file, line and cause."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunery.errors import DatasetError, DatasetProblem
from tunery.pipeline.datasets import MAX_PROBLEMS, Message, read_dataset


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def problems_of(path: Path) -> list[DatasetProblem]:
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    problems = caught.value.problems
    assert problems, "a DatasetError must list at least one problem"
    for problem in problems:
        assert problem.file == str(path)
    return problems


def only_problem(path: Path) -> DatasetProblem:
    problems = problems_of(path)
    assert len(problems) == 1, [str(problem) for problem in problems]
    return problems[0]


def roles(row: Any) -> list[str]:
    return [message.role for message in row.messages]


def test_no_torch_import_needed() -> None:
    code = (
        "import sys, tunery.pipeline.config, tunery.pipeline.datasets, tunery.pipeline.load; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- accepted formats, JSONL ---------------------------------------------------------------


def test_jsonl_messages_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                ]
            },
            {
                "id": "row-2",
                "metadata": {"source": "test"},
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Part one, "}]},
                    {"role": "assistant", "content": "skipped", "weight": 0},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                    {"role": "assistant", "content": "kept", "weight": 1},
                ],
            },
        ],
    )
    summary = read_dataset(path)
    assert summary.format == "messages"
    assert summary.file == str(path)
    assert summary.row_count == 2
    first, second = summary.rows
    assert (first.file, first.line, first.text) == (str(path), 1, None)
    assert first.messages == (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
    )
    assert second.line == 2
    assert second.messages == (
        Message("user", "Part one, "),
        Message("assistant", "skipped", trained=False),
        Message("user", "ab"),
        Message("assistant", "kept", trained=True),
    )


def test_jsonl_messages_allow_empty_system_turn(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": ""},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        ],
    )
    assert roles(read_dataset(path).rows[0]) == ["system", "user", "assistant"]


def test_jsonl_prompt_completion_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "2+2?", "completion": "4"},
            {"prompt": "Capital of France?", "completion": "Paris"},
        ],
    )
    summary = read_dataset(path)
    assert summary.format == "prompt_completion"
    assert [row.line for row in summary.rows] == [1, 2]
    assert summary.rows[0].messages == (Message("user", "2+2?"), Message("assistant", "4"))
    assert summary.rows[1].messages[1].content == "Paris"


def test_jsonl_alpaca_with_and_without_input(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate to French", "input": "cat", "output": "chat"},
            {"instruction": "Say hi", "output": "hi"},
            {"instruction": "Say bye", "input": "", "output": "bye"},
        ],
    )
    summary = read_dataset(path)
    assert summary.format == "alpaca"
    with_input, without_input, empty_input = summary.rows
    assert with_input.messages == (
        Message("user", "Translate to French\n\ncat"),
        Message("assistant", "chat"),
    )
    assert without_input.messages == (Message("user", "Say hi"), Message("assistant", "hi"))
    assert empty_input.messages[0] == Message("user", "Say bye")


def test_jsonl_sharegpt_conversations_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "You are terse."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hey"},
                    {"from": "user", "value": "Bye"},
                    {"from": "assistant", "value": "Later"},
                ]
            }
        ],
    )
    summary = read_dataset(path)
    assert summary.format == "conversations"
    assert summary.rows[0].messages == (
        Message("system", "You are terse."),
        Message("user", "Hi"),
        Message("assistant", "Hey"),
        Message("user", "Bye"),
        Message("assistant", "Later"),
    )


def test_jsonl_text_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "text.jsonl", [{"text": "Once upon a time."}, {"text": "The end."}]
    )
    summary = read_dataset(path)
    assert summary.format == "text"
    assert [(row.line, row.text, row.messages) for row in summary.rows] == [
        (1, "Once upon a time.", ()),
        (2, "The end.", ()),
    ]


def test_jsonl_blank_lines_keep_real_line_numbers_and_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n\n   \n{"text": "two"}\r\n\n{"text": "three"}')
    summary = read_dataset(path)
    assert [(row.line, row.text) for row in summary.rows] == [(1, "one"), (4, "two"), (6, "three")]


def test_display_name_replaces_path_in_rows_and_problems(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "upload-123.jsonl", [{"text": "ok"}])
    assert read_dataset(path, display_name="mydata.jsonl").rows[0].file == "mydata.jsonl"
    bad = write_jsonl(tmp_path / "upload-456.jsonl", [{"text": ""}])
    with pytest.raises(DatasetError) as caught:
        read_dataset(bad, display_name="mydata.jsonl")
    assert str(caught.value.problems[0]) == "mydata.jsonl, line 1: 'text' is empty"


# --- accepted formats, CSV -----------------------------------------------------------------


def test_csv_messages_column_holds_json(tmp_path: Path) -> None:
    conversation = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi, there"},
        {"role": "assistant", "content": "Hello\nfriend", "weight": 1},
    ]
    path = write_csv(tmp_path / "chat.csv", ["messages"], [[json.dumps(conversation)]])
    summary = read_dataset(path)
    assert summary.format == "messages"
    (row,) = summary.rows
    assert row.line == 2
    assert row.messages == (
        Message("system", "Be kind."),
        Message("user", "Hi, there"),
        Message("assistant", "Hello\nfriend"),
    )


def test_csv_prompt_completion_round_trip(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "pc.csv", ["id", "prompt", "completion"], [["a", "Q1", "A1"], ["b", "Q2", "A2"]]
    )
    summary = read_dataset(path)
    assert summary.format == "prompt_completion"
    assert [row.line for row in summary.rows] == [2, 3]
    assert summary.rows[1].messages == (Message("user", "Q2"), Message("assistant", "A2"))


def test_csv_line_numbers_count_multiline_cells(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "pc.csv",
        ["prompt", "completion"],
        [["line one\nline two", "A1"], ["Q2", "A2"]],
    )
    summary = read_dataset(path)
    assert [row.line for row in summary.rows] == [2, 4]
    assert summary.rows[0].messages[0].content == "line one\nline two"


def test_csv_alpaca_with_and_without_input(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "alpaca.csv",
        ["instruction", "input", "output"],
        [["Translate", "dog", "chien"], ["Say hi", "", "hi"]],
    )
    summary = read_dataset(path)
    assert summary.format == "alpaca"
    assert summary.rows[0].messages[0] == Message("user", "Translate\n\ndog")
    assert summary.rows[1].messages == (Message("user", "Say hi"), Message("assistant", "hi"))


def test_csv_conversations_column_holds_json(tmp_path: Path) -> None:
    conversation = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]
    path = write_csv(tmp_path / "sg.csv", ["conversations"], [[json.dumps(conversation)]])
    summary = read_dataset(path)
    assert summary.format == "conversations"
    assert roles(summary.rows[0]) == ["user", "assistant"]


def test_csv_text_round_trip(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "text.csv", ["text"], [["alpha"], ["beta, gamma"]])
    summary = read_dataset(path)
    assert summary.format == "text"
    assert [(row.line, row.text) for row in summary.rows] == [(2, "alpha"), (3, "beta, gamma")]


# --- accepted formats, Parquet -------------------------------------------------------------


def test_parquet_messages_as_list_of_structs(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "chat.parquet",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Ciao"},
                ]
            },
        ],
    )
    table = pq.read_table(path)
    assert pa.types.is_list(table.schema.field("messages").type)
    assert pa.types.is_struct(table.schema.field("messages").type.value_type)
    summary = read_dataset(path)
    assert summary.format == "messages"
    assert [row.line for row in summary.rows] == [1, 2]
    assert summary.rows[0].messages == (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
    )
    assert summary.rows[1].messages[1] == Message("assistant", "Ciao")


def test_parquet_messages_with_weight_on_some_turns(tmp_path: Path) -> None:
    # Parquet gives every struct the same fields, so turns without a weight read back as
    # weight None; that must mean "no weight given" (trained), not an invalid weight.
    path = write_parquet(
        tmp_path / "weights.parquet",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "draft", "weight": 0},
                    {"role": "user", "content": "Again"},
                    {"role": "assistant", "content": "final"},
                ]
            }
        ],
    )
    summary = read_dataset(path)
    assert summary.rows[0].messages == (
        Message("user", "Hi"),
        Message("assistant", "draft", trained=False),
        Message("user", "Again"),
        Message("assistant", "final", trained=True),
    )


def test_parquet_prompt_completion_alpaca_conversations_and_text(tmp_path: Path) -> None:
    pc = write_parquet(tmp_path / "pc.parquet", [{"prompt": "Q", "completion": "A"}])
    assert read_dataset(pc).format == "prompt_completion"
    assert read_dataset(pc).rows[0].messages == (Message("user", "Q"), Message("assistant", "A"))

    alpaca = write_parquet(
        tmp_path / "alpaca.parquet",
        [
            {"instruction": "Do", "input": "this", "output": "done"},
            {"instruction": "Do that", "input": None, "output": "ok"},
        ],
    )
    summary = read_dataset(alpaca)
    assert summary.format == "alpaca"
    assert summary.rows[0].messages[0].content == "Do\n\nthis"
    assert summary.rows[1].messages[0].content == "Do that"

    sharegpt = write_parquet(
        tmp_path / "sg.parquet",
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}],
    )
    assert read_dataset(sharegpt).format == "conversations"
    assert roles(read_dataset(sharegpt).rows[0]) == ["user", "assistant"]

    text = write_parquet(tmp_path / "text.parquet", [{"text": "plain"}, {"text": "words"}])
    summary = read_dataset(text)
    assert summary.format == "text"
    assert [(row.line, row.text) for row in summary.rows] == [(1, "plain"), (2, "words")]


# --- bad input -----------------------------------------------------------------------------


def test_problem_str_reads_file_line_message() -> None:
    assert (
        str(DatasetProblem("data.jsonl", "invalid JSON", 7)) == "data.jsonl, line 7: invalid JSON"
    )
    assert str(DatasetProblem("d.parquet", "bad", 3, "row")) == "d.parquet, row 3: bad"
    assert str(DatasetProblem("d.jsonl", "the file is empty")) == "d.jsonl: the file is empty"


def test_invalid_json_reports_the_right_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "ok"}\n\n{"text": "also ok"}\n   \n{"text": "broken"\n{"text": "fine"}\n',
        encoding="utf-8",
    )
    problem = only_problem(path)
    assert problem.line == 5
    assert problem.unit == "line"
    assert "invalid JSON" in problem.message
    assert str(problem).startswith(f"{path}, line 5: invalid JSON")


def test_invalid_utf8_in_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    problem = only_problem(path)
    assert problem.line == 2
    assert "invalid UTF-8" in problem.message
    assert "byte 14" in problem.message


def test_invalid_utf8_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"prompt,completion\nhi,there\ncaf\xe9,ok\n")
    problem = only_problem(path)
    assert problem.line == 3
    assert "invalid UTF-8" in problem.message


def test_unknown_field_in_known_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": "A", "promt": "x"}])
    problem = only_problem(path)
    assert problem.line == 1
    assert "unknown field" in problem.message
    assert "'promt'" in problem.message


def test_only_unknown_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "answer": "A"}])
    problem = only_problem(path)
    assert "unknown field(s) 'answer', 'question'" in problem.message
    assert "expected one of" in problem.message


def test_missing_completion(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": "A"}, {"prompt": "Q2"}])
    problem = only_problem(path)
    assert problem.line == 2
    assert "'completion' missing" in problem.message
    assert "'prompt'" in problem.message


def test_missing_alpaca_output(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Do", "input": "it"}])
    assert "'output' missing" in only_problem(path).message


def test_unknown_role(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "x"}]}],
    )
    problem = only_problem(path)
    assert "messages[0].role 'bot'" in problem.message
    assert "system, user, assistant" in problem.message


def test_unknown_sharegpt_role(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"conversations": [{"from": "robot", "value": "Hi"}, {"from": "gpt", "value": "x"}]}],
    )
    assert "conversations[0].from 'robot'" in only_problem(path).message


def test_empty_conversation(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": []}])
    problem = only_problem(path)
    assert problem.line == 1
    assert "'messages' is empty" in problem.message


def test_no_assistant_turn(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]}],
    )
    assert "no assistant turn" in only_problem(path).message


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "  "},
                    {"role": "assistant", "content": "A"},
                ]
            },
            "messages[0].content is empty",
        ),
        (
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]},
            "messages[1].content is empty",
        ),
        ({"prompt": "", "completion": "A"}, "'prompt' is empty"),
        ({"prompt": "Q", "completion": " \n"}, "'completion' is empty"),
        ({"instruction": "I", "output": ""}, "'output' is empty"),
        ({"text": ""}, "'text' is empty"),
    ],
)
def test_empty_content(tmp_path: Path, row: dict[str, Any], expected: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    problem = only_problem(path)
    assert problem.line == 1
    assert expected in problem.message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    problem = only_problem(path)
    assert "empty" in problem.message
    assert problem.line is None
    assert str(problem) == f"{path}: the file is empty"


def test_file_of_blank_lines_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n   \n\t\n\n", encoding="utf-8")
    assert "empty" in only_problem(path).message


def test_csv_with_header_only_is_empty(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "head.csv", ["prompt", "completion"], [])
    assert "empty" in only_problem(path).message


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, ["text", "list"]])
    problem = only_problem(path)
    assert problem.line == 2
    assert "must be a JSON object, not list" in problem.message


def test_mixed_formats_in_one_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "Q", "completion": "A"}, {"text": "plain"}]
    )
    problem = only_problem(path)
    assert problem.line == 2
    assert "text format" in problem.message
    assert "prompt_completion format" in problem.message
    assert "one format per file" in problem.message


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text('{"text": "hi"}\n', encoding="utf-8")
    problem = only_problem(path)
    assert "unsupported file type '.txt'" in problem.message
    assert ".jsonl" in problem.message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    assert "cannot read the file" in only_problem(path).message


def test_csv_row_with_more_cells_than_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nQ1,A1\nQ2,A2,extra\n", encoding="utf-8")
    problem = only_problem(path)
    assert problem.line == 3
    assert "more cells than the header" in problem.message


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nQ1,A1\n\nQ2,\n", encoding="utf-8")
    problem = only_problem(path)
    assert "'completion' is empty" in problem.message
    assert problem.line == 4, str(problem)


def test_csv_messages_column_with_invalid_json(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["messages"], [["[{not json"]])
    problem = only_problem(path)
    assert problem.line == 2
    assert "column 'messages' is not valid JSON" in problem.message


@pytest.mark.parametrize("weight", [2, -1, 0.5, True, "0"])
def test_weight_must_be_zero_or_one(tmp_path: Path, weight: Any) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A", "weight": weight},
                ]
            }
        ],
    )
    assert "messages[1].weight must be 0 or 1" in only_problem(path).message


def test_weight_zero_only_on_assistant(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Q", "weight": 0},
                    {"role": "assistant", "content": "A"},
                ]
            }
        ],
    )
    assert "only meaningful on assistant" in only_problem(path).message


def test_content_part_that_is_not_text(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                    {"role": "assistant", "content": "A"},
                ]
            }
        ],
    )
    assert "messages[0].content[0] is not a text part" in only_problem(path).message


def test_parquet_problem_names_the_row(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "d.parquet",
        [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": ""}],
    )
    problem = only_problem(path)
    assert (problem.line, problem.unit) == (2, "row")
    assert str(problem) == f"{path}, row 2: 'completion' is empty"


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in only_problem(path).message


def test_every_problem_in_a_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"prompt": "Q", "completion": "A"}',
                '{"prompt": "Q"}',
                "{oops",
                '{"prompt": "", "completion": "A"}',
                '{"prompt": "Q", "completion": "A"}',
                "[1, 2]",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    problems = problems_of(path)
    assert [problem.line for problem in problems] == [2, 3, 4, 6]
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    assert str(caught.value) == f"{problems[0]} (and 3 more problems)"


def test_problems_are_capped(tmp_path: Path) -> None:
    count = MAX_PROBLEMS + 15
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": ""} for _ in range(count)])
    problems = problems_of(path)
    assert len(problems) == MAX_PROBLEMS
    assert [problem.line for problem in problems] == list(range(1, MAX_PROBLEMS + 1))
