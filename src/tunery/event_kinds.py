"""The kinds of a run's stored events, written down once.

A leaf: the store writes events of these kinds, the history, the event streams, the OpenAI
adapter and the CLI read them, and ``GET /api/v1/meta`` serves them to the studio.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    STATUS = "status"
    """The run moved to another state."""
    PHASE = "phase"
    """The run entered another phase inside its state."""
    METRICS = "metrics"
    """An optimizer step's numbers."""
    EVALUATION = "evaluation"
    """An evaluation on the validation data."""
    LOG = "log"
    """A line of the run's log."""
    SAMPLES = "samples"
    """The finished adapter's answers to the sample prompts."""
    ANNOTATIONS = "annotations"
    """The owner changed the run's tags or note."""
    HUB = "hub"
    """The run's Hub entry was deleted."""


LOG_KINDS = frozenset(
    {
        EventKind.STATUS,
        EventKind.PHASE,
        EventKind.LOG,
        EventKind.METRICS,
        EventKind.EVALUATION,
        EventKind.HUB,
    }
)
"""The kinds that are lines of the run's log (``GET /runs/{id}/logs``): its lifecycle, its
log lines and every step and evaluation."""
STEP_KINDS = frozenset({EventKind.METRICS, EventKind.EVALUATION})
"""The kinds that carry a step's numbers."""
