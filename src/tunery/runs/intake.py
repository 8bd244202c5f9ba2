"""The one intake of a submission: where a run is validated, planned, estimated and created.

Every caller that makes a run goes through here — ``POST /api/v1/runs``, ``POST
/api/v1/runs/estimate``, ``/v1/fine_tuning/jobs`` and the demo seeding — and so does a
paused run that resumes (``requeue_paused``), so there is one answer to "where is a
submission validated": ``check_submission``. It parses the payload
once and reports every problem at once (ConfigError, HTTP 422): the recipe's schema, then
the checks against this server (datasets the account owns and of the kind the method trains
on, attestations, a tier the backend serves, a base model the server may load — a Hugging
Face model it has or can download —, credits for the first minute, validation data, the
completed run ``init_from`` starts from, the memory plan against the tier's card), then the
settings far outside what usually works, which the user accepts or not. A field
whose schema is wrong is not checked again. What passes comes back with its tier, its memory
plan and its estimate, each computed once.

``submit_run`` creates the run, its estimate and (for ``/v1``) its job row in **one
transaction** holding the database's write lock (``ControlPlane.exclusive``): a dataset
cannot be deleted between the check that it exists and the run that names it, concurrent
submissions cannot pass the queue cap together, and a retried submission with the same
``Idempotency-Key`` finds the first run. The datasets' shapes (rows, estimated tokens) are
read before the lock is taken: a large dataset's first read must not hold up every writer.

What the pipeline checks later is what only it can see: local files for ``tunery train``
(``pipeline.recipe.check_recipe``) and the loaded run against its real card with exact token
counts (``pipeline.card_fit``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.catalog.models import find as catalog_find
from tunery.db import Dataset, FineTuningJob, Run, now
from tunery.errors import ConfigError, FieldProblem, TuneryError, UnacceptedWarnings
from tunery.event_kinds import EventKind
from tunery.lifecycle import RunStatus
from tunery.phases import Phase
from tunery.pipeline.config import (
    AUTO_VALIDATION_RULE,
    MAX_DATASETS_PER_RUN,
    LoraSettings,
    RunRecipe,
    parse_recipe,
)
from tunery.pipeline.datasets import METHOD_DATASET_KIND, dataset_kind, kind_mismatch
from tunery.pipeline.divergence import unusual_settings
from tunery.pipeline.holdout import plan_holdout
from tunery.pipeline.load import hub_model_problem, parse_model_reference
from tunery.pipeline.memory import MemoryEstimate
from tunery.runs import billing, calibration, estimate, fit, hub, queries, store
from tunery.runs.data_shape import DataShape, stored_shape
from tunery.runs.plane import Conflict, ControlPlane, TooManyQueued
from tunery.runs.token_count import model_tokenizer
from tunery.tiers import TierSettings
from tunery.wire.rest import Problem, RunEstimate

HUB_CHECK_TTL_SECONDS = 300.0
"""How long an answer about a Hub model is reused: the live estimate asks on every edit."""
WARNINGS_HINT = (
    'if you mean it, submit again with accept_warnings: true (the studio\'s "Start anyway", '
    "tunery runs submit --accept-warnings)"
)
LOCAL_MODELS_ONLY = (
    "local base models must be in the server's models directory (setting local_models_dir); "
    "ask the server's admin to put the model there, or name a Hugging Face id"
)


class Purpose(StrEnum):
    SUBMIT = "submit"
    ESTIMATE = "estimate"
    """An estimate needs neither the attestations nor the balance: it says whether the
    balance covers the run (``covered``) instead of refusing it."""


@dataclass(frozen=True)
class Submission:
    """A payload that passed every check, as it will run."""

    recipe: RunRecipe
    """With ``base_model`` as the worker will load it (a local name made absolute)."""
    tier: TierSettings
    estimate: RunEstimate


@dataclass(frozen=True)
class JobFields:
    """What a ``/v1/fine_tuning/jobs`` request adds to its run (``db.FineTuningJob``)."""

    suffix: str | None
    validation_file: str | None
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class DataShapes:
    """The shapes of a payload's training and validation datasets, read before the lock."""

    training: DataShape
    validation: DataShape


