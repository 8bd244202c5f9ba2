"""Submission: every reason a run is blocked, at once; then a ``queued`` run.

Schema problems (types, ranges, unknown fields) and the checks against this server
(datasets, attestations, tier, base model, credits) are reported together in one
ConfigError (HTTP 422); nothing is created or charged then. A field whose schema is wrong is
not checked again.

The checks and the insert run in one transaction that holds the database's write lock
(``ControlPlane.exclusive``): a dataset cannot be deleted between the check that it exists
and the run that names it, and concurrent submissions cannot pass the queue cap together.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Dataset, Run
from tunery.errors import ConfigError, FieldProblem
from tunery.lifecycle import RunStatus
from tunery.pipeline.config import RunRecipe, parse_recipe
from tunery.pipeline.holdout import plan_holdout
from tunery.pipeline.load import parse_model_reference
from tunery.runs import billing, fit, store
from tunery.runs.data_shape import DataShape, stored_shape
from tunery.runs.plane import ControlPlane, TooManyQueued

LOCAL_MODELS_ONLY = (
    "local base models must be in the server's models directory (setting local_models_dir); "
    "ask the server's admin to put the model there, or name a Hugging Face id"
)

Field = Callable[[str, Any], Any]
"""``field(name, default)``: a payload field's value, or ``default`` when its schema is broken."""


def default_tier(plane: ControlPlane) -> str:
    return plane.settings.nodes[0].tier


