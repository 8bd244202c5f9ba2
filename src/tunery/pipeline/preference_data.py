"""Preference datasets become tokenised pairs: read, shuffled, rows held out, tokenised.

The same steps as ``data.prepare_data`` for chat rows: pairs are concatenated across files,
shuffled with the run's seed, three held out as sample prompts (with enough data) and the
validation split as ``tunery.pipeline.holdout`` counts them. Each side of a pair is the
prompt followed by its answer, rendered and tokenised as inference does (``chat.Encoder``);
only the answer's tokens (and the end-of-turn closing it) are scored. A side longer than the
limit is cut and counted; a pair whose prompt leaves no room for an answer within it is a
problem reported with its file and line, before the first gradient step.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from tunery.errors import DatasetError, DatasetProblem
from tunery.pipeline.chat import (
    Encoder,
    PairExample,
    SamplePrompt,
    TemplateFailure,
)
from tunery.pipeline.config import ValidationSettings
from tunery.pipeline.data import (
    PreparedData,
    check_prompt_lengths,
    check_validation,
    cut_to,
    read_datasets,
)
from tunery.pipeline.datasets import MAX_PROBLEMS, Message, PreferencePair, Row
from tunery.pipeline.holdout import SAMPLE_COUNT, sample_rows, validation_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery.pipeline.load import ChatFormat


def prepare_preference_data(
    paths: list[Path],
    tokenizer: PreTrainedTokenizerBase,
    chat_format: ChatFormat,
    *,
    max_length: int,
    seed: int,
    custom_prompts: list[str] | None = None,
    validation: ValidationSettings | None = None,
    validation_paths: list[Path] | None = None,
    require_validation: bool = False,
) -> PreparedData:
    """Validate, shuffle, hold out sample and validation pairs, tokenise both sides.

    Raises DatasetError (every pair without room for its answer, with file and line) or
    ConfigError (a file of chat rows, custom prompts too long, no validation pairs when
    early stopping needs them) before training. ``examples`` and ``validation`` of the
    result are PairExamples numbered from 0 in their list.
    """
    summaries = read_datasets(paths, method="dpo", field="datasets")
    pairs = [pair for summary in summaries for pair in summary.pairs]
    random.Random(seed).shuffle(pairs)
    samples, pairs, held_out = _pick_samples(pairs, custom_prompts or [])
    split: list[PreferencePair] = []
    if not validation_paths:
        held = validation_rows(len(pairs), validation or ValidationSettings(split=0))
        pairs, split = pairs[: len(pairs) - held], pairs[len(pairs) - held :]
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=False)
    if custom_prompts:
        check_prompt_lengths(encoder, samples, max_length)
    prepared = PreparedData(
        examples=[],
        samples=samples,
        max_length=max_length,
        held_out_rows=held_out,
        kind="preference",
    )
    prepared.examples, prepared.truncated_rows = _encode_pairs(encoder, pairs, max_length)
    used = {summary.file: 0 for summary in summaries}
    for pair in pairs:
        used[pair.file] += 1
    prepared.files = [
        {
            "file": summary.file,
            "format": summary.format,
            "rows": summary.row_count,
            "used": used[summary.file],
        }
        for summary in summaries
    ]
    if not prepared.examples:
        raise DatasetError.single(
            ", ".join(summary.file for summary in summaries),
            "no pairs are left to train on after holding out the sample and validation pairs",
            hint="add more pairs, give explicit samples.prompts, or lower validation.split",
        )
    if validation_paths:
        split = [
            pair
            for summary in read_datasets(
                validation_paths, method="dpo", field="validation.datasets"
            )
            for pair in summary.pairs
        ]
        prepared.validation_source = "datasets"
    elif split:
        prepared.validation_source = "split"
    prepared.validation, _ = _encode_pairs(encoder, split, max_length)
    check_validation(prepared, split, require_validation=require_validation)
    return prepared


def _encode_pairs(
    encoder: Encoder, pairs: list[PreferencePair], max_length: int
) -> tuple[list[PairExample], int]:
    """The pairs tokenised and numbered, and how many had a side cut to ``max_length``."""
    problems: list[DatasetProblem] = []
    encoded: list[PairExample] = []
    truncated = 0
    for pair in pairs:
        try:
            sides = [
                encoder.encode(Row(pair.file, pair.line, messages=(*pair.prompt, *answer)))
                for answer in (pair.chosen, pair.rejected)
            ]
        except TemplateFailure as failure:
            problems.append(DatasetProblem(pair.file, str(failure), pair.line))
        else:
            if any(len(side.input_ids) > max_length for side in sides):
                truncated += 1
                sides = [cut_to(side, max_length) for side in sides]
            if all(side.trained_tokens for side in sides):
                encoded.append(PairExample(len(encoded), *sides))
            else:
                prompt = len(encoder.prompt_ids(pair.prompt))
                problems.append(
                    DatasetProblem(
                        pair.file,
                        f"the prompt takes {prompt} tokens with the chat template and leaves no "
                        f"room for an answer within the sequence length ({max_length} tokens)",
                        pair.line,
                    )
                )
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise DatasetError(problems, hint="shorten the prompts or raise training.max_seq_length")
    return encoded, truncated


def _pick_samples(
    pairs: list[PreferencePair], custom_prompts: list[str]
) -> tuple[list[SamplePrompt], list[PreferencePair], int]:
    """Sample prompts (the better answer as the reference) and the pairs left to train on;
    as ``data.prepare_data`` picks them from chat rows."""
    if custom_prompts:
        prompts = [SamplePrompt((Message("user", prompt),), None) for prompt in custom_prompts]
        return prompts, pairs, 0
    picked = pairs[-SAMPLE_COUNT:]
    samples = [
        SamplePrompt(pair.prompt, "\n".join(message.content for message in pair.chosen))
        for pair in picked
    ]
    held = sample_rows(len(pairs), len(pairs), custom_prompts=False)
    return samples, pairs[: len(pairs) - held], held
