"""Files between the server and its workers, over the API: datasets out, bundles in.

A worker reads the datasets of its own run and nothing else: ``dataset_file`` answers only a
live attempt's token, and only for ids in that run's recipe. Bundles come back as bodies of
``PUT /internal/attempts/{id}/bundles/{kind}`` (capped by ``BodyLimits.bundle_bytes``);
``BundleUpload`` files them under the name
``hub.bundle_path`` chooses (the run's name and the artifact kind), so no string a worker
sends ever becomes part of a path on the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import select

from tunery.db import Dataset
from tunery.errors import TuneryError
from tunery.runs import hub
from tunery.runs.attempts import fenced_attempt
from tunery.runs.plane import ControlPlane, NotFound


class BundleDamaged(TuneryError):
    code = "bundle_damaged"
    transient = True


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


class BundleUpload:
    """One bundle being received: ``open`` checks the attempt, ``write`` the chunks,
    ``commit`` checks size and digest and moves it into place (the attempt must still own
    its run); ``discard`` removes a partial file."""

    def __init__(self, plane: ControlPlane, *, attempt_id: str, token: str, kind: str) -> None:
        self._plane, self._attempt_id, self._token, self._kind = plane, attempt_id, token, kind
        self._digest = hashlib.sha256()
        self._target: Path | None = None
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None

    def open(self) -> None:
        with self._plane.sessions() as session:
            _, run = fenced_attempt(session, self._attempt_id, self._token)
            self._target = hub.bundle_path(self._plane, run, self._kind)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        # Open across write() calls until commit or discard, so no context manager.
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            dir=self._target.parent, prefix=f".{self._kind}-", suffix=".partial", delete=False
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
            raise BundleDamaged("the bundle arrived damaged (its sha256 differs); send it again")
        with self._plane.sessions() as session:
            fenced_attempt(session, self._attempt_id, self._token)
        os.replace(self._file.name, self._target)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file.name)
