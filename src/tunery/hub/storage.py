"""Where Hub artifacts live. Addressed by entry id and artifact kind, never by user text."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ARTIFACTS = ("lora", "gguf")


@dataclass(frozen=True)
class StoredFile:
    filename: str
    size: int
    sha256: str


class Storage(Protocol):
    def put(self, entry_id: str, artifact: str, source: Path) -> StoredFile:
        """Take ``source`` into the store (it may be moved, not copied)."""

    def path(self, entry_id: str, artifact: str) -> Path:
        """A local path to stream the artifact from."""

    def delete(self, entry_id: str) -> None:
        """Remove every file of the entry."""


class LocalStorage:
    """Files under ``root/ENTRY_ID/ARTIFACT.zip`` on the server's disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, entry_id: str, artifact: str) -> Path:
        if artifact not in ARTIFACTS or not entry_id.replace("_", "").isalnum():
            raise ValueError(f"no artifact {artifact!r} for entry {entry_id!r}")
        return self.root / entry_id / f"{artifact}.zip"

    def put(self, entry_id: str, artifact: str, source: Path) -> StoredFile:
        target = self.path(entry_id, artifact)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with source.open("rb") as file:
            while chunk := file.read(2**20):
                digest.update(chunk)
        size = source.stat().st_size
        # Same filesystem: an atomic rename; elsewhere a copy first, then the rename.
        try:
            os.replace(source, target)
        except OSError:
            partial = target.with_suffix(".partial")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        return StoredFile(filename=source.name, size=size, sha256=digest.hexdigest())

    def delete(self, entry_id: str) -> None:
        shutil.rmtree(self.path(entry_id, "lora").parent, ignore_errors=True)
