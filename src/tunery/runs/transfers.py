"""Files between the server and its workers, over the API: datasets out, bundles in, and
checkpoints both ways.

A worker reads the datasets of its own run and nothing else: ``dataset_file`` answers only a
live attempt's token, and only for ids in that run's recipe; likewise the LoRA of the run its
recipe starts from (``init_adapter_source``), from the account's own Hub. Bundles come back
as bodies of ``PUT /internal/attempts/{id}/bundles/{kind}`` (capped by ``BodyLimits.bundle_bytes``);
``FileUpload`` files them under the name ``hub.bundle_path`` chooses (the run's name and the
artifact kind), so no string a worker sends ever becomes part of a path on the server.

A cluster without a shared checkpoint directory keeps checkpoints here: a worker uploads
each complete one as an archive (``PUT .../checkpoints/{step}``, the step a number the
server formats) and the next attempt of the run downloads the newest
(``newest_checkpoint``). The server never opens an archive; the worker that downloads it
checks every member (``tunery.worker.checkpoints``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from tunery.db import Dataset, Run, now
from tunery.errors import TuneryError
from tunery.hub.storage import PresignedUrl
from tunery.runs import hub
from tunery.runs.attempts import fenced_attempt
from tunery.runs.plane import ControlPlane, NotFound

CHECKPOINT_ARCHIVES_KEPT = 2
ABANDONED_UPLOAD_SECONDS = 3600
"""A partial upload not written to for this long was cut off (an upload in progress keeps
writing to its file)."""
ARCHIVE_NAME = re.compile(r"step-([0-9]{8})\.zip")
MAX_CHECKPOINT_STEP = 10**8 - 1
"""Steps are written with eight digits; a recipe's max_steps is far below."""
INIT_ADAPTER_URL_SECONDS = 600
"""How long a presigned URL to an ``init_from`` adapter lives: one download's time."""


class UploadDamaged(TuneryError):
    """A bundle or checkpoint upload whose bytes differ from the digest the worker sent."""

    code = "upload_damaged"
    transient = True


def checkpoint_archives_dir(plane: ControlPlane, run_id: str) -> Path:
    return plane.runs_dir / run_id / "checkpoint-archives"


def checkpoint_archives(plane: ControlPlane, run_id: str) -> list[tuple[int, Path]]:
    """The run's stored checkpoint archives by step, oldest first."""
    directory = checkpoint_archives_dir(plane, run_id)
    if not directory.is_dir():
        return []
    named = (ARCHIVE_NAME.fullmatch(path.name) for path in directory.iterdir())
    return sorted((int(match[1]), directory / match[0]) for match in named if match)


def newest_checkpoint(
    plane: ControlPlane, *, attempt_id: str, token: str
) -> tuple[int, Path] | None:
    """The newest checkpoint archive of the attempt's run (step, file), or None."""
    with plane.sessions() as session:
        _, run = fenced_attempt(session, attempt_id, token)
    archives = checkpoint_archives(plane, run.id)
    return archives[-1] if archives else None


def dataset_file(plane: ControlPlane, *, attempt_id: str, token: str, dataset_id: str) -> Path:
    """The file of ``dataset_id`` if the attempt's run trains or evaluates on it; NotFound
    otherwise (another run's dataset looks exactly like one that does not exist)."""
    with plane.sessions() as session:
        _, run = fenced_attempt(session, attempt_id, token)
        dataset = (
            session.scalar(
                select(Dataset).where(
                    Dataset.id == dataset_id, Dataset.account_id == run.account_id
                )
            )
            if dataset_id in run.config.get("dataset_ids", [])
            or dataset_id in (run.config.get("validation") or {}).get("dataset_ids", [])
            else None
        )
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r} for this attempt")
    return plane.datasets_dir / dataset.filename


def init_adapter_source(
    plane: ControlPlane, *, attempt_id: str, token: str
) -> tuple[Path | PresignedUrl, str]:
    """Where the LoRA bundle of the run the attempt's run starts from (``init_from``) is, and
    its file name; NotFound when the run names none or its Hub entry is gone."""
    with plane.sessions() as session:
        _, run = fenced_attempt(session, attempt_id, token)
        source = run.config.get("init_from")
        entry = hub.adapter_entry(session, run.account_id, source) if source else None
    if entry is None:
        raise NotFound("no adapter to start from for this attempt")
    filename = entry.artifacts["lora"]["filename"]
    source_of = plane.storage.download_source(
        entry.id, "lora", filename=filename, lifetime=INIT_ADAPTER_URL_SECONDS
    )
    return source_of, filename


class FileUpload:
    """One file being received from a worker: ``open`` checks the attempt and names the file
    (``target`` of its run), ``write`` takes the chunks, ``commit`` checks the digest and
    moves it into place (the attempt must still own its run), then runs ``after_commit``;
    ``discard`` removes a partial file."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        attempt_id: str,
        token: str,
        target: Callable[[Run], Path],
        after_commit: Callable[[Run], None] | None = None,
    ) -> None:
        self._plane, self._attempt_id, self._token = plane, attempt_id, token
        self._target_of, self._after_commit = target, after_commit
        self._digest = hashlib.sha256()
        self._target: Path | None = None
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None

    def open(self) -> None:
        with self._plane.sessions() as session:
            _, run = fenced_attempt(session, self._attempt_id, self._token)
            self._target = self._target_of(run)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        # Open across write() calls until commit or discard, so no context manager.
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            dir=self._target.parent, prefix=".upload-", suffix=".partial", delete=False
        )

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._digest.update(chunk)
        self._file.write(chunk)

    def commit(self, expected_sha256: str | None) -> None:
        assert self._file is not None and self._target is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if expected_sha256 is not None and expected_sha256 != self._digest.hexdigest():
            raise UploadDamaged("the upload arrived damaged (its sha256 differs); send it again")
        with self._plane.sessions() as session:
            _, run = fenced_attempt(session, self._attempt_id, self._token)
        os.replace(self._file.name, self._target)
        if self._after_commit is not None:
            self._after_commit(run)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file.name)


def checkpoint_upload(plane: ControlPlane, *, attempt_id: str, token: str, step: int) -> FileUpload:
    """An upload of the checkpoint at ``step``; committing it keeps the newest
    CHECKPOINT_ARCHIVES_KEPT archives of the run."""

    def target(run: Run) -> Path:
        return checkpoint_archives_dir(plane, run.id) / f"step-{step:08d}.zip"

    def prune(run: Run) -> None:
        directory = checkpoint_archives_dir(plane, run.id)
        stale = now() - ABANDONED_UPLOAD_SECONDS
        # Uploads cut off by a server restart leave partial files no name pattern keeps.
        abandoned = [p for p in directory.glob(".upload-*.partial") if p.stat().st_mtime < stale]
        old = [path for _, path in checkpoint_archives(plane, run.id)[:-CHECKPOINT_ARCHIVES_KEPT]]
        for path in [*old, *abandoned]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    return FileUpload(plane, attempt_id=attempt_id, token=token, target=target, after_commit=prune)


def bundle_upload(plane: ControlPlane, *, attempt_id: str, token: str, kind: str) -> FileUpload:
    """An upload of the run's ``kind`` bundle, to where the Hub looks for it."""
    return FileUpload(
        plane,
        attempt_id=attempt_id,
        token=token,
        target=lambda run: hub.bundle_path(plane, run, kind),
    )
