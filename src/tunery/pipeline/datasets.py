"""Reading and validating dataset files; no torch, so uploads are checked the same way.

Accepted rows (JSONL, CSV with the same columns, or Parquet):

- ``messages``: OpenAI chat format, roles system/user/assistant, optional ``weight`` 0/1 on
  assistant messages (0: not trained on), content as a string or a list of text parts;
- ``prompt`` + ``completion``;
- ``instruction`` + ``output`` with optional ``input`` (Alpaca);
- ``conversations`` with ``from`` (system/human/user/gpt/assistant) and ``value`` (ShareGPT);
- ``text``: plain text, trained on every token.

Preference pairs, for DPO (the dataset's kind is ``preference``; the others are ``sft``):

- ``input`` + ``preferred_output`` + ``non_preferred_output``: OpenAI's preference format,
  ``input`` holding ``messages`` (ending with the user's turn) and the outputs a list of
  assistant messages each;
- ``prompt`` + ``chosen`` + ``rejected``: strings (a user turn and two assistant answers),
  or message lists (the conversation, and the answers' assistant messages).

A pair's two answers must differ and neither may be empty.

A file holds one format. ``id`` and ``metadata`` may accompany any row; any other field is
an error, since a misspelt column would otherwise be dropped in silence. Problems are
reported with the file and the 1-based line (the row for Parquet), up to ``MAX_PROBLEMS``.
Files are streamed within the limits of ``dataset_files``; text no tokenizer can take (NUL,
lone surrogates) is refused here, at upload, rather than in training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunery.errors import MAX_PROBLEMS, DatasetError, DatasetProblem
from tunery.pipeline.dataset_files import RowFailure, raw_records

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
    "preference": (
        frozenset({"input", "preferred_output", "non_preferred_output"}),
        frozenset(),
    ),
    "prompt_chosen_rejected": (frozenset({"prompt", "chosen", "rejected"}), frozenset()),
}
PREFERENCE_FORMATS = frozenset({"preference", "prompt_chosen_rejected"})
DATASET_KINDS = ("sft", "preference")
"""What a dataset can train: chat rows (``sft``) or preference pairs (``preference``)."""
METHOD_DATASET_KIND = {"sft": "sft", "dpo": "preference"}
"""The dataset kind each ``method.type`` trains on."""
FORMAT_HELP = (
    "expected one of: messages | conversations | prompt + completion | "
    "instruction + output (+ input) | text | input + preferred_output + "
    "non_preferred_output | prompt + chosen + rejected"
)
PROMPT_INPUT_FIELDS = frozenset({"messages", "tools", "parallel_tool_calls"})
"""What OpenAI's preference ``input`` may hold."""
SUFFIXES = (".jsonl", ".csv", ".parquet")
SHOWN_CHARACTERS = 40
"""How much of a user's value an error message quotes."""

# Text a tokenizer cannot take: NUL, and lone surrogates, which JSON's \ud800 escapes let
# through json.loads but which no UTF-8 encoder (so no tokenizer) accepts.
UNTRAINABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


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


@dataclass(frozen=True)
class PreferencePair:
    """One validated preference row: the conversation so far and two answers to it, the
    better one (``chosen``) first."""

    file: str
    line: int
    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]


def dataset_kind(format_name: str) -> str:
    """``preference`` for the preference formats, ``sft`` for the others."""
    return "preference" if format_name in PREFERENCE_FORMATS else "sft"


KIND_HINT = "use preference pairs with method.type dpo, and chat rows with sft"


def kind_mismatch(kind: str, format_name: str, method: str) -> str:
    """Why a dataset of ``kind`` cannot train with ``method`` (one sentence)."""
    holds = "preference pairs" if kind == "preference" else "chat rows"
    needs = "preference pairs" if METHOD_DATASET_KIND[method] == "preference" else "chat rows"
    return f"holds {holds} ({format_name} format); method.type {method} trains on {needs}"


@dataclass
class DatasetSummary:
    """What validation found in one file: chat rows (kind ``sft``) or pairs."""

    file: str
    format: str
    rows: list[Row] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return dataset_kind(self.format)

    @property
    def row_count(self) -> int:
        return len(self.rows) + len(self.pairs)


@dataclass(frozen=True)
class DatasetCheck:
    """What validation found in one file, without its rows."""

    file: str
    format: str
    row_count: int

    @property
    def kind(self) -> str:
        return dataset_kind(self.format)


def read_dataset(path: Path, *, display_name: str | None = None) -> DatasetSummary:
    """Read and validate a whole file, keeping its rows or pairs (to train on); raises
    DatasetError listing its problems.

    Stops at the first ``MAX_PROBLEMS`` problems, and refuses a file over the limits of
    ``dataset_files`` (rows, decoded bytes). Whatever the file holds, the only error raised
    is DatasetError.
    """
    name = display_name or str(path)
    rows: list[Row] = []
    pairs: list[PreferencePair] = []
    found = _validate(path, name, rows.append, pairs.append)
    return DatasetSummary(file=name, format=found, rows=rows, pairs=pairs)


