"""The objects the HTTP API returns, one model each (``response_model`` of every route).

Values a client only displays are computed by the server and sent here (status labels in
``Meta``, the current epoch, what cancelling would bill, whether a run is refunded and why,
log lines), so the CLI and the studio keep no copies of the rules behind them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from tunery.phases import Phase
from tunery.runs.lifecycle import RunStatus
from tunery.wire.reports import ErrorData, Finite, SampleData


class Problem(BaseModel):
    """One reason a request was refused: a field (submissions) or a file and line (datasets)."""

    model_config = ConfigDict(extra="allow")
    message: str
    field: str | None = None
    file: str | None = None
    line: int | None = None


class ErrorDetail(ErrorData):
    problems: list[Problem] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``{"detail": {code, message, hint, problems?}}``."""

    detail: ErrorDetail


class RunMetrics(BaseModel):
    """The Run panel numbers: the worker's latest step plus what the server adds now."""

    model_config = ConfigDict(extra="allow")
    epoch: Finite = None
    epochs: int | None = None
    current_epoch: int | None = None
    """The epoch in progress, 1-based (``Epoch current_epoch/epochs``)."""
    step: int = 0
    total_steps: int | None = None
    loss: Finite = None
    progress: Finite = 0.0
    eta_seconds: Finite = None
    duration_seconds: float = 0.0
    billable_seconds: float = 0.0
    credits: float = 0.0
    """Training time so far at the tier's price (what completing now would bill)."""
    cancel_credits: float | None = None
    """What cancelling now would bill (whole minutes); None once the run is terminal."""


class StepRow(RunMetrics):
    """One row of ``GET /runs/{id}/metrics``: a step as it was reported."""

    replayed: bool | None = None
    """True for a step a resumed attempt's history filled in."""


class RunPublic(BaseModel):
    id: str
    name: str
    status: RunStatus
    phase: Phase
    tier: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    config: dict[str, Any]
    """The recipe as submitted (normalised), a snapshot that later edits never change."""
    metrics: RunMetrics
    error: ErrorData | None
    attempt: int
    queue_position: int | None
    cancel_requested: bool
    samples: list[SampleData]
    artifacts: dict[str, str | None] | None
    hub_entry_id: str | None
    last_event_id: int | None
    """Events up to this id are reflected here; a stream follower applies only newer ones."""
    refunded: bool | None
    """Whether the run's training time was refunded; None while it is not finished."""
    refund_note: str
    """One sentence: whether and why the run is (or would be) refunded."""


class DatasetPublic(BaseModel):
    id: str
    name: str
    format: str
    rows: int
    bytes: int
    sha256: str
    created_at: str


class ArtifactInfo(BaseModel):
    filename: str
    size: int
    sha256: str


class HubEntryPublic(BaseModel):
    id: str
    name: str
    run_id: str
    base_model: str
    artifacts: dict[str, ArtifactInfo]
    created_at: str


class SignedUrl(BaseModel):
    url: str
    expires_at: int


class LedgerEntryPublic(BaseModel):
    id: int
    kind: str
    amount: float
    run_id: str | None
    note: str
    created_at: str


class CreditsPublic(BaseModel):
    balance: float
    ledger: list[LedgerEntryPublic]


class TierPublic(BaseModel):
    id: str
    name: str
    credits_per_minute: float
    nodes_total: int
    nodes_free: int


class ModelPublic(BaseModel):
    id: str
    family: str
    parameters: int
    license: str
    context_length: int
    chat_template: str
    gguf: bool
    verified: bool
    lora_defaults: dict[str, Any]


class StatusInfo(BaseModel):
    id: RunStatus
    label: str
    icon: str
    terminal: bool
    active: bool
    """A node is held (an attempt runs)."""


class PhaseInfo(BaseModel):
    id: Phase
    description: str


class Meta(BaseModel):
    """The vocabularies clients display, from ``GET /api/v1/meta``."""

    statuses: list[StatusInfo]
    phases: list[PhaseInfo]
    event_kinds: list[str]
    refund_rules: list[str]


class Health(BaseModel):
    status: str
