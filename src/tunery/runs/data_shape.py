"""What a run's stored datasets hold, as far as the control plane can tell without a
model: rows, chat rows and each row's tokens, counted as ``runs.token_count`` counts them
(with the base model's tokenizer and template markers where the server holds the model).

A preference pair is a chat row of two sequences, its prompt with either answer: its tokens
are both sequences', and its longest sequence the longer one. The estimate turns these into
steps and seconds, the memory check into the longest micro-batch a run can meet.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunery.db import Dataset
from tunery.pipeline.datasets import read_dataset
from tunery.runs.token_count import FROM_CHARACTERS, TokenCount, TokenizerFile, model_token_count

TEXT_MARKERS = 2
"""The tokens a worker adds around a text row: at most a BOS and the EOS."""


@dataclass(frozen=True)
class DataShape:
    """Rows of a run's datasets and their estimated tokens."""

    rows: int
    chat_rows: int
    row_tokens: tuple[int, ...]
    longest_sequence_tokens: int = 0
    """The longest sequence one row puts in a micro-batch (a row, or one side of a pair)."""


def stored_shape(
    datasets_dir: Path, datasets: list[Dataset], tokenizer: TokenizerFile | None = None
) -> DataShape:
    """The combined shape of stored datasets (each file read once per digest and tokenizer),
    counted with ``tokenizer`` or, without one, from characters."""
    return combined_shape(
        [
            _stored_file_shape(str(datasets_dir / dataset.filename), dataset.sha256, tokenizer)
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


def file_shape(path: Path, count: TokenCount = FROM_CHARACTERS) -> DataShape:
    """One dataset file's rows (or pairs) and their tokens, counted by ``count``."""
    summary = read_dataset(path)
    if summary.pairs:
        both = _sequence_tokens(
            [
                [m.content for m in (*pair.prompt, *answer)]
                for pair in summary.pairs
                for answer in (pair.chosen, pair.rejected)
            ],
            count,
        )
        sides = list(zip(both[::2], both[1::2], strict=True))
        return DataShape(
            rows=len(sides),
            chat_rows=len(sides),
            row_tokens=tuple(chosen + rejected for chosen, rejected in sides),
            longest_sequence_tokens=max(max(pair) for pair in sides),
        )
    texts = [row.text for row in summary.rows if row.text is not None]
    if texts:  # a file holds one format: plain text, framed by the BOS and EOS tokens only
        tokens = tuple(found + TEXT_MARKERS for found in count.count(texts))
    else:
        conversations = [[m.content for m in row.messages] for row in summary.rows]
        tokens = tuple(_sequence_tokens(conversations, count))
    return DataShape(
        rows=len(tokens),
        chat_rows=sum(1 for row in summary.rows if row.messages),
        row_tokens=tokens,
        longest_sequence_tokens=max(tokens, default=0),
    )


@functools.lru_cache(maxsize=64)
def _stored_file_shape(path: str, sha256: str, tokenizer: TokenizerFile | None) -> DataShape:
    """A stored dataset's shape, cached by its digest (a stored file never changes) and the
    tokenizer that counted it."""
    return file_shape(Path(path), model_token_count(tokenizer) if tokenizer else FROM_CHARACTERS)


def _sequence_tokens(sequences: Sequence[list[str]], count: TokenCount) -> list[int]:
    """Each sequence's tokens: its messages' (counted in one batch) and its template's
    markers."""
    counts = iter(count.count([text for sequence in sequences for text in sequence]))
    return [
        sum(next(counts) for _ in sequence)
        + count.per_conversation
        + count.per_message * len(sequence)
        for sequence in sequences
    ]
