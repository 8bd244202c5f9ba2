"""OpenAI's fine-tuning vocabulary onto tunery's runs, and back; pure functions, no I/O.

- ``n_epochs`` → ``training.epochs``; ``batch_size`` → ``training.batch_size``;
  ``learning_rate_multiplier`` → ``training.learning_rate`` = multiplier * tunery's default
  learning rate (``BASE_LEARNING_RATE``); ``seed`` → ``training.seed``. ``"auto"`` keeps
  tunery's default (or what the ``tunery`` extra object set).
- The ``tunery`` extra object (``extra_body={"tunery": {...}}``) is merged into the recipe
  first, section by section (``lora``, ``training``, ``export``, ``gpu_tier``, ``samples``…);
  explicit OpenAI hyperparameters win over it.
- Statuses: queued → ``queued``; waiting_for_gpu → ``queued`` (a node is being prepared),
  or ``validating_files`` while its worker reads and checks the files (phase
  ``preparing_data``); training and retrying → ``running``; paused → ``paused``; completed →
  ``succeeded``; failed, cancelled as such.
- Numbers: ``n_epochs`` is the epochs the run trains (or trained) in, which a step budget
  decides; each step's ``train_mean_token_accuracy``; checkpoints carry the validation
  numbers of the evaluation at their step as ``valid_*`` and ``full_valid_*`` alike, since
  tunery evaluates on the whole validation file every time.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunery.errors import FieldProblem
from tunery.event_kinds import EventKind
from tunery.lifecycle import RunStatus
from tunery.openai_api.objects import (
    CheckpointMetrics,
    DpoHyperparameters,
    DpoMethod,
    Hyperparameters,
    JobStatus,
    Method,
    OpenAIError,
    SupervisedMethod,
    finite_number,
    shown,
)
from tunery.phases import Phase
from tunery.pipeline.config import MAX_DPO_BETA, MethodSettings, TrainingConfig
from tunery.pipeline.reporting import PREFERENCE_STEP_FIELDS

BASE_LEARNING_RATE: float = TrainingConfig.model_fields["learning_rate"].default
DEFAULT_CHECKPOINT_EVERY: int = TrainingConfig.model_fields["checkpoint_every_steps"].default
DEFAULT_JOB_NAME = "fine-tune"
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
METHOD_HYPERPARAMETERS = {"supervised": HYPERPARAMETERS, "dpo": (*HYPERPARAMETERS, "beta")}
"""The methods a job may ask for, and the hyperparameters each takes."""
RECIPE_METHODS = {"sft": "supervised", "dpo": "dpo"}
"""tunery's ``method.type`` in OpenAI's words."""
RESULTS_PREFIX = "file-results-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"
MAX_METADATA_PAIRS = 16

STATUS_OF_RUN: dict[RunStatus, JobStatus] = {
    RunStatus.QUEUED: "queued",
    RunStatus.WAITING_FOR_GPU: "queued",
    RunStatus.TRAINING: "running",
    RunStatus.RETRYING: "running",
    RunStatus.PAUSED: "paused",
    RunStatus.COMPLETED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}
RECIPE_FIELD_PARAMS = {
    "training.epochs": "n_epochs",
    "training.batch_size": "batch_size",
    "training.learning_rate": "learning_rate_multiplier",
}


def job_status(run_status: str, phase: str | None = None) -> JobStatus:
    if run_status == RunStatus.WAITING_FOR_GPU and phase == Phase.PREPARING_DATA:
        return "validating_files"
    return STATUS_OF_RUN[RunStatus(run_status)]


# Requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestedMethod:
    """What a job request asks to train: the method, its hyperparameters, and the request
    field they came from (OpenAI's ``param`` prefix for their errors)."""

    type: str
    hyperparameters: dict[str, Any]
    where: str


def requested_method(body: Mapping[str, Any]) -> RequestedMethod:
    """The method and hyperparameters of a job request.

    ``method`` (``type: supervised`` or ``dpo``, hyperparameters under ``method.TYPE``) is the
    current form; top-level ``hyperparameters`` the deprecated one (supervised only).
    Reinforcement is refused with ``param`` ``method.type``.
    """
    method = body.get("method")
    if method is None:
        where = "hyperparameters"
        return RequestedMethod(
            "supervised", _object(body.get(where), where, HYPERPARAMETERS), where
        )
    if not isinstance(method, dict):
        raise OpenAIError(400, "method must be an object", param="method")
    kind = method.get("type")
    if kind not in METHOD_HYPERPARAMETERS:
        raise OpenAIError(
            400,
            f"method.type {kind!r} is not supported: tunery trains supervised and dpo "
            "fine-tunes (reinforcement is not available yet)",
            param="method.type",
            code="unsupported_method",
        )
    if body.get("hyperparameters") is not None:
        raise OpenAIError(
            400,
            f"give hyperparameters under method.{kind}.hyperparameters or the deprecated "
            "top-level hyperparameters, not both",
            param="hyperparameters",
        )
    settings = method.get(kind) or {}
    if not isinstance(settings, dict):
        raise OpenAIError(400, "must be an object", param=f"method.{kind}")
    where = f"method.{kind}.hyperparameters"
    allowed = METHOD_HYPERPARAMETERS[kind]
    return RequestedMethod(kind, _object(settings.get("hyperparameters"), where, allowed), where)


def method_overrides(requested: RequestedMethod) -> dict[str, Any]:
    """The recipe's ``method`` for the request: ``dpo`` with its ``beta`` (``auto``: tunery's
    default), nothing for supervised (sft, the default)."""
    if requested.type != "dpo":
        return {}
    beta = requested.hyperparameters.get("beta", "auto")
    if beta == "auto" or beta is None:
        return {"type": "dpo"}
    if not finite_number(beta) or not 0 < beta <= MAX_DPO_BETA:
        raise OpenAIError(
            400,
            f"beta must be 'auto' or a number above 0 and at most {MAX_DPO_BETA:g}, "
            f"not {shown(beta)}",
            param=f"{requested.where}.beta",
        )
    return {"type": "dpo", "beta": float(beta)}


def _object(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OpenAIError(400, f"{where} must be an object", param=where)
    for key in value:
        if key not in allowed:
            known = ", ".join(allowed)
            raise OpenAIError(
                400, f"unknown hyperparameter {key!r}; known: {known}", param=f"{where}.{key}"
            )
    return dict(value)


def training_overrides(hyperparameters: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``training`` fields the explicit (non-``auto``) hyperparameters set.

    Raises OpenAIError (400, ``param`` set) for a value that is neither ``"auto"`` nor a
    positive number of the right kind.
    """
    training: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if value == "auto" or value is None or key == "beta":  # beta: method_overrides
            continue
        param = f"{where}.{key}"
        if not finite_number(value) or value <= 0:
            raise OpenAIError(
                400, f"{key} must be 'auto' or a positive number, not {shown(value)}", param=param
            )
        if key == "learning_rate_multiplier":
            training["learning_rate"] = float(value) * BASE_LEARNING_RATE
        elif value != int(value):
            raise OpenAIError(400, f"{key} must be a whole number, not {shown(value)}", param=param)
        else:
            training["epochs" if key == "n_epochs" else "batch_size"] = int(value)
    return training


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's metadata rules: up to 16 string pairs, keys ≤ 64 and values ≤ 512 chars."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS:
        raise OpenAIError(400, "metadata takes up to 16 key-value pairs", param="metadata")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise OpenAIError(
                400,
                "metadata keys are strings of up to 64 characters, values up to 512",
                param=f"metadata.{key}",
            )
    return dict(metadata)


def merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, dictionaries merged one level deep."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


def param_for(problem: FieldProblem, hyperparameters_at: str) -> str:
    """The request field (OpenAI's ``param``) a recipe problem is about."""
    field = problem.field
    if field in RECIPE_FIELD_PARAMS:
        return f"{hyperparameters_at}.{RECIPE_FIELD_PARAMS[field]}"
    if field == "training.seed":
        return "seed"
    if field in ("base_model", "init_from"):
        return "model"
    if field == "method.beta":
        return f"{hyperparameters_at}.beta"
    if field.startswith("dataset_ids"):
        return "training_file"
    if field.startswith("validation.dataset_ids"):
        return "validation_file"
    if field == "name":
        return "suffix"
    if field.startswith("integrations"):
        return field
    if field == "Idempotency-Key":
        return field
    return f"tunery.{field}"


# Responses -----------------------------------------------------------------------------


def stored_training(config: Mapping[str, Any]) -> TrainingConfig:
    """A stored run's training settings, defaults filled in for fields newer than the run."""
    return TrainingConfig.model_validate(config.get("training") or {})


def resolved_hyperparameters(
    config: Mapping[str, Any], *, epochs: int | None = None
) -> Hyperparameters:
    """The values a run trains with, in OpenAI's terms (never ``auto``); ``epochs``: the
    epochs it trains in when known (a step budget decides them, not ``training.epochs``)."""
    training = stored_training(config)
    return Hyperparameters(
        n_epochs=epochs or training.epochs,
        batch_size=training.batch_size,
        learning_rate_multiplier=round(training.learning_rate / BASE_LEARNING_RATE, 6),
    )


def method_object(config: Mapping[str, Any], *, epochs: int | None = None) -> Method:
    """The job's ``method``: supervised, or dpo with its beta, and the values it trains with
    (``epochs`` as for ``resolved_hyperparameters``)."""
    hyperparameters = resolved_hyperparameters(config, epochs=epochs)
    method = MethodSettings.model_validate(config.get("method") or {})
    if not method.preference:
        return Method(
            type="supervised", supervised=SupervisedMethod(hyperparameters=hyperparameters)
        )
    return Method(
        type="dpo",
        dpo=DpoMethod(
            hyperparameters=DpoHyperparameters(**hyperparameters.model_dump(), beta=method.dpo_beta)
        ),
    )


def started_from(config: Mapping[str, Any]) -> str:
    """The job's ``model``: the fine-tuned model (its run id) it continues, else the base."""
    return config.get("init_from") or config["base_model"]


def results_file_id(run_id: str) -> str:
    return f"{RESULTS_PREFIX}{run_id}"


def event_level(kind: str, data: Mapping[str, Any]) -> str:
    if kind == EventKind.STATUS and data.get("status") == RunStatus.FAILED:
        return "error"
    if kind == EventKind.STATUS and data.get("status") == RunStatus.RETRYING:
        return "warn"
    return "info"


def event_message(kind: str, data: Mapping[str, Any]) -> str:
    """The text of an event as OpenAI words its own (``Step 3/6: training loss=1.23``)."""
    if kind == EventKind.METRICS:
        total = data.get("total_steps")
        text = f"Step {data.get('step')}/{total if total else '?'}: training loss="
        return text + _number(data.get("loss")) + _rewards_text(data, "")
    if kind == EventKind.STATUS:
        text = f"Job status: {data.get('status')} ({data.get('phase')})"
        error = data.get("error")
        return f"{text}: {error.get('message')}" if isinstance(error, dict) else text
    if kind == EventKind.EVALUATION:
        total = data.get("total_steps")
        text = f"Step {data.get('step')}/{total if total else '?'}: validation loss="
        return text + _number(data.get("eval_loss")) + _rewards_text(data, "eval_")
    if kind == EventKind.PHASE:
        return f"Phase: {data.get('phase')}"
    if kind == EventKind.SAMPLES:
        return f"Sample answers from the trained model: {len(data.get('samples', []))}"
    return str(data.get("message", ""))


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _rewards_text(data: Mapping[str, Any], prefix: str) -> str:
    """A DPO run's reward margin and accuracy after its loss; "" for other runs."""
    margin, accuracy = data.get(f"{prefix}reward_margin"), data.get(f"{prefix}reward_accuracy")
    if margin is None and accuracy is None:
        return ""
    return f", reward margin={_number(margin)}, reward accuracy={_number(accuracy)}"


def _preference(data: Mapping[str, Any], prefix: str, renamed: str) -> dict[str, Any]:
    """A DPO run's metrics of ``data`` (``prefix`` + name) as ``renamed`` + name (``train_``
    or ``valid_``); none for SFT."""
    return {
        f"{renamed}{name}": data[f"{prefix}{name}"]
        for name in PREFERENCE_STEP_FIELDS
        if data.get(f"{prefix}{name}") is not None
    }


def metrics_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics event's ``data`` in OpenAI's names (plus tunery's own numbers; a DPO run's
    rewards as ``train_rewards_chosen``, ``train_reward_margin`` …)."""
    named = {
        "step": data.get("step"),
        "total_steps": data.get("total_steps"),
        "train_loss": data.get("loss"),
        "train_mean_token_accuracy": data.get("accuracy"),
        "learning_rate": data.get("learning_rate"),
        "epoch": data.get("epoch"),
        "trained_tokens": data.get("trained_tokens"),
        "grad_norm": data.get("grad_norm"),
    }
    return {**named, **_preference(data, "", "train_")}


def evaluation_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation event's ``data`` in OpenAI's names: the loss and mean token accuracy
    on the validation file after ``step`` (a DPO run: its rewards as ``valid_*``)."""
    return {
        "step": data.get("step"),
        "total_steps": data.get("total_steps"),
        "valid_loss": data.get("eval_loss"),
        "valid_mean_token_accuracy": data.get("eval_accuracy"),
        **_preference(data, "eval_", "valid_"),
    }


def checkpoint_steps(rows: list[dict[str, Any]], every: int, completed: bool) -> list[int]:
    """Steps with a saved checkpoint: each ``every`` steps, and the final step once done."""
    steps = [row["step"] for row in rows if row.get("step")]
    kept = [step for step in steps if step % max(every, 1) == 0]
    if completed and steps and steps[-1] not in kept:
        kept.append(steps[-1])
    return kept


def checkpoint_metrics(row: Mapping[str, Any]) -> CheckpointMetrics:
    """A step row (``history.step_rows``: the step's metrics, its evaluation if any)."""
    return CheckpointMetrics(
        step=row["step"],
        train_loss=row.get("loss"),
        train_mean_token_accuracy=row.get("accuracy"),
        valid_loss=row.get("eval_loss"),
        valid_mean_token_accuracy=row.get("eval_accuracy"),
        full_valid_loss=row.get("eval_loss"),
        full_valid_mean_token_accuracy=row.get("eval_accuracy"),
    )


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """The results file OpenAI attaches to a job: one line per step (``history.step_rows``),
    ``train_accuracy`` its mean token accuracy, validation columns on the steps evaluated
    after; a DPO run's rewards in columns of their own (``train_reward_margin``,
    ``valid_reward_accuracy`` …)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    preference = any(row.get("reward_margin") is not None for row in rows)
    extra = [f"{side}_{name}" for side in ("train", "valid") for name in PREFERENCE_STEP_FIELDS]
    writer.writerow(
        [
            "step",
            "train_loss",
            "train_accuracy",
            "valid_loss",
            "valid_mean_token_accuracy",
            *(extra if preference else []),
        ]
    )
    for row in rows:
        cells = [
            row.get("step"),
            _cell(row.get("loss")),
            _cell(row.get("accuracy")),
            _cell(row.get("eval_loss")),
            _cell(row.get("eval_accuracy")),
        ]
        if preference:
            cells += [
                _cell(row.get(f"{prefix}{name}"))
                for prefix in ("", "eval_")
                for name in PREFERENCE_STEP_FIELDS
            ]
        writer.writerow(cells)
    return out.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


def query_metadata(pairs: list[tuple[str, str]]) -> dict[str, str] | None:
    """``metadata[k]=v`` query parameters as a filter; ``metadata=null`` filters for none."""
    wanted: dict[str, str] = {}
    for key, value in pairs:
        if key == "metadata" and value == "null":
            return {}
        if key.startswith("metadata[") and key.endswith("]"):
            wanted[key[len("metadata[") : -1]] = value
    return wanted or None


def metadata_matches(metadata: dict[str, str] | None, wanted: dict[str, str] | None) -> bool:
    if wanted is None:
        return True
    if not wanted:
        return not metadata
    return all((metadata or {}).get(key) == value for key, value in wanted.items())
