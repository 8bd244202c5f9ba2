"""Server-Sent Events: one payload model per ``kind``.

A run's stream (``GET /runs/{id}/events``) and an account's stream (``GET /events``) carry
the stored events of its runs, each once and in id order, as ``id: N`` / ``event: KIND`` /
``data: JSON``. The payload repeats ``id`` and ``kind``, adds ``at`` (ISO time) and, on the
account stream, ``run_id``. Events that belong in the run's log (status, phase, log, each
step's metrics, evaluations, a deleted Hub entry) carry ``line``: the exact text
``GET /runs/{id}/logs`` shows for them.

Two kinds are not stored and have no id: ``ready`` (the account stream's starting cursor)
and ``snapshot`` (live numbers of the account's unfinished runs, every few seconds).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.event_kinds import EventKind
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.wire.reports import ErrorData, SampleData
from tunery.wire.rest import RunEvaluation, RunMetrics

STORED_KINDS = tuple(EventKind)
EVENT_KINDS = (*STORED_KINDS, "ready", "snapshot")


class _Stored(BaseModel):
    id: int
    at: str
    run_id: str | None = None
    """Set on the account stream only."""


class StatusEvent(_Stored):
    """The run moved to another state (the first one is ``queued``)."""

    kind: Literal[EventKind.STATUS] = EventKind.STATUS
    status: RunStatus
    phase: Phase
    error: ErrorData | None = None
    line: str


class PhaseEvent(_Stored):
    """The run entered another phase inside its state."""

    kind: Literal[EventKind.PHASE] = EventKind.PHASE
    phase: Phase
    line: str


class LogEvent(_Stored):
    kind: Literal[EventKind.LOG] = EventKind.LOG
    message: str
    line: str


class MetricsEvent(_Stored, RunMetrics):
    """After a step: the run's live numbers; ``replayed`` marks a step filled in later."""

    model_config = ConfigDict(extra="allow")
    kind: Literal[EventKind.METRICS] = EventKind.METRICS
    replayed: bool | None = None
    line: str | None = None


class EvaluationEvent(_Stored, RunEvaluation):
    """An evaluation on the validation data finished (after step ``step``)."""

    kind: Literal[EventKind.EVALUATION] = EventKind.EVALUATION
    line: str | None = None


class SamplesEvent(_Stored):
    """The answers of the finished adapter to the sample prompts."""

    kind: Literal[EventKind.SAMPLES] = EventKind.SAMPLES
    samples: list[SampleData]


class AnnotationsEvent(_Stored):
    """The owner changed the run's tags or note (``PATCH /runs/{id}``)."""

    kind: Literal[EventKind.ANNOTATIONS] = EventKind.ANNOTATIONS
    tags: list[str]
    note: str


class HubEvent(_Stored):
    """The run's Hub entry was deleted: its bundles can no longer be downloaded or chatted
    with."""

    kind: Literal[EventKind.HUB] = EventKind.HUB
    hub_entry_id: str
    deleted: bool
    line: str


StoredEvent = Annotated[
    StatusEvent
    | PhaseEvent
    | LogEvent
    | MetricsEvent
    | EvaluationEvent
    | SamplesEvent
    | AnnotationsEvent
    | HubEvent,
    Field(discriminator="kind"),
]


class ReadyEvent(BaseModel):
    """The account stream started "now": resume from ``cursor`` after a reconnect."""

    kind: Literal["ready"] = "ready"
    cursor: int


class TierSnapshot(BaseModel):
    id: str
    nodes_free: int
    nodes_total: int


class RunSnapshot(BaseModel):
    id: str
    status: RunStatus
    phase: Phase
    metrics: RunMetrics
    queue_position: int | None
    waiting_reason: str | None = None


class SnapshotEvent(BaseModel):
    """Live numbers: each unfinished run's, the balance and each tier's free nodes. Sent every
    few seconds while a run is unfinished, and soon after every status change (a finished
    run's bill and freed node included), so a page needs no request to follow them."""

    kind: Literal["snapshot"] = "snapshot"
    runs: list[RunSnapshot]
    balance: float
    tiers: list[TierSnapshot] | None = None
    """Sent after a status change (nodes are taken and freed only then); None otherwise."""
