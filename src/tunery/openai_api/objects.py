"""The objects OpenAI's API returns, field for field as the ``openai`` SDK reads them.

Extra fields tunery adds (its own run state) ride in ``tunery``; the SDK keeps unknown
fields, so ``job.tunery`` is readable from Python too. ``OpenAIError`` is every refusal on
``/v1``: its body is ``{"error": {message, type, param, code}}`` so the SDK raises its own
exception class (by status) with ``param`` and ``code`` set.
"""

from __future__ import annotations

import math
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from tunery.errors import TuneryError
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.wire.rest import RunEstimate

Item = TypeVar("Item")
JobStatus = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
}


class OpenAIError(Exception):
    """A refusal in OpenAI's shape; ``param`` names the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        """Sent with the answer (``Retry-After`` with a 429)."""

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


# tunery's errors that can reach a /v1 route, by the status OpenAI's API would answer.
STATUS_OF_ERROR_CODE = {
    "not_found": 404,
    "conflict": 409,
    "too_many_queued_runs": 429,
    "storage_quota_exceeded": 429,
}


NOT_SERVED = {
    "/v1/webhook_endpoints": "webhook endpoints are tunery's own: manage them with POST, GET "
    "and DELETE /api/v1/webhooks (also `tunery webhooks` and the studio's Credits tab); "
    "deliveries are signed as OpenAI signs them, so client.webhooks.unwrap verifies them",
    "/v1/fine_tuning/checkpoints": "checkpoint permissions are not available: a job's "
    "checkpoints are not shared with other accounts, and its final model is served to its "
    "own account",
    "/v1/fine_tuning/alpha": "graders are not available: tunery trains supervised fine-tunes",
}
"""OpenAI endpoints tunery does not serve, by path prefix, and what to use instead."""


def unknown_route(method: str, path: str) -> OpenAIError:
    """A 404 for a ``/v1`` path no route serves, saying why when OpenAI has it."""
    for prefix, reason in NOT_SERVED.items():
        if path == prefix or path.startswith(prefix + "/"):
            return OpenAIError(404, f"{method} {path} is not served: {reason}", code="unknown_url")
    return OpenAIError(
        404,
        f"Invalid URL ({method} {path}): tunery serves OpenAI's files, fine-tuning jobs, "
        "models and chat completions on /v1 (docs/openai.md)",
        code="unknown_url",
    )


INVALID_API_KEY = "invalid_api_key"
"""OpenAI's code for a missing or refused key: the SDK raises ``AuthenticationError``."""


def auth_error(message: str, hint: str) -> OpenAIError:
    """A refused API key, as OpenAI answers it on every route and method."""
    return OpenAIError(401, f"{message}; {hint}" if hint else message, code=INVALID_API_KEY)


def finite_number(value: Any) -> bool:
    """Whether a JSON value is a number that is finite as a float (not a bool, not NaN, not
    an integer past a double's range such as ``10**400``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value: Any) -> str:
    """A value a client sent, as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def openai_error(error: TuneryError) -> OpenAIError:
    """A tunery error as OpenAI would answer it (400 unless ``STATUS_OF_ERROR_CODE`` says)."""
    message = f"{error.message} ({error.hint})" if error.hint else error.message
    return OpenAIError(STATUS_OF_ERROR_CODE.get(error.code, 400), message, code=error.code)


class Page(BaseModel, Generic[Item]):
    """A cursor page: the next one is asked for with ``after=<id of the last item>``."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def page_of(items: list[Any], *, has_more: bool) -> dict[str, Any]:
    """A page's fields from items that each have an ``id``."""
    return {
        "data": items,
        "has_more": has_more,
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
    }


class JobCreateRequest(BaseModel):
    """``POST /v1/fine_tuning/jobs``: OpenAI's parameters, tunery's recipe sections in
    ``tunery`` (docs/openai.md)."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    integrations: list[Any] | None = None
    tunery: dict[str, Any] | None = Field(
        None, description="tunery's own recipe sections (RunRecipe's fields), laid over the job's"
    )


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune", "fine-tune-results"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class Hyperparameters(BaseModel):
    n_epochs: int | Literal["auto"]
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters


class DpoHyperparameters(Hyperparameters):
    beta: float | Literal["auto"]


class DpoMethod(BaseModel):
    hyperparameters: DpoHyperparameters


class Method(BaseModel):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class TuneryJobState(BaseModel):
    """tunery's own view of the job's run, for what OpenAI's statuses cannot say."""

    run_id: str
    status: RunStatus
    phase: Phase
    queue_position: int | None
    hub_entry_id: str | None
    validation: Literal["evaluated"] | None
    """``evaluated``: the run evaluates on the validation file (``valid_loss`` in metrics
    events, checkpoints and the results file)."""
    estimate: RunEstimate | None = None
    """What the run was estimated to train, take and cost when the job was created."""


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None
    method: Method
    user_provided_suffix: str | None
    tunery: TuneryJobState


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class CheckpointMetrics(BaseModel):
    step: float
    train_loss: float | None = None
    valid_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
