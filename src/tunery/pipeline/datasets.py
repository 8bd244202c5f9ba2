"""Reading and validating dataset files; no torch, so uploads are checked the same way.

Accepted rows (JSONL, CSV with the same columns, or Parquet):

- ``messages``: OpenAI chat format, roles system/user/assistant, optional ``weight`` 0/1 on
  assistant messages (0: not trained on), content as a string or a list of text parts;
- ``prompt`` + ``completion``;
- ``instruction`` + ``output`` with optional ``input`` (Alpaca);
- ``conversations`` with ``from`` (system/human/user/gpt/assistant) and ``value`` (ShareGPT);
- ``text``: plain text, trained on every token.

A file holds one format. ``id`` and ``metadata`` may accompany any row; any other field is
an error, since a misspelt column would otherwise be dropped in silence. Problems are
reported with the file and the 1-based line (the row for Parquet), up to ``MAX_PROBLEMS``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.errors import DatasetError, DatasetProblem

MAX_PROBLEMS = 20
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
EXTRA_FIELDS = frozenset({"id", "metadata"})
FORMATS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # name: (required fields, optional fields)
    "messages": (frozenset({"messages"}), frozenset()),
    "conversations": (frozenset({"conversations"}), frozenset()),
    "prompt_completion": (frozenset({"prompt", "completion"}), frozenset()),
    "alpaca": (frozenset({"instruction", "output"}), frozenset({"input"})),
    "text": (frozenset({"text"}), frozenset()),
}
FORMAT_HELP = (
    "expected one of: messages | conversations | prompt + completion | "
    "instruction + output (+ input) | text"
)
SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    trained: bool = True


@dataclass(frozen=True)
class Row:
    """One validated example: a conversation, or plain text when ``text`` is set."""

    file: str
    line: int
    messages: tuple[Message, ...] = ()
    text: str | None = None


@dataclass
class DatasetSummary:
    """What validation found in one file."""

    file: str
    format: str
    rows: list[Row] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.rows)


class _RowFailure(Exception):
    """A problem with the current row; the reader turns it into a DatasetProblem."""


def read_dataset(path: Path, *, display_name: str | None = None) -> DatasetSummary:
    """Read and validate a whole file; raises DatasetError listing its problems."""
    name = display_name or str(path)
    suffix = path.suffix.lower()
    unit = "row" if suffix == ".parquet" else "line"
    if suffix not in SUFFIXES:
        raise DatasetError.single(
            name, f"unsupported file type {suffix or '(none)'!r}; use .jsonl, .csv or .parquet"
        )
    try:
        raw_rows = list(_raw_rows(path, name, suffix))
    except OSError as error:
        raise DatasetError.single(name, f"cannot read the file: {error.strerror}") from None
    if not raw_rows:
        raise DatasetError.single(name, "the file is empty", hint="add at least one example")

    problems: list[DatasetProblem] = []
    detected: str | None = None
    rows: list[Row] = []
    for line, raw in raw_rows:
        if len(problems) >= MAX_PROBLEMS:
            break
        try:
            if isinstance(raw, _RowFailure):
                raise raw
            row_format = _detect_format(raw)
            if detected is None:
                detected = row_format
            elif row_format != detected:
                raise _RowFailure(
                    f"this row is in {row_format} format but the file's first row is in "
                    f"{detected} format; keep one format per file"
                )
            rows.append(_to_row(_without_nulls(raw), row_format, name, line))
        except _RowFailure as failure:
            problems.append(DatasetProblem(name, str(failure), line, unit))
    if problems:
        raise DatasetError(problems)
    assert detected is not None
    return DatasetSummary(file=name, format=detected, rows=rows)


def _raw_rows(path: Path, name: str, suffix: str) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line or row, raw row or the _RowFailure that row produced)."""
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".csv":
        yield from _csv_rows(path, name)
    else:
        yield from _parquet_rows(path, name)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            if line_number == 1:
                raw_line = raw_line.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield (
                    line_number,
                    _RowFailure(
                        f"invalid UTF-8 (byte {error.start + 1} of the line); "
                        "save the file as UTF-8"
                    ),
                )
                continue
            if not text.strip():
                continue
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as error:
                yield line_number, _RowFailure(f"invalid JSON: {error.msg} at column {error.colno}")


def _decode_whole(path: Path, name: str) -> str:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetError.single(
            name, "invalid UTF-8; save the file as UTF-8", line=line
        ) from None


