"""Which rows a run holds out from training: sample prompts and the validation split.

Torch-free arithmetic on row counts, shared by the pipeline (``data.prepare_data``, which
holds the rows out) and the control plane's estimate (which counts them before any
tokenizer is loaded), so both agree on how many examples a run trains on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunery.pipeline.config import (
    AUTO_VALIDATION_MAX_ROWS,
    AUTO_VALIDATION_MIN_ROWS,
    AUTO_VALIDATION_SHARE,
    ValidationSettings,
)

HOLDOUT_MIN_ROWS = 30
"""Data with fewer rows trains on every row and reuses three of them as sample prompts."""
SAMPLE_COUNT = 3


@dataclass(frozen=True)
class Holdout:
    """How the rows of a run's training data are divided."""

    samples: int
    """Rows held out as sample prompts (their last answer is the reference)."""
    validation: int
    """Rows held out as the validation split (0 with separate validation data)."""
    training: int


def sample_rows(total_rows: int, chat_rows: int, *, custom_prompts: bool) -> int:
    """Rows held out for sample prompts: the last three chat rows, with enough data."""
    if custom_prompts or total_rows < HOLDOUT_MIN_ROWS:
        return 0
    return min(SAMPLE_COUNT, chat_rows)


def validation_rows(rows: int, validation: ValidationSettings) -> int:
    """Rows of ``rows`` (left after the sample prompts) held out for evaluation.

    None with separate validation data. An unset split is the default rule
    (``config.AUTO_VALIDATION_RULE``); a set one holds out at least one row.
    """
    if validation.separate or rows == 0:
        return 0
    if validation.split is None:
        if rows < AUTO_VALIDATION_MIN_ROWS:
            return 0
        return min(AUTO_VALIDATION_MAX_ROWS, math.ceil(rows * AUTO_VALIDATION_SHARE))
    if validation.split == 0:
        return 0
    return min(rows - 1, max(1, round(rows * validation.split)))


def plan_holdout(
    total_rows: int, chat_rows: int, *, custom_prompts: bool, validation: ValidationSettings
) -> Holdout:
    samples = sample_rows(total_rows, chat_rows, custom_prompts=custom_prompts)
    held = validation_rows(total_rows - samples, validation)
    return Holdout(samples=samples, validation=held, training=total_rows - samples - held)
