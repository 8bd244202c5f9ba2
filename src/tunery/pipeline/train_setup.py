"""What the training loop is given (``TrainSetup``) and what it keeps (``TrainerState``).

A leaf of the loop: checkpoints, evaluation and the card check read these without importing
the loop itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.pipeline.chat import Example, PairExample
from tunery.pipeline.config import TrainingConfig

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from tunery.pipeline.distributed import DataParallel
    from tunery.pipeline.evaluation import EvaluationPlan
    from tunery.pipeline.kernels import Kernels
    from tunery.pipeline.load import Precision
    from tunery.pipeline.preference import PreferenceObjective


@dataclass
class TrainerState:
    """What a checkpoint records besides tensors, and what the run reports at the end."""

    step: int = 0
    trained_tokens: int = 0
    training_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    early_stopping: dict[str, Any] | None = None
    """The early-stopping state after the latest evaluation (``EarlyStopping.as_dict``)."""
    finished_early: bool = False
    """"Finish now" ended training before its budget."""
    micro_batch_examples: int = 0
    """Examples per micro-batch across all devices, as the run was planned: with ``step``,
    the data position (0 in checkpoints written before data-parallel training)."""


@dataclass(frozen=True)
class TrainSetup:
    model: PeftModel
    examples: list[Example] | list[PairExample]  # pairs when ``preference`` is set
    config: TrainingConfig
    precision: Precision
    device: torch.device
    pad_id: int
    checkpoint_dir: Path
    fingerprint: str  # identifies the recipe + data; a checkpoint of another is not resumed
    kernels: Kernels | None = None  # None: choose_kernels for the device and model
    evaluation: EvaluationPlan | None = None  # None: no validation data, no evaluations
    on_checkpoint: Callable[[Path], None] | None = None  # each complete checkpoint's directory
    preference: PreferenceObjective | None = None  # None: supervised fine-tuning (sft)
    data_parallel: DataParallel | None = None  # None: this process trains alone