Field = Callable[[str, Any], Any]
"""``field(name, default)``: a payload field's value, or ``default`` when its schema is broken."""


def check_submission(
    plane: ControlPlane,
    session: Session,
    account_id: str,
    payload: Any,
    *,
    purpose: Purpose = Purpose.SUBMIT,
    shapes: DataShapes | None = None,
    hub_problem: str | None = None,
    accept_warnings: bool = False,
    calibrate_now: bool = False,
) -> Submission:
    """Every reason the payload is blocked, at once (ConfigError); else the submission.

    ``shapes``: the datasets' shapes when the caller read them already (``read_shapes``,
    outside a write lock); else they are read here. ``hub_problem``: why the server could
    not download the Hub model the payload names (``hub_check``, asked outside the lock).
    ``calibrate_now``: a tier that has not benchmarked the model's shape does it now, before
    answering (outside any write lock only), instead of in the background.

    A submission whose settings are far outside what usually works (the estimate's
    ``warnings``) is refused with UnacceptedWarnings unless the payload says
    ``accept_warnings`` or the caller does (``accept_warnings``: the OpenAI API, which has
    no way to ask).
    """
    problems: list[FieldProblem] = []
    recipe: RunRecipe | None = None
    try:
        recipe = parse_recipe(payload)
    except ConfigError as error:
        problems.extend(error.problems)
    raw = payload if isinstance(payload, dict) else {}
    broken = {problem.field.split(".")[0] for problem in problems}

    def field(name: str, default: Any) -> Any:
        if recipe is not None:
            return getattr(recipe, name)
        return default if name in broken else raw.get(name, default)

    problems += _dataset_problems(session, account_id, field, broken)
    if purpose is Purpose.SUBMIT:
        attestations = recipe.attestations.model_dump() if recipe else field("attestations", {})
        if "attestations" not in broken and isinstance(attestations, dict):
            problems += _attestation_problems(attestations)
    tier, tier_problems = _tier(plane, field("gpu_tier", None), broken)
    problems += tier_problems
    base_model = field("base_model", None)
    local_model: str | None = None
    if "base_model" not in broken and isinstance(base_model, str):
        model_problems, local_model = _base_model(plane, base_model)
        problems += model_problems
        if not model_problems and local_model is None and hub_problem is not None:
            problems.append(FieldProblem("base_model", hub_problem))
    if purpose is Purpose.SUBMIT and tier is not None:
        problems += _credit_problems(session, account_id, tier)
    if recipe is not None:
        problems += _validation_data_problems(session, account_id, recipe)
        problems += _integration_problems(plane, recipe)
        if local_model is not None:
            recipe = recipe.model_copy(update={"base_model": local_model})
        problems += _method_problems(session, account_id, recipe)
    memory: MemoryEstimate | None = None
    checked = {problem.field.split(".")[0] for problem in problems}
    if recipe is not None and tier is not None and not checked & {"dataset_ids", "base_model"}:
        shapes = shapes or _stored_shapes(plane, session, account_id, recipe)
        try:
            memory = _memory_plan(recipe, tier, shapes.training)
        except ConfigError as error:
            hint = f"; {error.hint}" if error.hint else ""
            problems += [FieldProblem(p.field, f"{p.message}{hint}") for p in error.problems]
    if problems or recipe is None or tier is None or shapes is None:
        raise ConfigError(problems)
    estimated = estimate.compute_estimate(
        recipe,
        tier,
        shapes.training,
        shapes.validation,
        measured=estimate.measured_basis(
            session,
            tier.id,
            recipe.base_model,
            _parameters(recipe),
            devices=tier.devices,
            method=recipe.method.type,
        ),
        calibration=_calibration(plane, recipe, tier, shapes.training, now=calibrate_now),
        balance=billing.balance(session, account_id),
        memory=memory,
    )
    warnings = unusual_settings(
        recipe, trainable_share=fit.adapter_share(recipe), training_examples=estimated.examples
    )
    estimated.warnings = [Problem(field=w.field, message=w.message) for w in warnings]
    accepted = recipe.accept_warnings or accept_warnings
    if purpose is Purpose.SUBMIT and warnings and not accepted:
        raise UnacceptedWarnings(warnings, hint=WARNINGS_HINT)
    return Submission(recipe=recipe, tier=tier, estimate=estimated)


