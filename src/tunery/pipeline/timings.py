"""How long each part of a run took: what its estimate is checked against.

``PhaseTimer`` wraps the run's reporter and times each pipeline phase as the recipe enters
it (loading the model, preparing data, attaching LoRA, training, saving, exporting,
sampling), and the evaluations inside training. ``run.json`` records the result under
``timings``; the estimate of later runs of the same model on the same tier learns from it.
Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tunery.phases import Phase
from tunery.pipeline.reporting import EvalMetrics, ForwardingReporter, Reporter

EVALUATIONS = "evaluations"
"""The timings key of the seconds spent evaluating, part of the training phase's."""


class PhaseTimer(ForwardingReporter):
    """A Reporter that passes everything on to ``inner`` and times the phases."""

    def __init__(self, inner: Reporter, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(inner)
        self._clock = clock
        self._current: tuple[Phase, float] | None = None
        self._seconds: dict[str, float] = {}
        self._evaluations = 0.0

    def phase(self, phase: Phase) -> None:
        self._close()
        self._current = (phase, self._clock())
        self._inner.phase(phase)

    def eval_metrics(self, metrics: EvalMetrics) -> None:
        self._evaluations += metrics.seconds
        self._inner.eval_metrics(metrics)

    def timings(self) -> dict[str, float]:
        """Seconds per phase entered so far (the current one up to now), and the seconds of
        the evaluations (``EVALUATIONS``), which the training phase's include."""
        self._close()
        return {
            **{name: round(seconds, 3) for name, seconds in self._seconds.items()},
            EVALUATIONS: round(self._evaluations, 3),
        }

    def _close(self) -> None:
        if self._current is None:
            return
        phase, since = self._current
        self._seconds[phase.value] = self._seconds.get(phase.value, 0.0) + self._clock() - since
        self._current = (phase, self._clock())
