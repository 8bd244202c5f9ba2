"""What a run's stored datasets hold, as far as the control plane can tell without a
tokenizer: rows, chat rows and each row's estimated tokens.

Each row counts ``ceil(characters / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE`` per message
(the chat template's markers). A preference pair is a chat row of two sequences, its prompt
with either answer: its tokens are both sequences', and its longest sequence the longer
one. The estimate turns these into steps and seconds, the memory check into the longest
micro-batch a run can meet.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from tunery.db import Dataset
from tunery.pipeline.datasets import Message, PreferencePair, Row, read_dataset

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class DataShape:
    """Rows of a run's datasets and their estimated tokens."""

    rows: int
    chat_rows: int
    row_tokens: tuple[int, ...]
    longest_sequence_tokens: int = 0
    """The longest sequence one row puts in a micro-batch (a row, or one side of a pair)."""


def stored_shape(datasets_dir: Path, datasets: list[Dataset]) -> DataShape:
    """The combined shape of stored datasets (each file read once per digest)."""
    return combined_shape(
        [
            _stored_file_shape(str(datasets_dir / dataset.filename), dataset.sha256)
            for dataset in datasets
        ]
    )


def combined_shape(shapes: list[DataShape]) -> DataShape:
    return DataShape(
        rows=sum(shape.rows for shape in shapes),
        chat_rows=sum(shape.chat_rows for shape in shapes),
        row_tokens=tuple(tokens for shape in shapes for tokens in shape.row_tokens),
        longest_sequence_tokens=max((shape.longest_sequence_tokens for shape in shapes), default=0),
    )


def file_shape(path: Path) -> DataShape:
    """One dataset file's rows (or pairs) and their estimated tokens."""
    summary = read_dataset(path)
    if summary.pairs:
        sides = [pair_sides(pair) for pair in summary.pairs]
        return DataShape(
            rows=len(sides),
            chat_rows=len(sides),
            row_tokens=tuple(sum(both) for both in sides),
            longest_sequence_tokens=max(max(both) for both in sides),
        )
    tokens = tuple(row_tokens(row) for row in summary.rows)
    return DataShape(
        rows=len(tokens),
        chat_rows=sum(1 for row in summary.rows if row.messages),
        row_tokens=tokens,
        longest_sequence_tokens=max(tokens, default=0),
    )


@functools.lru_cache(maxsize=64)
def _stored_file_shape(path: str, sha256: str) -> DataShape:
    """A stored dataset's shape, cached by its digest (a stored file never changes)."""
    return file_shape(Path(path))


def row_tokens(row: Row) -> int:
    """A row's estimated tokens after templating."""
    if row.text is not None:
        return math.ceil(len(row.text) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
    return _messages_tokens(row.messages)


def pair_sides(pair: PreferencePair) -> tuple[int, int]:
    """The estimated tokens of a pair's two sequences: the prompt with either answer."""
    return (
        _messages_tokens((*pair.prompt, *pair.chosen)),
        _messages_tokens((*pair.prompt, *pair.rejected)),
    )


def _messages_tokens(messages: tuple[Message, ...]) -> int:
    characters = sum(len(message.content) for message in messages)
    return math.ceil(characters / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)
