"""Worker → server reports: what a worker posts to ``/internal/attempts/{id}/events``.

One model per ``kind`` (phase, metrics, log, history, result, paused, failure), joined as a union
discriminated on ``kind``. The worker's reporter builds them and the server parses them with
the same classes, so the two sides cannot drift. A batch is ``{"events": [report, ...]}``;
an empty batch is a heartbeat. Non-finite floats (NaN, ±inf) become ``null``: JSON has no
spelling for them, and one bad loss must not stop a run's reports.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from tunery.errors import MAX_PROBLEMS, ConfigError, FieldProblem
from tunery.phases import PIPELINE_PHASES, Phase
from tunery.tiers import MAX_DEVICES_PER_ATTEMPT

ATTEMPT_TOKEN_HEADER = "X-Attempt-Token"
"""The header a worker sends its attempt's fencing token in, on every request."""
MAX_REPORTS_PER_BATCH = 1000
"""The most reports one batch may carry; the worker's reporter sends at most half of it."""
MAX_HISTORY_STEPS = 1000
"""The most steps one history report carries; a longer history goes in several."""
MAX_SAMPLES = 100
"""The most sample answers a result carries (a recipe asks for far fewer)."""
MAX_TEXT_CHARS = 8000
"""Log lines and error texts from a worker are cut to this many characters."""
MAX_COUNT = 2**53
"""The largest step, token or example count a report may carry: every integer up to it is
exact in a JSON double (browsers) and in SQLite."""
MAX_DEPTH = 16
"""How deeply a batch may nest (a result's summary nests four levels)."""


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


Finite = Annotated[float | None, AfterValidator(_finite)]
"""A float that is ``None`` when the worker measured NaN or infinity."""
WorkerText = Annotated[str, AfterValidator(lambda text: text[:MAX_TEXT_CHARS])]
"""Text a worker wrote (a log line, an error), kept to ``MAX_TEXT_CHARS``."""
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
"""A step, token or example count."""


class StepData(BaseModel):
    """One optimizer step, as the pipeline's ``StepMetrics.as_dict`` gives it."""

    # Newer workers may add numbers; they are kept and shown, not refused.
    model_config = ConfigDict(extra="allow")
    step: Count
    total_steps: Count | None = None
    epoch: Finite = None
    epochs: Count | None = None
    loss: Finite = None
    accuracy: Finite = None
    learning_rate: Finite = None
    grad_norm: Finite = None
    tokens_per_second: Finite = None
    trained_tokens: Count | None = None
    training_seconds: Finite = None
    eta_seconds: Finite = None
    progress: Finite = None
    # DPO runs only (``pipeline.preference``): means over the step's pairs.
    rewards_chosen: Finite = None
    rewards_rejected: Finite = None
    reward_margin: Finite = None
    reward_accuracy: Finite = None


class EvaluationData(BaseModel):
    """An evaluation on the validation data, as the pipeline's ``EvalMetrics.as_dict`` gives it."""

    model_config = ConfigDict(extra="allow")
    step: Count
    total_steps: Count | None = None
    eval_loss: Finite = None
    eval_accuracy: Finite = None
    best_eval_loss: Finite = None
    best_step: Count | None = None
    examples: Count | None = None
    seconds: Finite = None
    # DPO runs only: over the validation pairs.
    eval_rewards_chosen: Finite = None
    eval_rewards_rejected: Finite = None
    eval_reward_margin: Finite = None
    eval_reward_accuracy: Finite = None


class ErrorData(BaseModel):
    """Why a run failed, written for its owner."""

    code: str
    message: str
    hint: str = ""