def _parameters(recipe: RunRecipe) -> int | None:
    catalog = catalog_find(recipe.base_model)
    shape = fit.model_shape(recipe.base_model)
    return catalog.parameters if catalog else (shape.parameters if shape else None)


def _calibration(
    plane: ControlPlane, recipe: RunRecipe, tier: TierSettings, data: DataShape, *, now: bool
) -> dict[str, Any] | None:
    """The tier's benchmark of the model's shape; when it has none yet and can measure one,
    it measures (``now``: before answering; else in the background, the estimate falling back
    on the tier's assumed TFLOPS meanwhile)."""
    if not calibration.measurable(plane, tier):
        return None
    catalog = catalog_find(recipe.base_model)
    limit = recipe.training.max_seq_length or (catalog.context_length if catalog else None)
    request = calibration.request_for(recipe, data, limit)
    if request is None:
        return None
    measured = calibration.cached(plane, tier, request)
    if measured is None and now:
        return calibration.measure(plane, tier, request)
    if measured is None:
        calibration.start(plane, tier, request)
    return measured


def submit_run(
    plane: ControlPlane,
    *,
    account_id: str,
    payload: Any,
    idempotency_key: str | None,
    job: JobFields | None = None,
) -> Run:
    """Queue a run (with its estimate, and its job row for ``/v1``), or return the run an
    earlier submission with the same key created.

    Raises ConfigError with every problem when the submission is blocked, or when the key
    was used before with a different payload (the job's fields included); TooManyQueued
    when the account already has ``max_queued_runs_per_account`` queued runs.
    """
    idempotency_key = idempotency_key or None  # an empty header names no key
    digest = payload_hash({"payload": payload, "job": job.__dict__ if job else None})
    shapes = read_shapes(plane, account_id, payload)
    hub_problem = hub_check(plane, payload)
    with plane.exclusive() as session:
        if idempotency_key:
            existing = session.scalar(
                select(Run).where(
                    Run.account_id == account_id, Run.idempotency_key == idempotency_key
                )
            )
            if existing is not None:
                _same_payload(existing, digest)
                return existing
        submission = check_submission(
            plane,
            session,
            account_id,
            payload,
            shapes=shapes,
            hub_problem=hub_problem,
            accept_warnings=job is not None,
        )
        _within_queue_cap(plane, session, account_id)
        run = store.create_run(
            session,
            account_id=account_id,
            name=submission.recipe.name,
            tier=submission.tier.id,
            config=submission.recipe.model_dump(mode="json"),
            estimate=submission.estimate.model_dump(mode="json"),
            idempotency_key=idempotency_key,
            payload_hash=digest if idempotency_key else None,
        )
        run.tags, run.note = submission.recipe.tags, submission.recipe.note
        for warning in submission.estimate.warnings:
            store.append_event(
                session,
                run.id,
                EventKind.LOG,
                {"message": f"submitted despite a warning: {warning.field}: {warning.message}"},
            )
        if job is not None:
            session.add(
                FineTuningJob(
                    run_id=run.id,
                    account_id=account_id,
                    suffix=job.suffix,
                    validation_file=job.validation_file,
                    job_metadata=job.metadata,
                )
            )
    plane.changed()
    return run


