"""Datasets become training examples: read, shuffled, sample rows held out, tokenised.

Rows are concatenated across files, shuffled with the run's seed and encoded with
``chat.Encoder``. Rows longer than the limit are truncated and counted; rows that lose every
trained token to truncation are dropped and counted. Every problem is raised as a
DatasetError before the first gradient step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.errors import ConfigError, DatasetError, DatasetProblem, FieldProblem
from tunery.pipeline.chat import IGNORE, Encoder, Example, SamplePrompt, TemplateFailure
from tunery.pipeline.datasets import MAX_PROBLEMS, Message, Row, read_dataset

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery.pipeline.load import ChatFormat

HOLDOUT_MIN_ROWS = 30
SAMPLE_COUNT = 3


@dataclass
class PreparedData:
    examples: list[Example]
    samples: list[SamplePrompt]
    files: list[dict[str, object]] = field(default_factory=list)
    max_length: int = 0
    truncated_rows: int = 0
    dropped_rows: int = 0
    held_out_rows: int = 0

    @property
    def total_tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)

    @property
    def trained_tokens(self) -> int:
        return sum(example.trained_tokens for example in self.examples)

    def summary(self) -> dict[str, object]:
        return {
            "files": self.files,
            "examples": len(self.examples),
            "total_tokens": self.total_tokens,
            "trained_tokens": self.trained_tokens,
            "max_length": self.max_length,
            "truncated_rows": self.truncated_rows,
            "dropped_rows": self.dropped_rows,
            "held_out_rows": self.held_out_rows,
        }


def prepare_data(
    paths: list[Path],
    tokenizer: PreTrainedTokenizerBase,
    chat_format: ChatFormat,
    *,
    max_length: int,
    seed: int,
    train_on_inputs: bool = False,
    custom_prompts: list[str] | None = None,
) -> PreparedData:
    """Validate, shuffle, hold out sample rows, tokenise; raises DatasetError before training.

    A custom sample prompt longer than ``max_length`` tokens raises ConfigError.
    """
    problems: list[DatasetProblem] = []
    summaries = []
    for path in paths:
        try:
            summaries.append(read_dataset(path))
        except DatasetError as error:
            problems.extend(error.problems)
    if problems:
        raise DatasetError(problems)

    rows = [row for summary in summaries for row in summary.rows]
    random.Random(seed).shuffle(rows)
    samples, rows, held_out = _pick_samples(rows, custom_prompts or [])
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=train_on_inputs)
    if custom_prompts:
        _check_prompt_lengths(encoder, samples, max_length)
    prepared = PreparedData(
        examples=[], samples=samples, max_length=max_length, held_out_rows=held_out
    )
    kept_per_file: dict[str, int] = {summary.file: 0 for summary in summaries}
    for row in rows:
        try:
            example = encoder.encode(row)
        except TemplateFailure as failure:
            problems.append(DatasetProblem(row.file, str(failure), row.line))
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        if len(example.input_ids) > max_length:
            prepared.truncated_rows += 1
            example = Example(
                example.input_ids[:max_length], [*example.targets[: max_length - 1], IGNORE]
            )
        if example.trained_tokens == 0:
            prepared.dropped_rows += 1
            continue
        kept_per_file[row.file] += 1
        prepared.examples.append(example)
    if problems:
        raise DatasetError(problems)
    for summary in summaries:
        if kept_per_file[summary.file] == 0 and summary.rows:
            raise DatasetError.single(
                summary.file,
                f"every row loses all of its trained tokens when cut to {max_length} tokens",
                hint="raise training.max_seq_length or shorten the rows",
            )
        prepared.files.append(
            {
                "file": summary.file,
                "format": summary.format,
                "rows": summary.row_count,
                "used": kept_per_file[summary.file],
            }
        )
    if not prepared.examples:
        raise DatasetError.single(
            ", ".join(summary.file for summary in summaries),
            "no rows are left to train on after holding out the sample rows",
            hint="add more rows, or give explicit samples.prompts",
        )
    return prepared


def _check_prompt_lengths(encoder: Encoder, prompts: list[SamplePrompt], max_length: int) -> None:
    """Refuse, before training, a sample prompt the trained model could not read whole."""
    problems = []
    for index, prompt in enumerate(prompts):
        field_name = f"samples.prompts.{index}"
        try:
            length = len(encoder.prompt_ids(prompt.messages))
        except TemplateFailure as failure:
            problems.append(FieldProblem(field_name, str(failure)))
            continue
        if length > max_length:
            problems.append(
                FieldProblem(
                    field_name,
                    f"is {length} tokens with the chat template; the limit is {max_length}",
                )
            )
    if problems:
        raise ConfigError(problems, hint="shorten the prompt or raise training.max_seq_length")


def _pick_samples(
    rows: list[Row], custom_prompts: list[str]
) -> tuple[list[SamplePrompt], list[Row], int]:
    """Sample prompts and the rows left to train on.

    With enough rows, the last three chat rows of the shuffled data are held out, so the
    samples show answers to questions the model never trained on. Small datasets keep every
    row for training and reuse three of them as prompts.
    """
    if custom_prompts:
        prompts = [SamplePrompt((Message("user", prompt),), None) for prompt in custom_prompts]
        return prompts, rows, 0
    chat_rows = [row for row in rows if row.messages]
    picked = chat_rows[-SAMPLE_COUNT:]
    samples = []
    for row in picked:
        last_reply = max(i for i, message in enumerate(row.messages) if message.role == "assistant")
        samples.append(SamplePrompt(row.messages[:last_reply], row.messages[last_reply].content))
    if len(rows) >= HOLDOUT_MIN_ROWS:
        held = {id(row) for row in picked}
        return samples, [row for row in rows if id(row) not in held], len(picked)
    return samples, rows, 0
