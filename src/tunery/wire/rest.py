"""The objects the HTTP API returns, one model each (``response_model`` of every route).

Values a client only displays are computed by the server and sent here (status labels in
``Meta``, the current epoch, what cancelling would bill, whether a run is refunded and why,
log lines), so the CLI and the studio keep no copies of the rules behind them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tunery.lifecycle import RunStatus
from tunery.phases import Phase
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
    """The first ``MAX_PROBLEMS`` problems (20)."""
    problems_total: int | None = None
    """How many problems there were in all."""


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
    reward_margin: Finite = None
    """DPO runs: the chosen answers' reward minus the rejected ones' (mean over pairs)."""
    reward_accuracy: Finite = None
    """DPO runs: the share of pairs ranked right (a tie counts half)."""
    progress: Finite = 0.0
    eta_seconds: Finite = None
    duration_seconds: float = 0.0
    billable_seconds: float = 0.0
    credits: float = 0.0
    """Training time so far at the tier's price (what completing now would bill)."""
    cancel_credits: float | None = None
    """What cancelling now would bill (whole minutes); None once the run is terminal."""


class RunEvaluation(BaseModel):
    """An evaluation on the validation data, and the best one so far."""

    model_config = ConfigDict(extra="allow")
    step: int
    total_steps: int | None = None
    eval_loss: Finite = None
    eval_accuracy: Finite = None
    """Mean token accuracy: the share of trained tokens predicted exactly (greedy)."""
    best_eval_loss: Finite = None
    best_step: int | None = None
    eval_reward_margin: Finite = None
    """DPO runs: the validation pairs' mean reward margin."""
    eval_reward_accuracy: Finite = None
    """DPO runs: the share of validation pairs ranked right (a tie counts half)."""


class RunOutcome(RunEvaluation):
    """A run's evaluation as the run object carries it: the latest one, the best one,
    and, once finished, whether early stopping or "Finish now" ended training early."""

    stopped_early: bool = False
    stopped_at_step: int | None = None
    finished_early: bool = False
    """"Finish now" ended training before its budget."""


class KeptStep(BaseModel):
    """The step whose adapter a run delivers when it is not the last step trained."""

    step: int
    loss: Finite = None
    """The training loss reported at that step."""
    eval_loss: Finite = None
    """Its eval loss, when that step was evaluated."""


class StepRow(RunMetrics):
    """One row of ``GET /runs/{id}/metrics``: a step as it was reported, with the
    evaluation after it when there was one (``eval_loss``, ``eval_accuracy``)."""

    replayed: bool | None = None
    """True for a step a resumed attempt's history filled in."""
    eval_loss: Finite = None
    eval_accuracy: Finite = None
    eval_reward_margin: Finite = None
    eval_reward_accuracy: Finite = None


class RunEstimate(BaseModel):
    """What a submission would train and cost, before anything is created.

    Tokens are estimated from characters (``tunery.runs.estimate``), steps are exact for
    data whose rows all keep a trained token. Seconds are what is billed: the gradient steps,
    evaluations, saving, the GGUF export, the samples and the upload (``phases``), each from
    earlier completed runs on the tier (``throughput_source`` ``measured``), else the tier's
    benchmark of the model's shape (``calibrated``), else for the steps alone the tier's
    FLOPs-based prior (``prior``).
    """

    tier: str
    base_model: str
    parameters: int | None
    """The base model's size, when the server knows it."""
    rows: int
    examples: int
    """Training examples: the rows left after sample prompts and the validation split."""
    validation_examples: int
    tokens_per_epoch: int
    """Estimated tokens of the training examples after templating (and truncation)."""
    tokens: int
    """Estimated tokens the whole run trains on."""
    evaluation_tokens: int = 0
    """Estimated tokens all its evaluations read."""
    sample_tokens: int = 0
    """Tokens its sample answers generate after training (the GGUF's are the export's)."""
    total_steps: int
    epochs: int
    devices: int = 1
    """The devices (GPUs, or CPU processes) the tier trains a run on, data-parallel."""
    effective_batch: int | None = None
    """Examples per optimizer step: ``batch_size`` (per device) * devices * accumulation."""
    seconds: float | None
    """Estimated billed seconds on the tier (the sum of ``phases``); None when neither a
    measurement nor a prior exists (an unknown model on a tier without ``tflops``)."""
    phases: dict[str, float] = {}
    """Estimated seconds of each billed part: ``training`` (steps and checkpoints),
    ``evaluations``, ``saving``, ``exporting``, ``sampling``, ``uploading``; a part nothing
    measured yet is missing (a note says so)."""
    startup_seconds: float | None = None
    """Estimated seconds from a node starting the run to its first gradient step (loading
    the model, preparing the data): not billed."""
    tokens_per_second: float | None
    throughput_source: Literal["measured", "calibrated", "prior"] | None
    measured_runs: int
    """Completed runs on this tier the costs were measured on."""
    credits: float | None
    credits_per_minute: float
    balance: float
    covered: bool | None
    """Whether the balance covers the estimated credits; None without an estimate."""
    peak_memory_gib: float | None = None
    """The planned peak GPU memory (``tunery.pipeline.memory``); None on a tier without a
    card memory, or for a model whose size the server does not know."""
    gpu_memory_gib: float | None = None
    """The tier's card memory the plan was checked against."""
    notes: list[str]
    warnings: list[Problem] = []
    """Settings far outside what usually works, each with its usual range: a submission is
    refused (``warnings_not_accepted``) until it says ``accept_warnings``."""