def requeue_paused(plane: ControlPlane, *, account_id: str, run_id: str) -> None:
    """Queue a paused run again, admitted as a submission is: its stored recipe checked
    against this server once more (its datasets still kept, its tier served, its base model,
    credits for the first minute, validation data, W&B, the memory plan) and the account's
    queue cap, under the write lock; its next attempt resumes from its checkpoint.

    Raises NotFound; Conflict when the run is not paused; ConfigError with every problem
    (the run stays paused, nothing lost); TooManyQueued past the cap.
    """
    with plane.sessions() as session:
        config = queries.get_run(session, account_id, run_id).config
    shapes = read_shapes(plane, account_id, config)
    hub_problem = hub_check(plane, config)
    with plane.exclusive() as session:
        run = queries.get_run(session, account_id, run_id)
        if run.status != RunStatus.PAUSED:
            raise Conflict(f"run {run_id} is {run.status}, not paused; nothing to resume")
        # Unusual settings were warned about, and accepted, when the run was submitted.
        check_submission(
            plane,
            session,
            account_id,
            run.config,
            shapes=shapes,
            hub_problem=hub_problem,
            accept_warnings=True,
        )
        _within_queue_cap(plane, session, account_id)
        store.move(
            session,
            run.id,
            expected=RunStatus.PAUSED,
            to=RunStatus.QUEUED,
            phase=Phase.QUEUED,
            pause_requested=False,
        )
        store.append_event(
            session,
            run.id,
            EventKind.LOG,
            {"message": "resumed: queued again; it continues from its checkpoint"},
        )
    plane.changed()


def estimate_submission(
    plane: ControlPlane, *, account_id: str, payload: Any, calibrate_now: bool = False
) -> RunEstimate:
    """What the payload would train, how long and at what price; creates nothing.

    ConfigError with every problem, as a submission (attestations and balance aside).
    ``calibrate_now``: see ``check_submission``."""
    shapes = read_shapes(plane, account_id, payload)
    hub_problem = hub_check(plane, payload)
    with plane.sessions() as session:
        return check_submission(
            plane,
            session,
            account_id,
            payload,
            purpose=Purpose.ESTIMATE,
            shapes=shapes,
            hub_problem=hub_problem,
            calibrate_now=calibrate_now,
        ).estimate


def hub_check(plane: ControlPlane, payload: Any) -> str | None:
    """Why the Hugging Face model outside the catalog the payload names could not be
    downloaded (None: it can, or the payload names no such model): asked before any lock is
    taken, since it may ask the Hub, and remembered for a few minutes."""
    base_model = payload.get("base_model") if isinstance(payload, dict) else None
    if not isinstance(base_model, str):
        return None
    try:
        reference = parse_model_reference(base_model.strip(), relative_dirs=False)
    except ConfigError:
        return None  # the checks say why
    # Catalog ids are real models by construction; a custom id may be made up.
    if reference.kind != "hub" or catalog_find(reference.name) is not None:
        return None
    if _has_config(Path(plane.settings.models_dir) / base_model):
        return None
    key = (reference.name, reference.revision)
    asked = plane.hub_checks.get(key)
    if asked is None or now() - asked[0] > HUB_CHECK_TTL_SECONDS:
        asked = (now(), hub_model_problem(reference))
        plane.hub_checks[key] = asked
    return asked[1]


def read_shapes(plane: ControlPlane, account_id: str, payload: Any) -> DataShapes | None:
    """The shapes of the datasets a payload names, read outside any write lock (each stored
    file once per digest). None when the payload does not name them well enough: the checks
    say why, and read them if it passes after all."""
    if not isinstance(payload, dict):
        return None
    training = _id_list(payload.get("dataset_ids"))
    validation = payload.get("validation")
    held = _id_list(validation.get("dataset_ids", [])) if isinstance(validation, dict) else []
    if training is None or held is None:
        return None
    base_model = payload.get("base_model")
    local_model = _base_model(plane, base_model)[1] if isinstance(base_model, str) else None
    tokenizer = (
        model_tokenizer(local_model or base_model, plane.settings.models_dir)
        if isinstance(base_model, str)
        else None
    )
    with plane.sessions() as session:
        datasets = owned_datasets(session, account_id, training)
        separate = owned_datasets(session, account_id, held)
    try:
        return DataShapes(
            stored_shape(plane.datasets_dir, datasets, tokenizer),
            stored_shape(plane.datasets_dir, separate, tokenizer),
        )
    except (OSError, TuneryError):
        return None  # deleted meanwhile: the checks under the lock say so


def _id_list(value: Any) -> list[str] | None:
    if not isinstance(value, list) or len(value) > MAX_DATASETS_PER_RUN:
        return None
    return value if all(isinstance(item, str) for item in value) else None


