"""Uploaded datasets: validated before they count, kept under opaque ids, listed, deleted."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.db import Dataset, Run, new_id
from tunery.errors import DatasetError
from tunery.pipeline.datasets import SUFFIXES, read_dataset
from tunery.runs.lifecycle import TERMINAL
from tunery.runs.plane import Conflict, ControlPlane, NotFound
from tunery.wire.rest import DatasetPublic
from tunery.wire.timefmt import iso

MAX_UPLOAD_BYTES = 2 * 2**30


def store_dataset(
    plane: ControlPlane,
    *,
    account_id: str,
    source: BinaryIO,
    original_name: str,
    name: str | None = None,
) -> Dataset:
    """Copy ``source`` into the data dir, validate it and record it for the account.

    Raises DatasetError with every problem (file, 1-based line) when the file cannot be
    used; nothing is kept then. The file is stored as ``DATASET_ID.SUFFIX``, never under
    the user's name.
    """
    original = Path(original_name).name
    suffix = Path(original).suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError.single(
            original, f"unsupported file type {suffix or '(none)'!r}; use .jsonl, .csv or .parquet"
        )
    dataset_id = new_id("ds")
    plane.datasets_dir.mkdir(parents=True, exist_ok=True)
    target = plane.datasets_dir / f"{dataset_id}{suffix}"
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=plane.datasets_dir, suffix=suffix, delete=False) as out:
        partial = Path(out.name)
        try:
            while chunk := source.read(2**20):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise DatasetError.single(original, "the file is larger than 2 GiB")
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    try:
        summary = read_dataset(partial, display_name=original)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    shutil.move(partial, target)
    dataset = Dataset(
        id=dataset_id,
        account_id=account_id,
        name=name or original,
        filename=target.name,
        format=summary.format,
        rows=summary.row_count,
        bytes=size,
        sha256=digest.hexdigest(),
    )
    with plane.sessions.begin() as session:
        session.add(dataset)
    return dataset


def dataset_view(dataset: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        format=dataset.format,
        rows=dataset.rows,
        bytes=dataset.bytes,
        sha256=dataset.sha256,
        created_at=iso(dataset.created_at),
    )


def list_datasets(plane: ControlPlane, account_id: str) -> list[DatasetPublic]:
    """The account's datasets, newest first."""
    with plane.sessions() as session:
        rows = session.scalars(
            select(Dataset)
            .where(Dataset.account_id == account_id)
            .order_by(Dataset.created_at.desc())
        )
        return [dataset_view(dataset) for dataset in rows]


def owned_dataset(session: Session, account_id: str, dataset_id: str) -> Dataset:
    """The account's dataset; raises NotFound for unknown ids and other accounts' ones."""
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.account_id == account_id)
    )
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset


def view_dataset(plane: ControlPlane, account_id: str, dataset_id: str) -> DatasetPublic:
    with plane.sessions() as session:
        return dataset_view(owned_dataset(session, account_id, dataset_id))


def delete_dataset(plane: ControlPlane, *, account_id: str, dataset_id: str) -> None:
    """Delete a dataset and its file; Conflict while a run that has not finished needs it."""
    with plane.sessions.begin() as session:
        dataset = owned_dataset(session, account_id, dataset_id)
        pending = session.scalars(
            select(Run).where(
                Run.account_id == account_id, Run.status.not_in([s.value for s in TERMINAL])
            )
        )
        users = [run.id for run in pending if dataset_id in run.config.get("dataset_ids", [])]
        if users:
            raise Conflict(f"dataset {dataset_id} is used by unfinished run(s) {', '.join(users)}")
        (plane.datasets_dir / dataset.filename).unlink(missing_ok=True)
        session.delete(dataset)