class SampleData(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str
    response: str


class PhaseData(BaseModel):
    phase: Phase

    @field_validator("phase")
    @classmethod
    def _reportable(cls, phase: Phase) -> Phase:
        if phase not in PIPELINE_PHASES:
            names = ", ".join(PIPELINE_PHASES)
            raise ValueError(f"a worker reports only the pipeline's phases ({names})")
        return phase


class LogData(BaseModel):
    message: WorkerText


class HistoryData(BaseModel):
    steps: list[StepData] = Field(max_length=MAX_HISTORY_STEPS)


class ResultData(BaseModel):
    """The pipeline's run summary; stored whole on the run."""

    model_config = ConfigDict(extra="allow")
    status: Literal["completed", "failed"]
    error: ErrorData | None = None
    samples: list[SampleData] = Field([], max_length=MAX_SAMPLES)
    artifacts: dict[str, str | None] = {}
    metrics: dict[str, Any] | None = None


class PausedData(BaseModel):
    step: int = Field(ge=0)
    """The step whose checkpoint was saved before the worker stopped."""


class FailureData(ErrorData):
    message: WorkerText
    hint: WorkerText = ""
    transient: bool = False


class PhaseReport(BaseModel):
    """The pipeline entered a phase."""

    kind: Literal["phase"] = "phase"
    data: PhaseData


class MetricsReport(BaseModel):
    """An optimizer step finished."""

    kind: Literal["metrics"] = "metrics"
    data: StepData


class LogReport(BaseModel):
    """A line for the run's log."""

    kind: Literal["log"] = "log"
    data: LogData


class EvaluationReport(BaseModel):
    """An evaluation on the validation data finished."""

    kind: Literal["evaluation"] = "evaluation"
    data: EvaluationData


class HistoryReport(BaseModel):
    """A resumed attempt's checkpoint history: every step before the checkpoint."""

    kind: Literal["history"] = "history"
    data: HistoryData


class ResultReport(BaseModel):
    """The recipe returned (completed, or failed after saving the adapter)."""

    kind: Literal["result"] = "result"
    data: ResultData


class PausedReport(BaseModel):
    """Training stopped at its owner's request, its checkpoint saved; the worker exits."""

    kind: Literal["paused"] = "paused"
    data: PausedData


class FailureReport(BaseModel):
    """The recipe raised; ``transient`` failures are retried."""

    kind: Literal["failure"] = "failure"
    data: FailureData


AnyReport = (
    PhaseReport
    | MetricsReport
    | EvaluationReport
    | LogReport
    | HistoryReport
    | ResultReport
    | PausedReport
    | FailureReport
)
Report = Annotated[AnyReport, Field(discriminator="kind")]
"""One report; ``kind`` says which."""
REPORT_KINDS = (
    "phase",
    "metrics",
    "evaluation",
    "log",
    "history",
    "result",
    "paused",
    "failure",
)


class ReportBatch(BaseModel):
    events: list[Report] = Field([], max_length=MAX_REPORTS_PER_BATCH)


class ReportAck(BaseModel):
    """The server's answer to a batch: whether the owner asked to cancel the run, to finish
    it now (stop training at the next step, then save, export and sample), or to pause it
    (save a checkpoint after the current step and stop)."""

    cancel: bool
    finish: bool = False
    pause: bool = False


class DatasetRef(BaseModel):
    """A dataset of the run, to download from ``/internal/attempts/{id}/datasets/{dataset}``."""

    id: str
    suffix: Literal[".jsonl", ".csv", ".parquet"]
    sha256: str
    bytes: int


MAX_WORKER_FILE_BYTES = 32 * 2**30
"""The largest bundle or checkpoint archive a worker uploads (the server's cap), and so the
largest checkpoint archive a worker downloads. A 70B model's Q4_K_M GGUF is about 40 GiB:
export those with a larger cap."""


class AdapterRef(BaseModel):
    """The adapter a run starts from (``init_from``): the LoRA bundle of run ``run_id``, to
    download from ``/internal/attempts/{id}/init-adapter``."""

    run_id: str
    sha256: str
    bytes: int


class AttemptSpec(BaseModel):
    """What a worker runs, answered by ``GET /internal/attempts/{id}/spec``.

    It names no path of the server's: the recipe's datasets are ``datasets``, fetched over
    the API; the worker writes into a scratch directory of its own and uploads its bundles;
    checkpoints go to the store its backend gave it. ``threads`` is the node's setting, if
    any (else the worker's ``TUNERY_TORCH_THREADS``), for all of the attempt's processes
    together; ``devices`` the data-parallel processes it trains on (its tier's).
    """

    run_id: str
    attempt: int
    recipe: dict[str, Any]
    datasets: list[DatasetRef]
    validation_datasets: list[DatasetRef] = []
    """The recipe's ``validation.dataset_ids``, fetched the same way."""
    init_adapter: AdapterRef | None = None
    """The adapter ``init_from`` names; None when the recipe has none, or when it is no
    longer on the server (the worker then fails the run saying so)."""
    heartbeat_seconds: float
    threads: int | None = None
    devices: int = Field(1, ge=1, le=MAX_DEVICES_PER_ATTEMPT)
    estimate: dict[str, Any] | None = None
    """The run's estimate (``wire.rest.RunEstimate``), for its ``run.json``."""
    wandb: dict[str, str] | None = None
    """For a run with a W&B integration: the server's W&B key, mode, URL and folder
    (``WandbServerSettings.access``), set in the worker's own environment, never argv."""


def encode(report: AnyReport) -> str:
    """A report as JSON text; never raises on non-finite floats (they become null)."""
    return report.model_dump_json()


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), counted up to one past
    ``limit`` without recursion, so no value can exhaust the stack."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth + 1)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_batch(raw: Any) -> ReportBatch:
    """Validate a posted batch; raises ConfigError naming the malformed fields (the first
    ``MAX_PROBLEMS``, and how many there were).

    Field names drop list positions and the union's tag, so a bad history reads
    ``events.data.steps`` whichever report of the batch it was. A batch of more than
    ``MAX_REPORTS_PER_BATCH`` reports is refused before any of them is validated.
    """
    if nesting_depth(raw, MAX_DEPTH) > MAX_DEPTH:
        raise ConfigError.single("events", f"the batch nests deeper than {MAX_DEPTH} levels")
    try:
        return ReportBatch.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False)[:MAX_PROBLEMS]:
            parts = [
                str(part)
                for part in item["loc"]
                if not isinstance(part, int) and part not in REPORT_KINDS
            ]
            message = item["msg"].removeprefix("Value error, ")
            problems.append(FieldProblem(".".join(parts) or "events", message))
        raise ConfigError(
            problems,
            hint="the worker and the server disagree on reports",
            total=error.error_count(),
        ) from None