def _stored_shapes(
    plane: ControlPlane, session: Session, account_id: str, recipe: RunRecipe
) -> DataShapes:
    tokenizer = model_tokenizer(recipe.base_model, plane.settings.models_dir)
    return DataShapes(
        stored_shape(
            plane.datasets_dir,
            owned_datasets(session, account_id, recipe.dataset_ids),
            tokenizer,
        ),
        stored_shape(
            plane.datasets_dir,
            owned_datasets(session, account_id, recipe.validation.dataset_ids),
            tokenizer,
        ),
    )


def owned_datasets(session: Session, account_id: str, dataset_ids: list[str]) -> list[Dataset]:
    """The account's datasets among ``dataset_ids``, in that order (unknown ids left out)."""
    if not dataset_ids:
        return []
    found = {
        dataset.id: dataset
        for dataset in session.scalars(
            select(Dataset).where(Dataset.id.in_(dataset_ids), Dataset.account_id == account_id)
        )
    }
    return [found[dataset_id] for dataset_id in dataset_ids if dataset_id in found]


# The checks, each returning its problems -------------------------------------------------


def _dataset_problems(
    session: Session, account_id: str, field: Field, broken: set[str]
) -> list[FieldProblem]:
    problems = []
    if field("datasets", []):
        problems.append(
            FieldProblem(
                "datasets",
                "the server takes uploaded dataset ids: upload with POST /datasets "
                "and list them under dataset_ids",
            )
        )
    dataset_ids = field("dataset_ids", [])
    if "dataset_ids" in broken or not isinstance(dataset_ids, list):
        return problems
    if not dataset_ids:
        problems.append(FieldProblem("dataset_ids", "list at least one uploaded dataset id"))
    owned = {dataset.id for dataset in owned_datasets(session, account_id, dataset_ids)}
    problems += [
        FieldProblem(f"dataset_ids.{index}", f"unknown dataset id {dataset_id!r}")
        for index, dataset_id in enumerate(dataset_ids)
        if dataset_id not in owned
    ]
    return problems


def _attestation_problems(attestations: dict[str, Any]) -> list[FieldProblem]:
    problems = []
    if attestations.get("dataset_rights") is not True:
        problems.append(
            FieldProblem(
                "attestations.dataset_rights",
                "confirm that you hold the rights to train on the data",
            )
        )
    if attestations.get("model_license") is not True:
        problems.append(
            FieldProblem(
                "attestations.model_license", "confirm that you accept the base model's license"
            )
        )
    return problems


def _tier(
    plane: ControlPlane, named: Any, broken: set[str]
) -> tuple[TierSettings | None, list[FieldProblem]]:
    """The run's tier (the one named, else the backend's default), or why there is none."""
    if "gpu_tier" in broken:
        return None, []
    known = ", ".join(tier.id for tier in plane.settings.tiers) or "none"
    tier_id = named or plane.workers.default_tier
    if tier_id is None:
        return None, [
            FieldProblem(
                "gpu_tier", f"name a tier: this server has no default one (tiers: {known})"
            )
        ]
    tier = plane.settings.tier(str(tier_id))
    if tier is None:
        return None, [FieldProblem("gpu_tier", f"unknown tier {tier_id!r}; tiers: {known}")]
    if not plane.workers.serves(tier.id):
        return None, [FieldProblem("gpu_tier", f"no node serves tier {tier.id!r}")]
    return tier, []


def _base_model(plane: ControlPlane, value: str) -> tuple[list[FieldProblem], str | None]:
    """Problems of a base model this server may use, and the absolute path of a local one.

    Local models come only from the models directory, so no answer tells anything about
    other server directories: an absolute path (or ``~``) outside it is refused before the
    filesystem is asked, and a relative name is looked up in it alone — never in the
    server's working directory. A relative name it does not hold is a Hugging Face id.
    """
    value = value.strip()
    root = Path(os.path.abspath(plane.settings.models_dir))
    local: str | None = None
    if value.startswith(("/", "~")):
        if not _in_models_dir(root, value):
            return [FieldProblem("base_model", LOCAL_MODELS_ONLY)], None
    elif value.startswith("."):
        candidate = root / value
        if ".." in Path(value).parts or not _has_config(candidate):
            return [FieldProblem("base_model", LOCAL_MODELS_ONLY)], None
        local = os.path.abspath(candidate)
    elif value and ".." not in Path(value).parts and _has_config(root / value):
        local = os.path.abspath(root / value)
    try:
        parse_model_reference(local or value, relative_dirs=False)
    except ConfigError as error:
        return list(error.problems), None
    return [], local


