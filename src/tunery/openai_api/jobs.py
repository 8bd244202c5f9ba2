"""``/v1/fine_tuning/jobs``: a job is a tunery run (same id) plus what OpenAI adds to it.

Every run of the account is a job, also those submitted from the studio or the CLI; a job
created here additionally records its suffix, validation file and metadata. Creating one
submits a run through the one submission intake (``runs.intake``), so it is checked,
estimated and billed like any other.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from tunery.db import FineTuningJob, Run, now
from tunery.errors import ConfigError, TuneryError
from tunery.lifecycle import TERMINAL, RunStatus
from tunery.openai_api import mapping
from tunery.openai_api.objects import (
    FineTuningJob as JobObject,
)
from tunery.openai_api.objects import (
    JobError,
    OpenAIError,
    TuneryJobState,
    openai_error,
    page_of,
)
from tunery.pipeline.config import MAX_SEED, RUN_ID_PATTERN, RUN_NAME_PATTERN
from tunery.runs import intake, pause, queries, settle
from tunery.runs.plane import Conflict, ControlPlane, NotFound
from tunery.wire import model_names

CREATE_FIELDS = frozenset(
    {
        "model",
        "training_file",
        "validation_file",
        "suffix",
        "seed",
        "metadata",
        "method",
        "hyperparameters",
        "integrations",
        "tunery",
    }
)


def create_job(
    plane: ControlPlane, account_id: str, body: Any, *, idempotency_key: str | None
) -> JobObject:
    """Submit the run a job request describes; OpenAIError (400/429) when it is refused.

    The request is translated into a recipe here; the recipe is checked, planned, estimated
    and created with its job row by the one submission intake (``runs.intake``)."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise OpenAIError(400, f"unknown parameter {unknown[0]!r}", param=unknown[0])
    model = _required_text(body, "model")
    training_file = _required_text(body, "training_file")
    requested = mapping.requested_method(body)
    where = requested.where
    overrides = mapping.training_overrides(requested.hyperparameters, where)
    metadata = mapping.check_metadata(body.get("metadata"))
    suffix = _suffix(body.get("suffix"))
    extra = body.get("tunery", {})
    if not isinstance(extra, dict):
        raise OpenAIError(400, "tunery must be an object of recipe sections", param="tunery")
    validation_file = body.get("validation_file")
    if validation_file is not None and not isinstance(validation_file, str):
        raise OpenAIError(400, "validation_file must be a file id", param="validation_file")
    payload = mapping.merged(
        {
            "name": suffix or mapping.DEFAULT_JOB_NAME,
            "base_model": model,
            "dataset_ids": [training_file],
            # Creating a job through the API states what the studio's checkboxes state, as
            # OpenAI's own terms do for its API; the tunery object may still say otherwise.
            "attestations": {"dataset_rights": True, "model_license": True},
            # OpenAI reports valid_loss on the validation file: tunery evaluates on it.
            **({"validation": {"dataset_ids": [validation_file]}} if validation_file else {}),
            # W&B: the same shape as the recipe's, checked by the intake.
            **({"integrations": body["integrations"]} if body.get("integrations") else {}),
        },
        extra,
    )
    method = mapping.method_overrides(requested)
    if method:
        payload["method"] = {**_section(payload, "method"), **method}
    source = _fine_tuned_source(plane, account_id, model)
    if source is not None:
        # A fine-tuned model continues: its base, its adapter (and so its LoRA shape).
        payload["init_from"] = source.id
        payload["base_model"] = source.config["base_model"]
        payload["lora"] = {**(source.config.get("lora") or {}), **_section(payload, "lora")}
    training = payload.get("training", {})
    if not isinstance(training, dict):
        raise OpenAIError(400, "tunery.training must be an object", param="tunery.training")
    training = {**training, **overrides}
    training["seed"] = _seed(body.get("seed"), training.get("seed"), idempotency_key)
    if validation_file is not None and "eval_every_steps" not in training:
        # OpenAI evaluates along the way: at every checkpoint, so each has its numbers.
        training["eval_every_steps"] = training.get(
            "checkpoint_every_steps", mapping.DEFAULT_CHECKPOINT_EVERY
        )
    payload["training"] = training
    try:
        run = intake.submit_run(
            plane,
            account_id=account_id,
            payload=payload,
            idempotency_key=idempotency_key,
            job=intake.JobFields(suffix=suffix, validation_file=validation_file, metadata=metadata),
        )
    except ConfigError as error:
        raise _refusal(error, where) from None
    except TuneryError as error:
        raise openai_error(error) from None
    return get_job(plane, account_id, run.id)


