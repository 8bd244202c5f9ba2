"""Liveness, tiers, the model catalog, and the vocabularies clients display."""

from __future__ import annotations

from fastapi import APIRouter

from tunery.api.deps import AccountDep, PlaneDep
from tunery.catalog.models import listed
from tunery.lifecycle import (
    ACTIVE,
    FINISHABLE,
    OUTCOMES,
    PAUSABLE,
    RESUMABLE,
    SHOWS_ERROR,
    STATUS_DISPLAY,
    TERMINAL,
)
from tunery.phases import PHASE_DESCRIPTIONS
from tunery.pipeline.config import AUTO_VALIDATION_RULE
from tunery.runs import queries
from tunery.runs.billing import REFUND_RULES
from tunery.wire.events import EVENT_KINDS
from tunery.wire.rest import Health, Meta, ModelPublic, PhaseInfo, StatusInfo, TierPublic

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["meta"])
async def healthz() -> Health:
    """Liveness; a coroutine, so it answers even while every thread of the pool is busy."""
    return Health(status="ok")


@router.get("/api/v1/meta", response_model=Meta, tags=["meta"])
def meta() -> Meta:
    """Statuses (in lifecycle order, with labels, icons and what each allows), phases, event
    kinds, the refund rules and what a blank validation split holds out: what the CLI and the
    studio show, from one place. No token needed."""
    return Meta(
        statuses=[
            StatusInfo(
                id=status,
                label=display.label,
                icon=display.icon,
                phase_labels=dict(display.phase_labels),
                label_without_gpu=display.label_without_gpu,
                terminal=status in TERMINAL,
                active=status in ACTIVE,
                cancellable=status not in TERMINAL,
                finishable=status in FINISHABLE,
                shows_error=status in SHOWS_ERROR,
                outcome=OUTCOMES.get(status),
                pausable=status in PAUSABLE,
                resumable=status in RESUMABLE,
            )
            for status, display in STATUS_DISPLAY.items()
        ],
        phases=[
            PhaseInfo(id=phase, description=text) for phase, text in PHASE_DESCRIPTIONS.items()
        ],
        event_kinds=list(EVENT_KINDS),
        refund_rules=list(REFUND_RULES),
        automatic_validation=AUTO_VALIDATION_RULE,
    )


@router.get("/api/v1/tiers", response_model=list[TierPublic], tags=["meta"])
def tiers(plane: PlaneDep, _: AccountDep) -> list[TierPublic]:
    return queries.tiers_view(plane)


@router.get("/api/v1/models", response_model=list[ModelPublic], tags=["meta"])
def models(plane: PlaneDep, _: AccountDep) -> list[ModelPublic]:
    """The catalog; a model tunery builds from a package download once it is built."""
    models_dir = plane.settings.data_dir / "models"
    return [ModelPublic.model_validate(entry.as_dict()) for entry in listed(models_dir)]
