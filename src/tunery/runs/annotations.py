"""A run's annotations: the owner's tags and free-text note, editable at any time.

They describe the run for its owner (what it tried, what came of it) and change nothing
about how it trains or bills. Every change is an ``annotations`` event, so every open studio
and stream follower sees it; a rerun starts with the run's current ones.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tunery.errors import ConfigError, problems_from
from tunery.event_kinds import EventKind
from tunery.pipeline.config import check_note, check_tags
from tunery.runs import store
from tunery.runs.plane import ControlPlane
from tunery.runs.queries import get_run


class AnnotationsUpdate(BaseModel):
    """``PATCH /runs/{id}``: the tags and note to set (a field left out is kept)."""

    model_config = ConfigDict(extra="forbid")
    tags: list[str] | None = None
    """Replaces the run's tags; ``[]`` removes them all."""
    note: str | None = None
    """Replaces the run's note; ``""`` removes it."""

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str] | None:
        return None if tags is None else check_tags(tags)

    @field_validator("note")
    @classmethod
    def _note(cls, note: str | None) -> str | None:
        return None if note is None else check_note(note)


def parse_update(payload: Any) -> AnnotationsUpdate:
    """The body of ``PATCH /runs/{id}``; raises ConfigError naming every bad field."""
    try:
        return AnnotationsUpdate.model_validate(payload)
    except ValidationError as error:
        raise ConfigError(problems_from(error, whole="body")) from None


def annotate_run(
    plane: ControlPlane, *, account_id: str, run_id: str, update: AnnotationsUpdate
) -> None:
    """Set the run's tags and note (any state, finished runs included); raises NotFound."""
    with plane.sessions.begin() as session:
        run = get_run(session, account_id, run_id)
        if update.tags is not None:
            run.tags = update.tags
        if update.note is not None:
            run.note = update.note
        store.append_event(
            session, run.id, EventKind.ANNOTATIONS, {"tags": run.tags, "note": run.note}
        )
    plane.changed()