def _in_models_dir(root: Path, value: str) -> bool:
    """Whether ``value`` names a path below the models directory without walking up.

    Compared as written (symlinks the admin placed there are allowed), with ``..`` refused
    so the written path cannot leave it.
    """
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        return False
    if ".." in path.parts:
        return False
    absolute = Path(os.path.abspath(path))
    return absolute != root and absolute.is_relative_to(root)


def _has_config(directory: Path) -> bool:
    try:
        return (directory / "config.json").is_file()
    except (OSError, ValueError):
        return False


def _credit_problems(session: Session, account_id: str, tier: TierSettings) -> list[FieldProblem]:
    price = tier.credits_per_minute
    available = billing.balance(session, account_id)
    if price > 0 and available < price:
        return [
            FieldProblem(
                "credits",
                f"the balance ({available:.2f} credits) does not cover the first "
                f"minute on {tier.id} ({price:g} credits/min)",
            )
        ]
    return []


def _validation_data_problems(
    session: Session, account_id: str, recipe: RunRecipe
) -> list[FieldProblem]:
    """``validation`` on a server: uploaded ids the account owns, no local files, and
    held-out rows for early stopping when the default split is relied on."""
    problems = []
    if recipe.validation.datasets:
        problems.append(
            FieldProblem(
                "validation.datasets",
                "the server takes uploaded dataset ids: list them under validation.dataset_ids",
            )
        )
    wanted = [*recipe.validation.dataset_ids, *recipe.dataset_ids]
    rows = {dataset.id: dataset.rows for dataset in owned_datasets(session, account_id, wanted)}
    problems += [
        FieldProblem(f"validation.dataset_ids.{index}", f"unknown dataset id {dataset_id!r}")
        for index, dataset_id in enumerate(recipe.validation.dataset_ids)
        if dataset_id not in rows
    ]
    total = sum(rows.get(dataset_id, 0) for dataset_id in recipe.dataset_ids)
    # Every row counted as a chat row: the sample prompts are then as many as can be held.
    held = plan_holdout(
        total, total, custom_prompts=bool(recipe.samples.prompts), validation=recipe.validation
    ).validation
    if recipe.early_stopping.patience and not recipe.validation.separate and held == 0:
        problems.append(
            FieldProblem(
                "early_stopping.patience",
                f"needs validation data, and {total} rows hold out none (the default split "
                f"holds out {AUTO_VALIDATION_RULE}): set validation.split or "
                "validation.dataset_ids",
            )
        )
    return problems


def _method_problems(session: Session, account_id: str, recipe: RunRecipe) -> list[FieldProblem]:
    """What the method trains on: datasets of its kind (chat rows for sft, preference pairs
    for dpo), and the adapter ``init_from`` starts from."""
    method = recipe.method.type
    problems = []
    for field, ids in (
        ("dataset_ids", recipe.dataset_ids),
        ("validation.dataset_ids", recipe.validation.dataset_ids),
    ):
        owned = {dataset.id: dataset for dataset in owned_datasets(session, account_id, ids)}
        for index, dataset_id in enumerate(ids):
            dataset = owned.get(dataset_id)
            kind = dataset_kind(dataset.format) if dataset is not None else None
            if dataset is not None and kind != METHOD_DATASET_KIND[method]:
                problems.append(
                    FieldProblem(
                        f"{field}.{index}",
                        f"{dataset_id} {kind_mismatch(str(kind), dataset.format, method)}",
                    )
                )
    return problems + _init_from_problems(session, account_id, recipe)


