"""Submission: every reason a run is blocked, at once; then a ``queued`` run.

Schema problems (types, ranges, unknown fields) and the checks against this server
(datasets, attestations, tier, base model, credits) are reported together in one
ConfigError (HTTP 422); nothing is created or charged then. A field whose schema is wrong is
not checked again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tunery.db import Dataset, Run
from tunery.errors import ConfigError, FieldProblem
from tunery.pipeline.config import RunRecipe, parse_recipe
from tunery.pipeline.load import parse_model_reference
from tunery.runs import billing, store
from tunery.runs.plane import ControlPlane

Field = Callable[[str, Any], Any]
"""``field(name, default)``: a payload field's value, or ``default`` when its schema is broken."""


def default_tier(plane: ControlPlane) -> str:
    return plane.settings.nodes[0].tier


def validate_submission(
    plane: ControlPlane, session: Session, account_id: str, payload: Any
) -> tuple[RunRecipe, str]:
    """Every reason a submission is blocked, at once; returns the recipe and its tier."""
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
        try:
            parse_model_reference(base_model)
        except ConfigError as error:
            problems.extend(error.problems)
    problems += _credit_problems(plane, session, account_id, tier)
    if problems or recipe is None:
        raise ConfigError(problems)
    return recipe, tier


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
    if not any(node.tier == tier for node in plane.settings.nodes):
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


def submit_run(
    plane: ControlPlane, *, account_id: str, payload: Any, idempotency_key: str | None
) -> Run:
    """Queue a run, or return the run an earlier submission with the same key created.

    Raises ConfigError with every problem when the submission is blocked.
    """
    if idempotency_key:
        existing = _run_by_key(plane, account_id, idempotency_key)
        if existing is not None:
            return existing
    try:
        with plane.sessions.begin() as session:
            recipe, tier = validate_submission(plane, session, account_id, payload)
            run = store.create_run(
                session,
                account_id=account_id,
                name=recipe.name,
                tier=tier,
                config=recipe.model_dump(mode="json"),
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        # Two retries of one submission raced; the first insert won.
        existing = _run_by_key(plane, account_id, idempotency_key or "")
        if existing is None:
            raise
        return existing
    plane.changed()
    return run


def _run_by_key(plane: ControlPlane, account_id: str, key: str) -> Run | None:
    with plane.sessions() as session:
        return session.scalar(
            select(Run).where(Run.account_id == account_id, Run.idempotency_key == key)
        )
