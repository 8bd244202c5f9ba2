"""The Hub's records: a finished run's artifacts become an entry; entries are read and deleted.

An entry exists as soon as a run saved at least one artifact: a completed run (LoRA and,
if enabled, GGUF) or a run whose GGUF export failed after the LoRA was saved (LoRA only).
Cancelled runs, runs that fail before the LoRA save and blocked submissions have none.

A run that starts from another's adapter (``init_from``) reads that run's LoRA from its
entry (``adapter_entry``); the entry cannot be deleted while such a run has not finished.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.db import HubEntry, Run, new_id, now
from tunery.event_kinds import EventKind
from tunery.hub.storage import ARTIFACTS
from tunery.lifecycle import TERMINAL
from tunery.runs import store
from tunery.runs.leftovers import remove_served_copy
from tunery.runs.plane import Conflict, ControlPlane, NotFound
from tunery.wire.rest import HubEntryPublic
from tunery.wire.timefmt import iso


def bundle_path(plane: ControlPlane, run: Run, kind: str) -> Path:
    """Where the server keeps the ``kind`` bundle a worker uploaded for ``run``.

    Named by the server from the run's validated name and the artifact kind, never from
    anything a worker sent.
    """
    if kind not in ARTIFACTS:
        raise NotFound(f"no artifact kind {kind!r}")
    return plane.runs_dir / run.id / f"{run.name}-{kind}.zip"


def received_bundles(plane: ControlPlane, run: Run) -> dict[str, str | None]:
    """The run's uploaded bundles by kind (file name, or None when there is none)."""
    return {
        kind: path.name if (path := bundle_path(plane, run, kind)).is_file() else None
        for kind in ARTIFACTS
    }


def create_entry(plane: ControlPlane, session: Session, run: Run) -> str | None:
    """Move the run's uploaded bundles into Hub storage and record the entry; returns its id.

    Raises what the storage raises (a TuneryError or OSError) after removing anything it
    stored for this entry.
    """
    present = {
        kind: path for kind in ARTIFACTS if (path := bundle_path(plane, run, kind)).is_file()
    }
    if "lora" not in present:
        return None
    entry_id = new_id("hub")
    artifacts = {}
    try:
        for kind, path in present.items():
            stored = plane.storage.put(entry_id, kind, path)
            artifacts[kind] = {
                "filename": stored.filename,
                "size": stored.size,
                "sha256": stored.sha256,
            }
    except Exception:
        # No half entry: whatever reached the store goes again (if the store lets us).
        with contextlib.suppress(Exception):
            plane.storage.delete(entry_id)
        raise
    session.add(
        HubEntry(
            id=entry_id,
            account_id=run.account_id,
            run_id=run.id,
            name=run.name,
            base_model=run.config.get("base_model", ""),
            artifacts=artifacts,
            created_at=now(),
        )
    )
    return entry_id


def entry_view(entry: HubEntry) -> HubEntryPublic:
    return HubEntryPublic(
        id=entry.id,
        name=entry.name,
        run_id=entry.run_id,
        base_model=entry.base_model,
        artifacts=entry.artifacts,
        created_at=iso(entry.created_at),
    )


def list_entries(plane: ControlPlane, account_id: str) -> list[HubEntryPublic]:
    """The account's Hub entries, newest first."""
    with plane.sessions() as session:
        rows = session.scalars(
            select(HubEntry)
            .where(HubEntry.account_id == account_id)
            .order_by(HubEntry.created_at.desc())
        )
        return [entry_view(entry) for entry in rows]


def find_entry(plane: ControlPlane, account_id: str, entry_id: str) -> HubEntry:
    """The account's entry; raises NotFound for unknown ids and other accounts' entries."""
    with plane.sessions() as session:
        entry = session.scalar(
            select(HubEntry).where(HubEntry.id == entry_id, HubEntry.account_id == account_id)
        )
    if entry is None:
        raise NotFound(f"no Hub entry {entry_id!r}")
    return entry


def adapter_entry(session: Session, account_id: str, run_id: str) -> HubEntry | None:
    """The account's Hub entry holding run ``run_id``'s LoRA, if there is one."""
    entries = session.scalars(
        select(HubEntry).where(HubEntry.run_id == run_id, HubEntry.account_id == account_id)
    )
    return next((entry for entry in entries if "lora" in (entry.artifacts or {})), None)


def delete_entry(plane: ControlPlane, *, account_id: str, entry_id: str) -> None:
    """Delete the entry's record, then its stored artifacts and its copy served for chat; the
    run it came from (if its record is kept) gets a ``hub`` event, so open pages stop
    offering its bundles. Conflict naming the unfinished runs that start from its adapter
    (``init_from``)."""
    with plane.exclusive() as session:
        entry = session.scalar(
            select(HubEntry).where(HubEntry.id == entry_id, HubEntry.account_id == account_id)
        )
        if entry is None:
            raise NotFound(f"no Hub entry {entry_id!r}")
        starting = session.scalars(
            select(Run.id).where(
                Run.account_id == account_id,
                Run.status.not_in([status.value for status in TERMINAL]),
                Run.config["init_from"].as_string() == entry.run_id,
            )
        ).all()
        if starting:
            raise Conflict(
                f"Hub entry {entry_id} holds the adapter unfinished run(s) {', '.join(starting)} "
                "start from",
                hint="wait for them to finish, or cancel them, then delete the entry",
            )
        if session.get(Run, entry.run_id) is not None:
            store.append_event(
                session, entry.run_id, EventKind.HUB, {"hub_entry_id": entry_id, "deleted": True}
            )
        session.delete(entry)
    plane.storage.delete(entry_id)
    remove_served_copy(plane, entry_id)
    plane.changed()


def deleted_entries(session: Session, runs: list[Run]) -> set[str]:
    """The Hub entry ids of ``runs`` that no longer exist (deleted from the Hub)."""
    wanted = {run.hub_entry_id for run in runs if run.hub_entry_id is not None}
    if not wanted:
        return set()
    present = set(session.scalars(select(HubEntry.id).where(HubEntry.id.in_(wanted))))
    return wanted - present
