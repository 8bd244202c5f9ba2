"""The run lifecycle, written down once: states, what is true in each, and the legal moves.

States (exact strings, as the API shows them):

- ``queued``: in the scheduling queue of its tier; no node picked, nothing charged.
- ``waiting_for_gpu``: a node was picked and its worker is starting: spawning, loading the
  model, preparing data, attaching LoRA. Still nothing charged.
- ``training``: gradient steps are running (then saving, exporting, sampling, teardown);
  credits accrue from the first step until teardown.
- ``retrying``: a transient failure (lost worker, lost node, download error) ended the last
  attempt; the run waits out its back-off, then goes back to a node and resumes from its
  newest complete checkpoint. Nothing charged while waiting.
- ``paused``: stopped by its owner at a checkpoint (a training run saves one after its
  current step; a queued or retrying run has nothing to save). It holds no node and
  nothing is charged; resume queues it again and it continues from that checkpoint.
- ``completed``: the adapter was saved (and the GGUF exported, if enabled). Terminal.
- ``failed``: a user error, or transient failures beyond the retry budget. Terminal.
- ``cancelled``: stopped by its owner; billed for whole minutes of training. Terminal.

A terminal state has no outgoing move. A cancelled run never moves to ``retrying``. A
training run (or one whose node is starting) is not moved to ``paused`` by the request: it
carries ``pause_requested`` until its worker has saved and stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from tunery.phases import Phase


class RunStatus(StrEnum):
    QUEUED = "queued"
    WAITING_FOR_GPU = "waiting_for_gpu"
    TRAINING = "training"
    RETRYING = "retrying"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset(
        {RunStatus.WAITING_FOR_GPU, RunStatus.PAUSED, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.WAITING_FOR_GPU: frozenset(
        {
            RunStatus.TRAINING,
            RunStatus.RETRYING,
            RunStatus.PAUSED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        }
    ),
    RunStatus.TRAINING: frozenset(
        {
            RunStatus.COMPLETED,
            RunStatus.RETRYING,
            RunStatus.PAUSED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        }
    ),
    RunStatus.RETRYING: frozenset(
        {RunStatus.WAITING_FOR_GPU, RunStatus.PAUSED, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.PAUSED: frozenset({RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}

TERMINAL = frozenset(status for status, moves in TRANSITIONS.items() if not moves)
ACTIVE = frozenset({RunStatus.WAITING_FOR_GPU, RunStatus.TRAINING})
"""States in which an attempt holds a node."""
FINISHABLE = frozenset({RunStatus.TRAINING, RunStatus.RETRYING})
"""States in which "Finish now" is accepted: the run has trained (a retrying run finishes
after the first step its next attempt trains)."""
PAUSABLE = frozenset(
    {RunStatus.QUEUED, RunStatus.WAITING_FOR_GPU, RunStatus.TRAINING, RunStatus.RETRYING}
)
"""States in which "Pause" is accepted: a run that holds no node moves to ``paused`` at once,
one whose attempt runs when its worker has saved a checkpoint and stopped."""
RESUMABLE = frozenset({RunStatus.PAUSED})
"""States "Resume" moves out of (back to ``queued``)."""


def can_move(current: RunStatus, target: RunStatus) -> bool:
    return target in TRANSITIONS[current]


Outcome = Literal["succeeded", "failed", "cancelled"]

SHOWS_ERROR = frozenset({RunStatus.RETRYING, RunStatus.FAILED})
"""States in which a run carries the error of its last attempt."""
OUTCOMES: dict[RunStatus, Outcome] = {
    RunStatus.COMPLETED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}
"""What each terminal state means for the run's owner."""


@dataclass(frozen=True)
class StatusDisplay:
    """How every face shows a status: a label and an icon name (the face draws the icon).

    ``phase_labels`` replace the label while the run is in one of those phases;
    ``label_without_gpu`` replaces it on tiers whose nodes have no GPU.
    """

    label: str
    icon: str
    phase_labels: Mapping[Phase, str] = field(default_factory=dict)
    label_without_gpu: str | None = None


STATUS_DISPLAY: dict[RunStatus, StatusDisplay] = {
    RunStatus.QUEUED: StatusDisplay("Queued", "clock"),
    RunStatus.WAITING_FOR_GPU: StatusDisplay(
        "Waiting for GPU",
        "spinner",
        # Once a node is placed the worker loads and prepares: nothing waits for a GPU then.
        phase_labels={
            Phase.LOADING_MODEL: "Loading model",
            Phase.PREPARING_DATA: "Preparing data",
            Phase.ATTACHING_LORA: "Attaching LoRA",
        },
        label_without_gpu="Waiting for a node",
    ),
    RunStatus.TRAINING: StatusDisplay("Training", "spinner"),
    RunStatus.RETRYING: StatusDisplay("Retrying", "refresh"),
    RunStatus.PAUSED: StatusDisplay("Paused", "pause"),
    RunStatus.COMPLETED: StatusDisplay("Completed", "check"),
    RunStatus.FAILED: StatusDisplay("Failed", "cross"),
    RunStatus.CANCELLED: StatusDisplay("Cancelled", "square"),
}
"""In lifecycle order (the order of ``RunStatus``); ``GET /api/v1/meta`` serves it."""


def status_label(status: RunStatus, phase: str | None = None, *, gpu: bool = True) -> str:
    """The pill's label of a run in ``status`` and ``phase`` on a tier with or without GPUs."""
    display = STATUS_DISPLAY[status]
    if phase is not None and phase in display.phase_labels:
        return display.phase_labels[Phase(phase)]
    if not gpu and display.label_without_gpu is not None:
        return display.label_without_gpu
    return display.label