def _init_from_problems(session: Session, account_id: str, recipe: RunRecipe) -> list[FieldProblem]:
    """``init_from`` names a completed run of the account whose adapter is still in the Hub
    and has this run's shape: the same base model, LoRA rank, alpha and target modules."""
    source_id = recipe.init_from
    if source_id is None:
        return []
    if not recipe.init_from_run:
        return [
            FieldProblem(
                "init_from",
                "name one of your completed runs by its id (run_...); the server takes no paths",
            )
        ]
    source = session.scalar(select(Run).where(Run.id == source_id, Run.account_id == account_id))
    if source is None:
        return [FieldProblem("init_from", f"unknown run {source_id!r}")]
    if source.status != RunStatus.COMPLETED.value:
        return [
            FieldProblem("init_from", f"{source_id} is {source.status}; start from a completed run")
        ]
    if hub.adapter_entry(session, account_id, source_id) is None:
        return [
            FieldProblem("init_from", f"{source_id}'s adapter is gone (its Hub entry was deleted)")
        ]
    problems = []
    trained_on = source.config.get("base_model")
    if trained_on != recipe.base_model:
        problems.append(
            FieldProblem(
                "base_model",
                f"is {recipe.base_model!r}; {source_id} was trained on {trained_on!r}, and its "
                "adapter fits that model only",
            )
        )
    theirs = LoraSettings.model_validate(source.config.get("lora") or {})
    for name in ("rank", "alpha", "target_modules"):
        ours, saved = getattr(recipe.lora, name), getattr(theirs, name)
        if ours != saved:
            problems.append(
                FieldProblem(
                    f"lora.{name}",
                    f"is {ours!r}; the adapter of {source_id} has {saved!r} (a run continues "
                    "an adapter with its shape)",
                )
            )
    return problems


def _memory_plan(recipe: RunRecipe, tier: TierSettings, data: DataShape) -> MemoryEstimate | None:
    """The planned peak on ``tier``'s card (None where runs are not checked); raises
    ConfigError naming the setting that would fit when it does not."""
    if recipe.lora.quantize_base != "none" and tier.gpus_per_attempt == 0:
        raise ConfigError.single(
            "lora.quantize_base",
            f"{recipe.lora.quantize_base} needs a CUDA GPU (bitsandbytes), and tier "
            f"{tier.id} has none; choose a GPU tier, or set lora.quantize_base to none",
        )
    return fit.peak_memory(recipe, tier, data)


def payload_hash(payload: Any) -> str:
    """A digest of the payload's JSON, key order aside: what an ``Idempotency-Key`` names."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _same_payload(existing: Run, digest: str) -> None:
    # Runs created before payloads were hashed have none: they keep answering as before.
    if existing.idempotency_payload_hash not in (None, digest):
        raise ConfigError.single(
            "Idempotency-Key",
            f"was already used for a different submission (run {existing.id})",
            hint="use a new key for a new submission; reuse a key only to retry the same one",
        )


def _within_queue_cap(plane: ControlPlane, session: Session, account_id: str) -> None:
    cap = plane.settings.max_queued_runs_per_account
    queued = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.account_id == account_id, Run.status == RunStatus.QUEUED.value)
    )
    if (queued or 0) >= cap:
        raise TooManyQueued(
            f"the account already has {queued} queued runs, the most this server allows",
            hint="wait for some to start, or cancel some (setting max_queued_runs_per_account)",
        )


def _integration_problems(plane: ControlPlane, recipe: RunRecipe) -> list[FieldProblem]:
    """W&B only where the server has it configured (a key, or offline mode) and installed."""
    if not recipe.integrations:
        return []
    if plane.settings.wandb.access() is None:
        return [
            FieldProblem(
                "integrations.0.type",
                "W&B is not configured on this server: its admin sets WANDB_API_KEY for the "
                "server (or wandb.api_key in tunery.yaml), or wandb.mode: offline",
            )
        ]
    if importlib.util.find_spec("wandb") is None:
        return [
            FieldProblem(
                "integrations.0.type",
                "W&B is configured but the wandb package is not installed on this server "
                "(pip install 'tunery[wandb]')",
            )
        ]
    return []