def check_dataset(path: Path, *, display_name: str | None = None) -> DatasetCheck:
    """Validate a whole file as ``read_dataset`` does, keeping nothing but the count: what
    an upload costs is one batch of rows at a time, whatever the file decodes to."""
    name = display_name or str(path)
    count = 0

    def counted(_: object) -> None:
        nonlocal count
        count += 1

    found = _validate(path, name, counted, counted)
    return DatasetCheck(file=name, format=found, row_count=count)


def _validate(
    path: Path,
    name: str,
    take_row: Callable[[Row], None],
    take_pair: Callable[[PreferencePair], None],
) -> str:
    """Hand each valid row (or preference pair) over as it is read; returns the format."""
    suffix = path.suffix.lower()
    unit = "row" if suffix == ".parquet" else "line"
    if suffix not in SUFFIXES:
        raise DatasetError.single(
            name, f"unsupported file type {suffix or '(none)'!r}; use .jsonl, .csv or .parquet"
        )
    problems: list[DatasetProblem] = []
    detected: str | None = None
    try:
        for line, raw in raw_records(path, name, suffix):
            try:
                if isinstance(raw, RowFailure):
                    raise raw
                row_format = _detect_format(raw)
                if detected is None:
                    detected = row_format
                elif row_format != detected:
                    raise RowFailure(
                        f"this row is in {row_format} format but the file's first row is in "
                        f"{detected} format; keep one format per file"
                    )
                if row_format in PREFERENCE_FORMATS:
                    take_pair(_to_pair(_without_nulls(raw), row_format, name, line))
                else:
                    take_row(_to_row(_without_nulls(raw), row_format, name, line))
            except RowFailure as failure:
                problems.append(DatasetProblem(name, str(failure), line, unit))
                if len(problems) >= MAX_PROBLEMS:
                    break
    except OSError as error:
        raise DatasetError.single(name, f"cannot read the file: {error.strerror}") from None
    if problems:
        raise DatasetError(problems)
    if detected is None:
        raise DatasetError.single(name, "the file is empty", hint="add at least one example")
    return detected