def _csv_rows(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    text = _decode_whole(path, name)
    if not text.strip():
        return
    lines = iter(enumerate(text.splitlines(keepends=True), start=1))
    consumed = 0

    def feed() -> Iterator[str]:
        # Counts physical lines, so a row that spans lines (quoted newlines) or follows
        # blank lines is reported at the line where it starts.
        nonlocal consumed
        for number, line in lines:
            consumed = number
            yield line

    reader = csv.reader(feed())
    try:
        columns = next(reader)
    except csv.Error as error:
        raise DatasetError.single(name, f"invalid CSV header: {error}", line=1) from None
    if len(set(columns)) != len(columns):
        raise DatasetError.single(name, "the header repeats a column name", line=1)
    while True:
        start = consumed + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield start, _RowFailure(f"invalid CSV: {error}")
            return
        if not cells:
            continue
        if len(cells) != len(columns):
            more_or_fewer = "more" if len(cells) > len(columns) else "fewer"
            yield (
                start,
                _RowFailure(
                    f"the row has {more_or_fewer} cells than the header has columns "
                    f"({len(cells)} cells, {len(columns)} columns)"
                ),
            )
            continue
        yield (
            start,
            {
                column: _csv_cell(column, value)
                for column, value in zip(columns, cells, strict=True)
                # An empty cell in an optional column means the field is absent.
                if value != "" or column not in FORMATS["alpaca"][1]
            },
        )


def _csv_cell(column: str, value: str | None) -> Any:
    # Structured columns hold JSON in CSV; anything else is text as written.
    if column in ("messages", "conversations", "metadata") and value:
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            return _RowFailure(f"column {column!r} is not valid JSON: {error.msg}")
    return value


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetError.single(name, f"not a readable Parquet file: {error}") from None
    for index, record in enumerate(table.to_pylist(), start=1):
        yield index, {key: value for key, value in record.items() if value is not None}


def _detect_format(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise _RowFailure(f"a row must be a JSON object, not {type(raw).__name__}")
    failures = [value for value in raw.values() if isinstance(value, _RowFailure)]
    if failures:
        raise failures[0]
    keys = {key for key, value in raw.items() if value is not None} - EXTRA_FIELDS
    for name, (required, optional) in FORMATS.items():
        if required <= keys:
            unknown = keys - required - optional
            if unknown:
                raise _RowFailure(f"unknown field(s) {_names(unknown)} in a {name} row")
            return name
    partial = [
        f"{_names(required - keys)} missing (needed with {_names(required & keys)})"
        for required, _ in FORMATS.values()
        if required & keys and required - keys
    ]
    if partial:
        raise _RowFailure("; ".join(partial))
    if not keys:
        raise _RowFailure(f"the row has no fields; {FORMAT_HELP}")
    raise _RowFailure(f"unknown field(s) {_names(keys)}; {FORMAT_HELP}")


def _without_nulls(raw: dict[str, Any]) -> dict[str, Any]:
    """A null field counts as absent, as Parquet and pandas write missing values."""
    return {key: value for key, value in raw.items() if value is not None}


def _names(keys: set[str] | frozenset[str]) -> str:
    return ", ".join(repr(key) for key in sorted(keys))


def _text(value: Any, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _RowFailure(f"{where} must be a string, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _RowFailure(f"{where} is empty")
    return value


def _to_row(raw: dict[str, Any], row_format: str, file: str, line: int) -> Row:
    if row_format == "text":
        return Row(file, line, text=_text(raw["text"], "'text'"))
    if row_format == "prompt_completion":
        messages = (
            Message("user", _text(raw["prompt"], "'prompt'")),
            Message("assistant", _text(raw["completion"], "'completion'")),
        )
    elif row_format == "alpaca":
        instruction = _text(raw["instruction"], "'instruction'")
        extra = _text(raw.get("input", ""), "'input'", allow_empty=True)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = (Message("user", prompt), Message("assistant", _text(raw["output"], "'output'")))
    elif row_format == "messages":
        messages = _chat_messages(
            raw["messages"], "messages", "role", "content", dict(zip(ROLES, ROLES, strict=True))
        )
    else:
        messages = _chat_messages(
            raw["conversations"], "conversations", "from", "value", SHAREGPT_ROLES
        )
    return Row(file, line, messages=messages)


def _chat_messages(
    value: Any, column: str, role_key: str, content_key: str, roles: dict[str, str]
) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise _RowFailure(f"'{column}' must be a list of messages, not {type(value).__name__}")
    if not value:
        raise _RowFailure(f"'{column}' is empty; a conversation needs at least one exchange")
    messages = []
    allowed = {role_key, content_key, "name", "weight"}
    for index, item in enumerate(value):
        where = f"{column}[{index}]"
        if not isinstance(item, dict):
            raise _RowFailure(f"{where} must be an object with {role_key!r} and {content_key!r}")
        item = _without_nulls(item)
        unknown = set(item) - allowed
        if unknown:
            raise _RowFailure(f"{where} has unknown field(s) {_names(unknown)}")
        for key in (role_key, content_key):
            if key not in item:
                raise _RowFailure(f"{where} has no {key!r}")
        role = roles.get(item[role_key]) if isinstance(item[role_key], str) else None
        if role is None:
            raise _RowFailure(
                f"{where}.{role_key} {item[role_key]!r} is not one of {', '.join(roles)}"
            )
        content = _content_text(item[content_key], f"{where}.{content_key}")
        if role != "system" and not content.strip():
            raise _RowFailure(f"{where}.{content_key} is empty")
        weight = item.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise _RowFailure(f"{where}.weight must be 0 or 1")
        if weight == 0 and role != "assistant":
            raise _RowFailure(f"{where}.weight is only meaningful on assistant messages")
        messages.append(Message(role, content, trained=weight == 1))
    if not any(message.role == "assistant" for message in messages):
        raise _RowFailure(f"'{column}' has no assistant turn to learn from")
    return tuple(messages)


def _content_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _RowFailure(f"{where}[{index}] is not a text part; only text is supported")
            parts.append(_text(part.get("text"), f"{where}[{index}].text", allow_empty=True))
        return "".join(parts)
    raise _RowFailure(f"{where} must be a string or a list of text parts")
