"""How the pipeline talks to the world: events out, cancel, finish and pause flags in.

``tunery train`` passes a terminal reporter, a worker passes one that posts to the control
plane, tests pass ``RecordingReporter``. The pipeline never imports any of them.
"""

from __future__ import annotations

import math
import statistics
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tunery.phases import Phase


def current_epoch(epoch: float | None, epochs: int | None) -> int | None:
    """The epoch in progress, 1-based, as "Epoch X/Y" shows it; None before any step.

    ``epoch`` is fractional (2.25 is a quarter into the third epoch); every face shows
    this number, from the worker's step or the server's run object.
    """
    if epoch is None or not epochs:
        return None
    return min(max(1, math.ceil(epoch)), epochs)


@dataclass(frozen=True)
class StepMetrics:
    """What the Run panel header shows after an optimizer step."""

    step: int
    total_steps: int
    epoch: float
    epochs: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    trained_tokens: int
    training_seconds: float
    eta_seconds: float | None
    accuracy: float | None = None
    """Mean token accuracy: the share of the step's trained tokens the model predicted
    exactly (greedy) before the update; None where the loss kernel keeps no logits."""
    # DPO runs only (``tunery.pipeline.preference``): means over the step's pairs.
    rewards_chosen: float | None = None
    """beta * (log p_policy - log p_reference) of the better answers."""
    rewards_rejected: float | None = None
    reward_margin: float | None = None
    """Chosen minus rejected reward."""
    reward_accuracy: float | None = None
    """Share of pairs whose better answer has the higher reward (a tie counts half)."""

    @property
    def current_epoch(self) -> int:
        """The epoch in progress, 1-based, as the panel's "Epoch X/Y" shows it."""
        return current_epoch(self.epoch, self.epochs) or 1

    @property
    def progress(self) -> float:
        """Share of the step budget done, 0 to 100."""
        return 100.0 * self.step / self.total_steps if self.total_steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **_present(asdict(self), PREFERENCE_STEP_FIELDS),
            "progress": round(self.progress, 2),
        }


PREFERENCE_STEP_FIELDS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")
"""The step metrics of DPO runs, absent from an SFT run's rows."""
PREFERENCE_EVAL_FIELDS = tuple(f"eval_{name}" for name in PREFERENCE_STEP_FIELDS)


def _present(values: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """``values`` without the ``optional`` fields that are None."""
    return {key: value for key, value in values.items() if value is not None or key not in optional}


@dataclass(frozen=True)
class EvalMetrics:
    """An evaluation on the validation data, after optimizer step ``step``."""

    step: int
    total_steps: int
    eval_loss: float
    """Cross-entropy per trained token of the validation examples."""
    eval_accuracy: float | None
    """Mean token accuracy: the share of trained tokens the model predicts exactly (greedy);
    None for DPO runs, whose accuracy is ``eval_reward_accuracy``."""
    best_eval_loss: float
    """The lowest eval loss so far, this evaluation included."""
    best_step: int
    examples: int
    seconds: float
    # DPO runs only: as StepMetrics' fields, over the validation pairs.
    eval_rewards_chosen: float | None = None
    eval_rewards_rejected: float | None = None
    eval_reward_margin: float | None = None
    eval_reward_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return _present(asdict(self), PREFERENCE_EVAL_FIELDS)


class Reporter(Protocol):
    def phase(self, phase: Phase) -> None:
        """The pipeline entered ``phase`` (one of ``phases.PIPELINE_PHASES``)."""

    def log(self, message: str) -> None:
        """A human-readable line for the run's log."""

    def metrics(self, metrics: StepMetrics) -> None:
        """An optimizer step finished."""

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        """An evaluation on the validation data finished."""

    def resumed(self, history: list[dict[str, Any]]) -> None:
        """Training resumed from a checkpoint; ``history`` holds every step before it.

        The attempt that trained those steps may have died before it reported the last of
        them; a reporter that keeps a run's history records the ones it is missing.
        """

    def should_stop(self) -> bool:
        """True once cancellation was requested; checked between steps."""

    def should_finish(self) -> bool:
        """True once "Finish now" was requested: training ends after the current step and
        the run goes on to save, export and sample with what it learned."""

    def should_pause(self) -> bool:
        """True once a pause was requested: training saves a checkpoint after the current
        step and stops (``RunPaused``); a later attempt resumes from that checkpoint."""


class ForwardingReporter:
    """A Reporter that passes everything on to ``inner``; wrappers override what they add."""

    def __init__(self, inner: Reporter) -> None:
        self._inner = inner

    def phase(self, phase: Phase) -> None:
        self._inner.phase(phase)

    def log(self, message: str) -> None:
        self._inner.log(message)

    def metrics(self, metrics: StepMetrics) -> None:
        self._inner.metrics(metrics)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self._inner.eval_metrics(metrics)

    def resumed(self, history: list[dict[str, Any]]) -> None:
        self._inner.resumed(history)

    def should_stop(self) -> bool:
        return self._inner.should_stop()

    def should_finish(self) -> bool:
        return self._inner.should_finish()

    def should_pause(self) -> bool:
        return self._inner.should_pause()


@dataclass
class RecordingReporter:
    """Keeps everything in memory; ``stop_after_step`` requests cancel after that step,
    ``finish_after_step`` "Finish now", ``pause_after_step`` a pause."""

    stop_after_step: int | None = None
    finish_after_step: int | None = None
    pause_after_step: int | None = None
    phases: list[Phase] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    steps: list[StepMetrics] = field(default_factory=list)
    evaluations: list[EvalMetrics] = field(default_factory=list)
    resumed_history: list[dict[str, Any]] | None = None

    def phase(self, phase: Phase) -> None:
        self.phases.append(phase)

    def log(self, message: str) -> None:
        self.logs.append(message)

    def metrics(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self.evaluations.append(metrics)

    def resumed(self, history: list[dict[str, Any]]) -> None:
        self.resumed_history = history

    def should_stop(self) -> bool:
        return self._reached(self.stop_after_step)

    def should_finish(self) -> bool:
        return self._reached(self.finish_after_step)

    def should_pause(self) -> bool:
        return self._reached(self.pause_after_step)

    def _reached(self, step: int | None) -> bool:
        return step is not None and bool(self.steps) and self.steps[-1].step >= step


class StopFlag:
    """A thread-safe cancel request, set from a signal handler or another thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class EtaEstimator:
    """Remaining training time from measured optimizer steps only.

    The first ``skip`` steps are ignored (they pay for allocator and kernel warm-up), and no
    estimate is given until ``min_steps`` more were measured. The estimate is the median step
    time over the latest ``window`` steps times the steps left, so it settles within the
    first 10-20 steps and is not thrown by one slow step. Time spent loading, tokenising,
    checkpointing or saving never enters: callers time the step alone.
    """

    def __init__(self, *, skip: int = 1, min_steps: int = 5, window: int = 20) -> None:
        self._skip = skip
        self._min_steps = min_steps
        self._window = window
        self._durations: list[float] = []
        self._seen = 0

    def add(self, seconds: float) -> None:
        self._seen += 1
        if self._seen > self._skip:
            self._durations.append(seconds)
            del self._durations[: -self._window]

    def remaining(self, steps_left: int) -> float | None:
        if len(self._durations) < self._min_steps:
            return None
        return statistics.median(self._durations) * max(steps_left, 0)