def validate_submission(
    plane: ControlPlane,
    session: Session,
    account_id: str,
    payload: Any,
    *,
    data: DataShape | None = None,
) -> tuple[RunRecipe, str]:
    """Every reason a submission is blocked, at once; returns the recipe and its tier.

    ``data``: the shape of the payload's datasets when the caller read it already (outside
    a write lock); else it is read here when the memory check needs it.
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
    attestations = recipe.attestations.model_dump() if recipe else field("attestations", {})
    if "attestations" not in broken and isinstance(attestations, dict):
        problems += _attestation_problems(attestations)
    tier = str(field("gpu_tier", None) or default_tier(plane))
    if "gpu_tier" not in broken:
        problems += _tier_problems(plane, tier)
    base_model = field("base_model", None)
    if "base_model" not in broken and isinstance(base_model, str):
        problems += _base_model_problems(plane, base_model)
    problems += _credit_problems(plane, session, account_id, tier)
    if recipe is not None:
        problems += validation_data_problems(session, account_id, recipe)
    checked = {problem.field.split(".")[0] for problem in problems}
    if recipe is not None and not checked & {"dataset_ids", "gpu_tier", "base_model"}:
        problems += _memory_problems(plane, session, account_id, recipe, tier, data)
    if problems or recipe is None:
        raise ConfigError(problems)
    return recipe, tier


def validation_data_problems(
    session: Session, account_id: str, recipe: RunRecipe
) -> list[FieldProblem]:
    """The server's checks of ``validation``: uploaded ids the account owns, no local files,
    and held-out rows for early stopping when the default split is relied on."""
    problems = []
    if recipe.validation.datasets:
        problems.append(
            FieldProblem(
                "validation.datasets",
                "the server takes uploaded dataset ids: list them under validation.dataset_ids",
            )
        )
    wanted = [*recipe.validation.dataset_ids, *recipe.dataset_ids]
    rows = dict(
        session.execute(
            select(Dataset.id, Dataset.rows).where(
                Dataset.id.in_(wanted), Dataset.account_id == account_id
            )
        ).all()
    )
    for index, dataset_id in enumerate(recipe.validation.dataset_ids):
        if dataset_id not in rows:
            problems.append(
                FieldProblem(
                    f"validation.dataset_ids.{index}", f"unknown dataset id {dataset_id!r}"
                )
            )
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
                "needs 200 rows or more): set validation.split or validation.dataset_ids",
            )
        )
    return problems


def _memory_problems(
    plane: ControlPlane,
    session: Session,
    account_id: str,
    recipe: RunRecipe,
    tier_id: str,
    data: DataShape | None,
) -> list[FieldProblem]:
    tier = plane.settings.tier(tier_id)
    if tier is None:
        return []
    if recipe.lora.quantize_base != "none" and tier.gpus_per_attempt == 0:
        return [
            FieldProblem(
                "lora.quantize_base",
                f"{recipe.lora.quantize_base} needs a CUDA GPU (bitsandbytes), and tier "
                f"{tier.id} has none; choose a GPU tier, or set lora.quantize_base to none",
            )
        ]
    if tier.memory_gib is None:
        return []
    if data is None:
        data = stored_shape(
            plane.datasets_dir, owned_datasets(session, account_id, recipe.dataset_ids)
        )
    return fit.memory_problems(recipe, tier, data)


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


def _payload_data_shape(plane: ControlPlane, account_id: str, payload: Any) -> DataShape | None:
    """The shape of the datasets a payload names, read before the write lock is taken: a
    large dataset's first read must not hold up every other writer. None when the memory
    check will not need it (a tier without a card memory) or the payload is malformed."""
    if not isinstance(payload, dict):
        return None
    tier = plane.settings.tier(str(payload.get("gpu_tier") or default_tier(plane)))
    dataset_ids = payload.get("dataset_ids")
    if tier is None or tier.memory_gib is None:
        return None
    if not isinstance(dataset_ids, list) or not all(isinstance(i, str) for i in dataset_ids):
        return None
    with plane.sessions() as session:
        datasets = owned_datasets(session, account_id, dataset_ids)
    try:
        return stored_shape(plane.datasets_dir, datasets)
    except (OSError, ConfigError):
        return None  # deleted meanwhile: the checks under the lock say so


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
    wanted = [str(dataset_id) for dataset_id in dataset_ids]
    owned = set(
        session.scalars(
            select(Dataset.id).where(Dataset.id.in_(wanted), Dataset.account_id == account_id)
        )
    )
    for index, dataset_id in enumerate(dataset_ids):
        if str(dataset_id) not in owned:
            problems.append(
                FieldProblem(f"dataset_ids.{index}", f"unknown dataset id {dataset_id!r}")
            )
    return problems


def _base_model_problems(plane: ControlPlane, base_model: str) -> list[FieldProblem]:
    """A base model this server can use; a local one only from the allow-listed directory.

    A path outside it is refused before the filesystem is asked, so the answer says
    nothing about which server directories exist.
    """
    value = base_model.strip()
    if value.startswith(("/", ".", "~")) and not _in_models_dir(plane, value):
        return [FieldProblem("base_model", LOCAL_MODELS_ONLY)]
    try:
        reference = parse_model_reference(base_model)
    except ConfigError as error:
        return list(error.problems)
    if reference.kind == "local" and not _in_models_dir(plane, value):
        return [FieldProblem("base_model", LOCAL_MODELS_ONLY)]
    return []


def _in_models_dir(plane: ControlPlane, value: str) -> bool:
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
    root = Path(os.path.abspath(plane.settings.models_dir))
    absolute = Path(os.path.abspath(path))
    return absolute != root and absolute.is_relative_to(root)


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


def _tier_problems(plane: ControlPlane, tier: str) -> list[FieldProblem]:
    if plane.settings.tier(tier) is None:
        known = ", ".join(t.id for t in plane.settings.tiers)
        return [FieldProblem("gpu_tier", f"unknown tier {tier!r}; tiers: {known}")]
    # A cluster's tier may gain nodes (an autoscaler, a node joining): its runs wait.
    local = plane.settings.cluster.kind == "local"
    if local and not any(node.tier == tier for node in plane.settings.nodes):
        return [FieldProblem("gpu_tier", f"no node serves tier {tier!r}")]
    return []


def _credit_problems(
    plane: ControlPlane, session: Session, account_id: str, tier: str
) -> list[FieldProblem]:
    tier_settings = plane.settings.tier(tier)
    price = tier_settings.credits_per_minute if tier_settings else 0.0
    available = billing.balance(session, account_id)
    if price > 0 and available < price:
        return [
            FieldProblem(
                "credits",
                f"the balance ({available:.2f} credits) does not cover the first "
                f"minute on {tier} ({price:g} credits/min)",
            )
        ]
    return []


def payload_hash(payload: Any) -> str:
    """A digest of the payload's JSON, key order aside: what an ``Idempotency-Key`` names."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def submit_run(
    plane: ControlPlane, *, account_id: str, payload: Any, idempotency_key: str | None
) -> Run:
    """Queue a run, or return the run an earlier submission with the same key created.

    Raises ConfigError with every problem when the submission is blocked, or when the key
    was used before with a different payload; TooManyQueued when the account already has
    ``max_queued_runs_per_account`` queued runs.
    """
    digest = payload_hash(payload)
    data = _payload_data_shape(plane, account_id, payload)
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
        recipe, tier = validate_submission(plane, session, account_id, payload, data=data)
        _within_queue_cap(plane, session, account_id)
        run = store.create_run(
            session,
            account_id=account_id,
            name=recipe.name,
            tier=tier,
            config=recipe.model_dump(mode="json"),
            idempotency_key=idempotency_key,
            payload_hash=digest if idempotency_key else None,
        )
    plane.changed()
    return run


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
