"""Where Hub artifacts live. Addressed by entry id and artifact kind, never by user text.

Two stores implement ``Storage``: ``LocalStorage`` (files on the server's disk, streamed by
the server under its own signed URLs) and ``tunery.hub.s3.S3Storage`` (an S3-compatible
bucket that serves downloads itself through presigned URLs). ``tunery.hub.open_storage``
picks the one the settings name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ARTIFACTS = ("lora", "gguf")
ENTRY_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")


@dataclass(frozen=True)
class StoredFile:
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PresignedUrl:
    """A download URL that the store serves itself, valid until ``expires_at`` (epoch s)."""

    url: str
    expires_at: int


class Storage(Protocol):
    def put(self, entry_id: str, artifact: str, source: Path) -> StoredFile:
        """Take ``source`` into the store; it may be moved, or left in place for a retry."""

    def delete(self, entry_id: str) -> None:
        """Remove every file of the entry (nothing to remove is not an error)."""

    def download_source(
        self, entry_id: str, artifact: str, *, filename: str, lifetime: int
    ) -> PresignedUrl | Path:
        """Where a download comes from: a URL the store serves itself (saved as ``filename``,
        valid ``lifetime`` seconds, capped at ``signing.MAX_LIFETIME``), or a file on this
        machine that the server streams under its own signed URL."""


def check_names(entry_id: str, artifact: str | None = None) -> None:
    """Raise ValueError unless the entry id (and artifact, if given) may name a path or key."""
    if not ENTRY_ID.match(entry_id) or (artifact is not None and artifact not in ARTIFACTS):
        raise ValueError(f"no artifact {artifact!r} for entry {entry_id!r}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStorage:
    """Files under ``root/ENTRY_ID/ARTIFACT.zip`` on the server's disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, entry_id: str, artifact: str) -> Path:
        check_names(entry_id, artifact)
        return self.root / entry_id / f"{artifact}.zip"

    def put(self, entry_id: str, artifact: str, source: Path) -> StoredFile:
        target = self.path(entry_id, artifact)
        target.parent.mkdir(parents=True, exist_ok=True)
        sha256 = file_sha256(source)
        size = source.stat().st_size
        # Same filesystem: an atomic rename; elsewhere a copy first, then the rename.
        try:
            os.replace(source, target)
        except OSError:
            partial = target.with_suffix(".partial")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        return StoredFile(filename=source.name, size=size, sha256=sha256)

    def delete(self, entry_id: str) -> None:
        check_names(entry_id)
        shutil.rmtree(self.root / entry_id, ignore_errors=True)

    def download_source(
        self, entry_id: str, artifact: str, *, filename: str, lifetime: int
    ) -> Path:
        """Always the local file: the server streams it (the name is sent by the route)."""
        return self.path(entry_id, artifact)