def _section(payload: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = payload.get(name) or {}
    if not isinstance(value, dict):
        raise OpenAIError(400, f"tunery.{name} must be an object", param=f"tunery.{name}")
    return value


def _fine_tuned_source(plane: ControlPlane, account_id: str, model: str) -> Run | None:
    """The account's run a ``model`` naming a fine-tuned model (``ft:…:RUN_ID`` or the run
    id) continues; None for a base model. OpenAIError 400 for a fine-tuned name that is not
    one of the account's runs; whether it can be continued is the intake's to say."""
    if not (model.startswith("ft:") or re.match(RUN_ID_PATTERN, model)):
        return None
    with plane.sessions() as session:
        run = session.scalar(
            select(Run).where(
                Run.id == model_names.run_id_of_model(model), Run.account_id == account_id
            )
        )
    if run is None:
        raise OpenAIError(
            400,
            f"model {model!r} is not one of your fine-tuned models",
            param="model",
            code="model_not_found",
        )
    return run


def _required_text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise OpenAIError(400, f"missing required parameter {name!r}", param=name)
    return value


def _suffix(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(RUN_NAME_PATTERN, value):
        raise OpenAIError(
            400,
            "suffix takes up to 64 letters, digits, '.', '_' and '-' (starting with a "
            "letter or digit)",
            param="suffix",
        )
    return value


def _seed(given: Any, from_extra: Any, idempotency_key: str | None) -> int:
    if given is None and from_extra is not None:
        return from_extra
    if given is None:
        # A retried request (same Idempotency-Key) must send the same payload, seed included.
        if idempotency_key:
            return int(hashlib.sha256(idempotency_key.encode()).hexdigest(), 16) % 2**31
        return secrets.randbelow(2**31)
    if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= MAX_SEED:
        raise OpenAIError(400, f"seed must be a whole number from 0 to {MAX_SEED}", param="seed")
    return given


def _refusal(error: ConfigError, where: str) -> OpenAIError:
    """Every problem of a refused submission in one message; ``param`` names the first."""
    if all(problem.field == "credits" for problem in error.problems):
        return OpenAIError(429, error.problems[0].message, code="insufficient_quota")
    first = error.problems[0]
    if first.field.startswith(("dataset_ids", "validation.dataset_ids")):
        param = mapping.param_for(first, where)
        return OpenAIError(
            400, f"invalid {param}: {first.message}", param=param, code="invalid_file"
        )
    message = "; ".join(
        f"{mapping.param_for(problem, where)}: {problem.message}" for problem in error.problems
    )
    return OpenAIError(400, message, param=mapping.param_for(error.problems[0], where))


# Reading -------------------------------------------------------------------------------


def owned_run(session: Session, account_id: str, job_id: str) -> Run:
    try:
        return queries.get_run(session, account_id, job_id)
    except NotFound:
        raise OpenAIError(
            404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id"
        ) from None


def job_object(run: Run, extra: FineTuningJob | None, position: int | None, at: float) -> JobObject:
    """A run as OpenAI's job object, from rows already read."""
    config = run.config
    metrics = run.metrics or {}
    epochs = _epochs(run, metrics)
    hyperparameters = mapping.resolved_hyperparameters(config, epochs=epochs)
    completed = run.status == RunStatus.COMPLETED
    eta = metrics.get("eta_seconds")
    error = run.error if run.status == RunStatus.FAILED and run.error else None
    return JobObject(
        id=run.id,
        created_at=int(run.created_at),
        error=JobError(code=error["code"], message=error["message"]) if error else None,
        fine_tuned_model=model_names.fine_tuned_model_name(
            config["base_model"], run.account_id, run.name, run.id
        )
        if completed
        else None,
        finished_at=int(run.finished_at) if run.finished_at else None,
        hyperparameters=hyperparameters,
        model=mapping.started_from(config),
        organization_id=run.account_id,
        result_files=[mapping.results_file_id(run.id)] if completed else [],
        seed=mapping.stored_training(config).seed,
        status=mapping.job_status(run.status, run.phase),
        trained_tokens=metrics.get("trained_tokens") if run.status in TERMINAL else None,
        training_file=(config.get("dataset_ids") or [""])[0],
        validation_file=extra.validation_file if extra else None,
        estimated_finish=int(at + eta)
        if run.status == RunStatus.TRAINING and isinstance(eta, int | float)
        else None,
        metadata=extra.job_metadata if extra else None,
        integrations=config.get("integrations") or None,
        method=mapping.method_object(config, epochs=epochs),
        user_provided_suffix=extra.suffix if extra else None,
        tunery=TuneryJobState(
            run_id=run.id,
            status=run.status,
            phase=run.phase,
            queue_position=position,
            hub_entry_id=run.hub_entry_id,
            validation="evaluated" if extra and extra.validation_file else None,
            estimate=run.estimate,
        ),
    )


def _epochs(run: Run, metrics: dict[str, Any]) -> int | None:
    """The epochs the run trained in once it ended (fewer when it finished or stopped
    early), else those its step budget plans, measured or estimated."""
    if run.status in TERMINAL and isinstance(metrics.get("epoch"), int | float):
        return max(1, math.ceil(metrics["epoch"]))
    return metrics.get("epochs") or (run.estimate or {}).get("epochs")


def _objects(plane: ControlPlane, session: Session, runs: list[Run]) -> list[JobObject]:
    ids = [run.id for run in runs]
    extras = {
        row.run_id: row
        for row in session.scalars(select(FineTuningJob).where(FineTuningJob.run_id.in_(ids)))
    }
    positions = queries.queue_positions(plane, session, runs)
    at = now()
    return [job_object(run, extras.get(run.id), positions.get(run.id), at) for run in runs]


def get_job(plane: ControlPlane, account_id: str, job_id: str) -> JobObject:
    with plane.sessions() as session:
        return _objects(plane, session, [owned_run(session, account_id, job_id)])[0]


def list_jobs(
    plane: ControlPlane,
    account_id: str,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
) -> dict[str, Any]:
    """The account's jobs, newest first, ``limit`` of them after the job ``after``."""
    with plane.sessions() as session:
        query = select(Run).where(Run.account_id == account_id)
        if after:
            cursor = session.scalar(
                select(Run).where(Run.id == after, Run.account_id == account_id)
            )
            if cursor is None:
                raise OpenAIError(400, f"unknown cursor {after!r}", param="after")
            query = query.where(
                or_(
                    Run.created_at < cursor.created_at,
                    and_(Run.created_at == cursor.created_at, Run.id < cursor.id),
                )
            )
        runs = session.scalars(query.order_by(Run.created_at.desc(), Run.id.desc()))
        extras = {
            row.run_id: row.job_metadata
            for row in session.scalars(
                select(FineTuningJob).where(FineTuningJob.account_id == account_id)
            )
        }
        picked: list[Run] = []
        for run in runs:
            if mapping.metadata_matches(extras.get(run.id), metadata):
                picked.append(run)
                if len(picked) > limit:
                    break
        items = _objects(plane, session, picked[:limit])
    return page_of(items, has_more=len(picked) > limit)


def pause_job(plane: ControlPlane, account_id: str, job_id: str) -> JobObject:
    """Pause the job's run (``runs.pause``; idempotent); 409 once it ended."""
    try:
        pause.pause_run(plane, account_id=account_id, run_id=job_id)
    except NotFound:
        raise _no_such_job(job_id) from None
    except Conflict as error:
        raise OpenAIError(409, error.message, code="job_not_pausable") from None
    return get_job(plane, account_id, job_id)


def resume_job(plane: ControlPlane, account_id: str, job_id: str) -> JobObject:
    """Resume the job's paused run (``runs.pause.resume_run``, through the intake); 409 when
    it is not paused, 400 or 429 naming what the intake refuses (a training file deleted
    meanwhile, the balance)."""
    try:
        pause.resume_run(plane, account_id=account_id, run_id=job_id)
    except NotFound:
        raise _no_such_job(job_id) from None
    except Conflict as error:
        raise OpenAIError(409, error.message, code="job_not_paused") from None
    except ConfigError as error:
        # Resumed through the intake: what would refuse the job now refuses its resume.
        raise _refusal(error, "method.supervised.hyperparameters") from None
    except TuneryError as error:
        raise openai_error(error) from None
    return get_job(plane, account_id, job_id)


def _no_such_job(job_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")


def cancel_job(plane: ControlPlane, account_id: str, job_id: str) -> JobObject:
    """Cancel the job's run (idempotent); 409 once it succeeded or failed."""
    try:
        settle.cancel_run(plane, account_id=account_id, run_id=job_id)
    except NotFound:
        raise OpenAIError(
            404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id"
        ) from None
    except Conflict as error:
        raise OpenAIError(409, error.message, code="job_not_cancellable") from None
    return get_job(plane, account_id, job_id)
