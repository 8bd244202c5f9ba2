"""Hostile dataset files: each is accepted or refused with a DatasetError, never anything else.

A generated corpus of known attacks (deep nesting, huge integers, lone surrogates, NUL,
invalid UTF-8, out-of-range Parquet dates, files past the row and size limits) and a
bounded fuzzer of random mutations of valid files. A DatasetError becomes a 4xx with its
file and line; any other exception would be a 500 and a dropped connection.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunery.errors import DatasetError, DatasetProblem
from tunery.pipeline import dataset_files, datasets
from tunery.pipeline.datasets import MAX_PROBLEMS, read_dataset

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def refused(path: Path) -> list[DatasetProblem]:
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    return caught.value.problems


def jsonl(path: Path, lines: list[str | bytes]) -> Path:
    encoded = [line if isinstance(line, bytes) else line.encode() for line in lines]
    path.write_bytes(b"\n".join(encoded) + b"\n")
    return path


def good_line() -> str:
    return json.dumps(CHAT)


# --- JSON that json.loads cannot take, or takes and training could not -----------------------


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        ('{"messages": ' + "[" * 10_000 + "]" * 10_000 + "}", "nested too deeply"),
        ('{"text": "a", "metadata": {"a": ' + "[" * 10_000 + "]" * 10_000 + "}}", "nested"),
        ('{"text": "a", "metadata": ' + "9" * 5_000 + "}", "invalid JSON"),
        ('{"text": "a\\ud800b"}', "lone surrogate"),
        ('{"prompt": "hi", "completion": "x\\udfff"}', "lone surrogate"),
        ('{"text": "a\\u0000b"}', "NUL"),
        (
            '{"messages": [{"role": "user", "content": "\\ud83d"}, '
            '{"role": "assistant", "content": "ok"}]}',
            "lone surrogate",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\u0000"}]}, '
            '{"role": "assistant", "content": "ok"}]}',
            "NUL",
        ),
        ('{"text": "raw \x00 byte"}', "invalid JSON"),
        (
            '{"messages": [{"role": ' + "[" * 500 + "]" * 500 + ', "content": "x"}]}',
            "is not one of",
        ),
        ('{"messages": [{"role": "assistant", "content": "x", "weight": NaN}]}', "0 or 1"),
        ('{"' + "k" * 100_000 + '": 1}', "unknown field"),
    ],
)
def test_hostile_jsonl_line_is_a_numbered_problem(
    tmp_path: Path, hostile: str, expected: str
) -> None:
    # The blank first line shifts the hostile row to line 2 whatever its format.
    path = jsonl(tmp_path / "d.jsonl", ["", hostile])
    problems = refused(path)
    assert [problem.line for problem in problems] == [2]
    assert expected in problems[0].message
    assert len(problems[0].message) < 400  # never echoes a huge value back


def test_invalid_utf8_is_a_numbered_problem(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [good_line(), b'{"text": "\xff\xfe"}'])
    (problem,) = refused(path)
    assert problem.line == 2
    assert "invalid UTF-8" in problem.message


def counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Counts what the real ``module.name`` yields (a generator) or how often it is called
    (a function): how far a reader got, which no machine's speed changes."""
    real = getattr(module, name)
    count = [0]

    def each(items: Iterator[object]) -> Iterator[object]:
        for item in items:
            count[0] += 1
            yield item

    def counted(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        if isinstance(result, Iterator):
            return each(result)
        count[0] += 1
        return result

    monkeypatch.setattr(module, name, counted)
    return count


def test_problems_stop_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = jsonl(tmp_path / "d.jsonl", ["[1]"] * 200_000)
    records = counting(monkeypatch, datasets, "raw_records")
    problems = refused(path)
    assert len(problems) == MAX_PROBLEMS
    assert records[0] == MAX_PROBLEMS  # stops reading at the limit, not at line 200,000


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_hostile_cells(tmp_path: Path) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    lone_surrogate = [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "A"}]
    rows = [
        "messages",
        '"' + json.dumps(CHAT["messages"]).replace('"', '""') + '"',
        '"' + deep + '"',
        '"' + json.dumps(lone_surrogate).replace('"', '""') + '"',
    ]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    problems = refused(path)
    assert [problem.line for problem in problems] == [3, 4]
    assert "nested too deeply" in problems[0].message
    assert "lone surrogate" in problems[1].message


def test_csv_nul_and_huge_integer(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"prompt,completion,metadata\nhi,ok,\nbad\x00,ok,\nhi,ok," + b"9" * 5_000 + b"\n"
    )
    problems = refused(path)
    assert [problem.line for problem in problems] == [3, 4]
    assert "NUL" in problems[0].message
    assert "not valid JSON" in problems[1].message


