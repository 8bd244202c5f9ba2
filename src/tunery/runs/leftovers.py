"""What a killed server leaves in its data dir, and what outlives the record it belongs to.

Every write into the data dir goes through a temporary name first (an upload's
``.upload-*``, a Hub copy's ``.partial``, a served GGUF's ``.ENTRY-*`` folder) and becomes
real with a rename, then a database row; a server killed in between leaves the temporary
file, or a file no row names. ``sweep_at_start`` removes them before the server takes
requests (nothing writes then). A Hub entry's served copy (``serving/ENTRY``, its GGUF
unpacked for chat) goes with the entry, or with its run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from tunery.db import Dataset, HubEntry
from tunery.hub.storage import LocalStorage
from tunery.runs.plane import ControlPlane

UPLOAD_PREFIX = ".upload-"


def remove_served_copy(plane: ControlPlane, entry_id: str) -> None:
    """Remove the entry's unpacked GGUF (the chat route unpacks it again if asked)."""
    shutil.rmtree(plane.serving_dir / entry_id, ignore_errors=True)


def sweep_at_start(plane: ControlPlane) -> list[Path]:
    """Remove what killed writes left and what no record names; returns what it removed."""
    with plane.sessions() as session:
        datasets = set(session.scalars(select(Dataset.filename)))
        entries = set(session.scalars(select(HubEntry.id)))
    found = [
        *_children(plane.datasets_dir, keep=lambda path: path.name in datasets),
        *_children(plane.serving_dir, keep=lambda path: path.name in entries),
    ]
    storage = plane.storage if plane.settings.storage.kind == "local" else None
    if isinstance(storage, LocalStorage):  # an S3 store's objects are its own business
        found += _children(storage.root, keep=lambda path: path.name in entries)
        for entry in entries:
            found += (storage.root / entry).glob("*.partial")
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _children(folder: Path, *, keep: Callable[[Path], bool]) -> list[Path]:
    """What ``folder`` holds that ``keep`` does not want."""
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir() if not keep(path)]
