"""Datasets become training examples: read, shuffled, rows held out, tokenised.

Rows are concatenated across files, shuffled with the run's seed and encoded with
``chat.Encoder``. Sample prompts and the validation split are held out as
``tunery.pipeline.holdout`` counts them; separate validation files are read and encoded the
same way. Rows longer than the limit are truncated and counted; rows that lose every
trained token to truncation are dropped and counted. Every problem is raised as a
DatasetError (or a ConfigError naming the recipe field) before the first gradient step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.errors import ConfigError, DatasetError, DatasetProblem, FieldProblem
from tunery.pipeline.chat import (
    IGNORE,
    Encoder,
    Example,
    PairExample,
    SamplePrompt,
    TemplateFailure,
)
from tunery.pipeline.config import AUTO_VALIDATION_RULE, ValidationSettings
from tunery.pipeline.datasets import (
    KIND_HINT,
    MAX_PROBLEMS,
    METHOD_DATASET_KIND,
    DatasetSummary,
    Message,
    PreferencePair,
    Row,
    kind_mismatch,
    read_dataset,
)
from tunery.pipeline.holdout import SAMPLE_COUNT, sample_rows, validation_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery.pipeline.load import ChatFormat


@dataclass
class PreparedData:
    """What a run trains and evaluates on: chat examples (``kind`` sft) or pairs."""

    examples: list[Example] | list[PairExample]
    samples: list[SamplePrompt]
    files: list[dict[str, object]] = field(default_factory=list)
    max_length: int = 0
    truncated_rows: int = 0
    dropped_rows: int = 0
    held_out_rows: int = 0
    validation: list[Example] | list[PairExample] = field(default_factory=list)
    """Examples the run is evaluated on; never trained on."""
    validation_source: str = "none"
    """Where they came from: ``split``, ``datasets`` or ``none``."""
    kind: str = "sft"
    """The datasets' kind (``datasets.DATASET_KINDS``)."""

    @property
    def total_tokens(self) -> int:
        return sum(example.tokens for example in self.examples)

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
            "validation_examples": len(self.validation),
            "validation_source": self.validation_source,
            "kind": self.kind,
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
    validation: ValidationSettings | None = None,
    validation_paths: list[Path] | None = None,
    require_validation: bool = False,
) -> PreparedData:
    """Validate, shuffle, hold out sample and validation rows, tokenise.

    Raises DatasetError before training. ``validation`` None holds out no validation rows;
    ``validation_paths`` are separate validation files (they win over the split). A custom
    sample prompt longer than ``max_length`` tokens, validation data with no trainable row,
    or none at all when ``require_validation`` (early stopping) raise ConfigError.
    """
    summaries = read_datasets(paths, method="sft", field="datasets")
    rows = [row for summary in summaries for row in summary.rows]
    random.Random(seed).shuffle(rows)
    samples, rows, held_out = _pick_samples(rows, custom_prompts or [])
    split_rows: list[Row] = []
    settings = validation or ValidationSettings(split=0)
    if not validation_paths:
        held = validation_rows(len(rows), settings)
        rows, split_rows = rows[: len(rows) - held], rows[len(rows) - held :]
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=train_on_inputs)
    if custom_prompts:
        check_prompt_lengths(encoder, samples, max_length)
    examples: list[Example] = []
    prepared = PreparedData(
        examples=examples, samples=samples, max_length=max_length, held_out_rows=held_out
    )
    kept_per_file = _encode_rows(encoder, rows, max_length, examples, prepared)
    training_files = {row.file for row in rows}
    for summary in summaries:
        if summary.file in training_files and kept_per_file.get(summary.file, 0) == 0:
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
                "used": kept_per_file.get(summary.file, 0),
            }
        )
    if not prepared.examples:
        raise DatasetError.single(
            ", ".join(summary.file for summary in summaries),
            "no rows are left to train on after holding out the sample and validation rows",
            hint="add more rows, give explicit samples.prompts, or lower validation.split",
        )
    if validation_paths:
        split_rows = [
            row
            for summary in read_datasets(
                validation_paths, method="sft", field="validation.datasets"
            )
            for row in summary.rows
        ]
        prepared.validation_source = "datasets"
    elif split_rows:
        prepared.validation_source = "split"
    held_out_examples: list[Example] = []
    prepared.validation = held_out_examples
    _encode_rows(encoder, split_rows, max_length, held_out_examples, None)
    check_validation(prepared, split_rows, require_validation=require_validation)
    return prepared


def read_datasets(paths: list[Path], *, method: str, field: str) -> list[DatasetSummary]:
    """Every file read and validated; every problem of every file raised at once.

    A file of another kind than ``method`` trains on is a ConfigError naming its recipe
    entry (``field``.index).
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
    wrong = [
        FieldProblem(f"{field}.{index}", kind_mismatch(summary.kind, summary.format, method))
        for index, summary in enumerate(summaries)
        if summary.kind != METHOD_DATASET_KIND[method]
    ]
    if wrong:
        raise ConfigError(wrong, hint=KIND_HINT)
    return summaries


def _encode_rows(
    encoder: Encoder,
    rows: list[Row],
    max_length: int,
    into: list[Example],
    counts: PreparedData | None,
) -> dict[str, int]:
    """Encode ``rows`` into ``into``, truncated to ``max_length``; rows kept per file.

    Truncated and dropped rows are counted on ``counts`` when given (training rows only).
    """
    problems: list[DatasetProblem] = []
    kept_per_file: dict[str, int] = {}
    for row in rows:
        try:
            example = encoder.encode(row)
        except TemplateFailure as failure:
            problems.append(DatasetProblem(row.file, str(failure), row.line))
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        if len(example.input_ids) > max_length:
            if counts is not None:
                counts.truncated_rows += 1
            example = cut_to(example, max_length)
        if example.trained_tokens == 0:
            if counts is not None:
                counts.dropped_rows += 1
            continue
        kept_per_file[row.file] = kept_per_file.get(row.file, 0) + 1
        into.append(example)
    if problems:
        raise DatasetError(problems)
    return kept_per_file


def cut_to(example: Example, max_length: int) -> Example:
    """``example`` cut to its first ``max_length`` tokens; the last one predicts nothing."""
    if len(example.input_ids) <= max_length:
        return example
    return Example(example.input_ids[:max_length], [*example.targets[: max_length - 1], IGNORE])


def check_validation(
    prepared: PreparedData,
    validation_rows_read: list[Row] | list[PreferencePair],
    *,
    require_validation: bool,
) -> None:
    """Validation data that was asked for must have a trainable row; early stopping needs it."""
    field_name = (
        "validation.datasets" if prepared.validation_source == "datasets" else ("validation.split")
    )
    if validation_rows_read and not prepared.validation:
        raise ConfigError.single(
            field_name,
            f"no validation row has a trained token within {prepared.max_length} tokens",
            hint="use rows with an assistant answer, or raise training.max_seq_length",
        )
    if require_validation and not prepared.validation:
        raise ConfigError.single(
            "early_stopping.patience",
            "needs validation data, and this data holds out none (the default split holds out "
            f"{AUTO_VALIDATION_RULE})",
            hint="set validation.split above 0, list validation datasets, or set patience to 0",
        )


def check_prompt_lengths(encoder: Encoder, prompts: list[SamplePrompt], max_length: int) -> None:
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
    held_count = sample_rows(len(rows), len(chat_rows), custom_prompts=False)
    if held_count:
        held = {id(row) for row in picked}
        return samples, [row for row in rows if id(row) not in held], held_count
    return samples, rows, 0