def _detect_format(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise RowFailure(f"a row must be a JSON object, not {type(raw).__name__}")
    failures = [value for value in raw.values() if isinstance(value, RowFailure)]
    if failures:
        raise failures[0]
    keys = {key for key, value in raw.items() if value is not None} - EXTRA_FIELDS
    # The format the row fills most of: prompt + chosen + rejected over prompt + completion.
    matching = [name for name, (required, _) in FORMATS.items() if required <= keys]
    if matching:
        name = max(matching, key=lambda candidate: len(FORMATS[candidate][0]))  # first of ties
        required, optional = FORMATS[name]
        unknown = keys - required - optional
        if unknown:
            raise RowFailure(f"unknown field(s) {_names(unknown)} in a {name} row")
        return name
    # The formats the row comes closest to (a missing side of a pair, not "completion").
    closest = max(len(required & keys) for required, _ in FORMATS.values())
    partial = [
        f"{_names(required - keys)} missing (needed with {_names(required & keys)})"
        for required, _ in FORMATS.values()
        if closest and len(required & keys) == closest and required - keys
    ]
    if partial:
        raise RowFailure("; ".join(partial))
    if not keys:
        raise RowFailure(f"the row has no fields; {FORMAT_HELP}")
    raise RowFailure(f"unknown field(s) {_names(keys)}; {FORMAT_HELP}")


def _without_nulls(raw: dict[str, Any]) -> dict[str, Any]:
    """A null field counts as absent, as Parquet and pandas write missing values."""
    return {key: value for key, value in raw.items() if value is not None}


def _names(keys: set[str] | frozenset[str]) -> str:
    return ", ".join(_shown(key) for key in sorted(keys))


def _shown(value: Any) -> str:
    """A user's value as an error message quotes it: strings cut short, others by type."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) > SHOWN_CHARACTERS:
        return repr(value[:SHOWN_CHARACTERS]) + "…"
    return repr(value)


def _text(value: Any, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RowFailure(f"{where} must be a string, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowFailure(f"{where} is empty")
    return _trainable(value, where)


def _trainable(value: str, where: str) -> str:
    found = UNTRAINABLE_CHARACTER.search(value)
    if found is None:
        return value
    what = "a NUL character" if found.group() == "\x00" else "a lone surrogate (not valid UTF-8)"
    raise RowFailure(f"{where} holds {what} at character {found.start() + 1}")


def _to_row(raw: dict[str, Any], row_format: str, file: str, line: int) -> Row:
    if row_format == "text":
        return Row(file, line, text=_text(raw["text"], "'text'"))
    messages: tuple[Message, ...]
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
    messages = _message_list(value, column, role_key, content_key, roles, weighted=True)
    if not any(message.role == "assistant" for message in messages):
        raise RowFailure(f"'{column}' has no assistant turn to learn from")
    return messages


def _message_list(
    value: Any,
    column: str,
    role_key: str,
    content_key: str,
    roles: dict[str, str],
    *,
    weighted: bool,
) -> tuple[Message, ...]:
    """Validated messages of ``column``; ``weighted``: messages may carry ``weight``."""
    if not isinstance(value, list):
        raise RowFailure(f"'{column}' must be a list of messages, not {type(value).__name__}")
    if not value:
        raise RowFailure(f"'{column}' is empty; a conversation needs at least one exchange")
    messages = []
    allowed = {role_key, content_key, "name", *(("weight",) if weighted else ())}
    for index, item in enumerate(value):
        where = f"{column}[{index}]"
        if not isinstance(item, dict):
            raise RowFailure(f"{where} must be an object with {role_key!r} and {content_key!r}")
        item = _without_nulls(item)
        unknown = set(item) - allowed
        if unknown:
            raise RowFailure(f"{where} has unknown field(s) {_names(unknown)}")
        for key in (role_key, content_key):
            if key not in item:
                raise RowFailure(f"{where} has no {key!r}")
        role = roles.get(item[role_key]) if isinstance(item[role_key], str) else None
        if role is None:
            raise RowFailure(
                f"{where}.{role_key} {_shown(item[role_key])} is not one of {', '.join(roles)}"
            )
        content = _content_text(item[content_key], f"{where}.{content_key}")
        if role != "system" and not content.strip():
            raise RowFailure(f"{where}.{content_key} is empty")
        weight = item.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise RowFailure(f"{where}.weight must be 0 or 1")
        if weight == 0 and role != "assistant":
            raise RowFailure(f"{where}.weight is only meaningful on assistant messages")
        messages.append(Message(role, content, trained=weight == 1))
    return tuple(messages)


CHAT_ROLES = dict(zip(ROLES, ROLES, strict=True))


def _to_pair(raw: dict[str, Any], row_format: str, file: str, line: int) -> PreferencePair:
    if row_format == "preference":
        sides = ("preferred_output", "non_preferred_output")
        prompt = _preference_input(raw["input"])
    else:
        sides = ("chosen", "rejected")
        prompt = (
            (Message("user", _text(raw["prompt"], "'prompt'")),)
            if isinstance(raw["prompt"], str)
            else _message_list(
                raw["prompt"], "prompt", "role", "content", CHAT_ROLES, weighted=False
            )
        )
        if prompt[-1].role != "user":
            raise RowFailure("'prompt' must end with a user message, which the answers reply to")
    # The conversation before the answers is context: never scored, whoever wrote it.
    prompt = tuple(replace(message, trained=False) for message in prompt)
    chosen, rejected = (_answer(raw[side], side) for side in sides)
    if [m.content for m in chosen] == [m.content for m in rejected]:
        raise RowFailure(
            f"'{sides[0]}' and '{sides[1]}' are identical; a pair needs two different answers"
        )
    return PreferencePair(file, line, prompt, chosen, rejected)


def _preference_input(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, dict):
        raise RowFailure(f"'input' must be an object with 'messages', not {type(value).__name__}")
    value = _without_nulls(value)
    unknown = set(value) - PROMPT_INPUT_FIELDS
    if unknown:
        raise RowFailure(f"'input' has unknown field(s) {_names(unknown)}")
    if value.get("tools"):
        raise RowFailure(
            "'input.tools' is not supported: tunery trains on text answers, not tool calls"
        )
    if "messages" not in value:
        raise RowFailure("'input' has no 'messages'")
    messages = _message_list(
        value["messages"], "input.messages", "role", "content", CHAT_ROLES, weighted=False
    )
    if messages[-1].role != "user":
        raise RowFailure(
            "'input.messages' must end with a user message, which the answers reply to"
        )
    return messages


def _answer(value: Any, column: str) -> tuple[Message, ...]:
    """One side of a pair: a string, or a list of assistant messages, none empty."""
    if value == []:
        raise RowFailure(f"'{column}' is empty; give the answer as an assistant message")
    if isinstance(value, str):
        return (Message("assistant", _text(value, f"'{column}'")),)
    messages = _message_list(value, column, "role", "content", CHAT_ROLES, weighted=False)
    for index, message in enumerate(messages):
        if message.role != "assistant":
            raise RowFailure(
                f"{column}[{index}].role is {message.role!r}; an answer holds assistant "
                "messages only (the conversation before it goes in the prompt)"
            )
    return messages


def _content_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return _trainable(value, where)
    if isinstance(value, list):
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RowFailure(f"{where}[{index}] is not a text part; only text is supported")
            parts.append(_text(part.get("text"), f"{where}[{index}].text", allow_empty=True))
        return "".join(parts)
    raise RowFailure(f"{where} must be a string or a list of text parts")