class PhaseCheck(BaseModel):
    estimated: float | None
    actual: float | None


class EstimateCheck(BaseModel):
    """A completed run's estimate beside what happened (``runs.estimate.check``); ratios are
    actual over estimated."""

    estimated_seconds: float | None
    actual_seconds: float
    """The billed seconds."""
    seconds_ratio: float | None
    estimated_credits: float | None
    actual_credits: float
    credits_ratio: float | None
    estimated_startup_seconds: float | None
    actual_startup_seconds: float | None
    startup_ratio: float | None
    source: str | None
    """What the estimate stood on: ``measured``, ``calibrated`` or ``prior``."""
    phases: dict[str, PhaseCheck]
    """Each billed part, estimated and as ``run.json``'s timings measured it."""


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
    node: str | None = None
    """The node that runs (or ran) the current attempt; None before one was placed."""
    waiting_reason: str | None = None
    """While waiting for a GPU: why the cluster has not placed the run yet; while queued or
    retrying: why the queue does not start it yet (the account's credits)."""
    queue_position: int | None
    cancel_requested: bool
    finish_requested: bool = False
    """"Finish now" was asked: training stops at the next step, then saves and exports."""
    pause_requested: bool = False
    """A pause was asked: training saves a checkpoint after its current step and stops."""
    evaluation: RunOutcome | None = None
    """The latest and best evaluation; None for a run without validation data (so far)."""
    estimate: RunEstimate | None = None
    """The estimate the run was submitted with, to compare with ``metrics``."""
    estimate_check: EstimateCheck | None = None
    """Once completed: the estimate beside the time and credits it took."""
    kept: KeptStep | None = None
    """The step whose adapter the run delivers, when early stopping kept its best evaluation's
    or the divergence guard the best step before the loss rose; None: the last step's."""
    samples: list[SampleData]
    artifacts: dict[str, str | None] | None
    hub_entry_id: str | None
    hub_entry_deleted: bool = False
    """The run's Hub entry was deleted since: its bundles are gone."""
    openai_model: str | None = None
    """The model id ``/v1/chat/completions`` and ``/v1/models`` know the run's GGUF by; None
    until the run delivered one."""
    tags: list[str] = []
    """The owner's labels (``PATCH /runs/{id}``)."""
    note: str = ""
    """The owner's free-text note."""
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
    kind: Literal["sft", "preference"] = "sft"
    """What it trains: chat rows (``sft``, for method ``sft``) or preference pairs
    (``preference``, for method ``dpo``); follows from the format."""
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
    gpu_memory_gib: float | None = None
    """The card memory runs on this tier are planned against; None: not checked (cpu)."""
    gpus: int = 0
    """GPUs a run on this tier trains on (0: it trains on CPUs)."""
    devices: int = 1
    """Data-parallel processes a run trains on: one per GPU, or the tier's CPU processes;
    ``training.batch_size`` is per device."""
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
    phase_labels: dict[Phase, str] = {}
    """Labels that replace ``label`` while the run is in one of these phases."""
    label_without_gpu: str | None = None
    """The label on a tier whose nodes have no GPU (``TierPublic.gpus`` 0), if it differs."""
    terminal: bool
    active: bool
    """A node is held (an attempt runs)."""
    cancellable: bool
    """``POST /runs/{id}/cancel`` stops a run in this state."""
    finishable: bool
    """``POST /runs/{id}/finish`` (Finish now) is accepted in this state."""
    shows_error: bool
    """The run object carries its last attempt's ``error``."""
    outcome: Literal["succeeded", "failed", "cancelled"] | None
    """What a terminal state means for the owner; None while the run is not finished."""
    pausable: bool = False
    """"Pause" is accepted."""
    resumable: bool = False
    """"Resume" is accepted."""


class PhaseInfo(BaseModel):
    id: Phase
    description: str


class Meta(BaseModel):
    """The vocabularies clients display, from ``GET /api/v1/meta``."""

    statuses: list[StatusInfo]
    phases: list[PhaseInfo]
    event_kinds: list[str]
    """Every ``event:`` name the event streams send (``tunery.wire.events``)."""
    refund_rules: list[str]
    automatic_validation: str
    """What a run whose validation split is left blank holds out."""


class Health(BaseModel):
    status: str