def test_csv_invalid_utf8_inside_a_quoted_cell(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,completion\nhi,ok\nhi,"line one\nline \xff two"\n')
    (problem,) = refused(path)
    assert problem.line == 4
    assert "invalid UTF-8" in problem.message


def test_csv_with_carriage_return_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,completion\rQ1,A1\rQ2,\r")
    (problem,) = refused(path)
    assert problem.line == 3


# --- Parquet -------------------------------------------------------------------------------------


def test_parquet_out_of_range_dates_and_timestamps(tmp_path: Path) -> None:
    table = pa.table(
        {
            "text": ["a", "b", "c", "d"],
            "metadata": pa.array(
                [
                    {"when": 0, "day": 0},
                    {"when": 2**62, "day": 0},
                    {"when": 0, "day": 2**31 - 1},
                    {"when": 0, "day": 0},
                ],
                type=pa.struct([("when", pa.timestamp("ms")), ("day", pa.date32())]),
            ),
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    problems = refused(path)
    assert [(problem.line, problem.unit) for problem in problems] == [(2, "row"), (3, "row")]
    assert all("cannot be read" in problem.message for problem in problems)


def test_parquet_with_millions_of_tiny_rows_is_refused_from_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = 3_000_000
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int8)), ["hi"])
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": column}), path)
    assert path.stat().st_size < 200_000
    decoded = counting(monkeypatch, dataset_files, "_batch_records")
    (problem,) = refused(path)
    assert decoded == [0]  # refused from the metadata: not one batch decoded
    assert f"{dataset_files.MAX_DATASET_ROWS:,} rows" in problem.message


def test_parquet_over_the_stated_size_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["x" * 10_000] * 200}), path, compression="zstd")
    monkeypatch.setattr(dataset_files, "MAX_DATASET_BYTES", 1_000_000)

    def never(*args: object) -> None:
        raise AssertionError("rows were decoded")

    monkeypatch.setattr(dataset_files, "_batch_records", never)
    (problem,) = refused(path)
    assert "MiB of data; the limit is" in problem.message


def test_parquet_dictionary_bomb_is_stopped_by_its_decoded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One 100 kB string repeated: tiny on disk and in metadata, 200 MB once decoded.
    column = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(2_000, dtype=np.int8)), ["y" * 100_000]
    )
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": column}), path)
    monkeypatch.setattr(dataset_files, "MAX_DATASET_BYTES", 50 * 2**20)
    (problem,) = refused(path)
    assert "limit" in problem.message


def test_jsonl_and_csv_over_the_size_limit_are_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_files, "MAX_DATASET_BYTES", 1_000)
    big = jsonl(tmp_path / "d.jsonl", [good_line()] * 100)
    (problem,) = refused(big)
    assert "limit" in problem.message and problem.line is None
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text\n" + "word\n" * 1_000, encoding="utf-8")
    assert "limit" in refused(csv_path)[0].message


def test_jsonl_over_the_row_limit_stops_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_files, "MAX_DATASET_ROWS", 10)
    assert read_dataset(jsonl(tmp_path / "ten.jsonl", [good_line()] * 10)).row_count == 10
    (problem,) = refused(jsonl(tmp_path / "eleven.jsonl", [good_line()] * 11))
    assert "more than 10 rows" in problem.message


# --- the fuzzer -----------------------------------------------------------------------------------

PALETTE = [
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\\ud800",
    b"\\u0000",
    b"[" * 3_000,
    b"9" * 5_000,
    b'"',
    b",",
    b"\n",
    b"\r",
    b"{",
    b"}",
    b"NaN",
    b"-Infinity",
    b'"weight": 2',
    b'"role": []',
    b"\xef\xbb\xbf",
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(buffer) + 1)
        action = rng.random()
        if action < 0.4:
            buffer[position:position] = rng.choice(PALETTE)
        elif action < 0.7 and buffer:
            index = min(position, len(buffer) - 1)
            buffer[index] = rng.randrange(256)
        elif action < 0.85:
            del buffer[position : position + rng.randint(1, 40)]
        else:
            start = rng.randrange(len(buffer) + 1)
            buffer[position:position] = buffer[start : start + rng.randint(1, 80)]
    return bytes(buffer)


def valid_files(tmp_path: Path) -> dict[str, bytes]:
    conversations = [
        {"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": "A"}]}
        for i in range(4)
    ]
    parquet = tmp_path / "seed.parquet"
    pq.write_table(pa.Table.from_pylist([CHAT, CHAT, CHAT]), parquet)
    with_metadata = {**CHAT, "id": 3, "metadata": {"k": [1, 2.5]}}
    return {
        ".jsonl": "".join(json.dumps(row) + "\n" for row in [CHAT, with_metadata]).encode(),
        ".csv": b'prompt,completion,metadata\nhi,there,\n"multi\nline",ok,"{""a"": 1}"\n',
        ".parquet": parquet.read_bytes(),
        ".sharegpt.jsonl": "".join(json.dumps(row) + "\n" for row in conversations).encode(),
    }


@pytest.mark.parametrize("kind", [".jsonl", ".sharegpt.jsonl", ".csv", ".parquet"])
def test_fuzzed_files_are_accepted_or_refused_with_a_dataset_error(
    tmp_path: Path, kind: str
) -> None:
    seed = valid_files(tmp_path)[kind]
    read_dataset(_written(tmp_path / f"seed{kind}", seed))  # the seed itself is valid
    rng = random.Random(1303)
    outcomes = {"accepted": 0, "refused": 0}
    cases = 150 if kind == ".parquet" else 300
    for case in range(cases):
        path = _written(tmp_path / f"case{case}{kind}", mutate(seed, rng))
        try:
            read_dataset(path)
            outcomes["accepted"] += 1
        except DatasetError as error:
            assert error.problems and all(p.file == str(path) for p in error.problems)
            assert all(p.line is not None or p.message for p in error.problems)
            json.dumps(error.as_dict())  # what the API answers must encode
            str(error).encode("utf-8")
            outcomes["refused"] += 1
        path.unlink()
    assert outcomes["refused"] > 0


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
