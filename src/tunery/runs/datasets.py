"""Uploaded datasets: validated before they count, kept under opaque ids, listed, deleted.

An account keeps at most ``dataset_quota_bytes`` of datasets (QuotaExceeded, HTTP 413). A
dataset that a run which has not finished trains on cannot be deleted (Conflict naming the
runs); the check and the deletion hold the database's write lock, as a submission's checks
and insert do, so neither can slip between the other's check and write.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunery.db import Dataset, Run, new_id
from tunery.errors import DatasetError
from tunery.lifecycle import TERMINAL
from tunery.pipeline.datasets import SUFFIXES, check_dataset, dataset_kind
from tunery.runs.leftovers import UPLOAD_PREFIX
from tunery.runs.plane import Conflict, ControlPlane, NotFound, QuotaExceeded
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
    used, QuotaExceeded when it does not fit the account's quota; nothing is kept then. The
    file is stored as ``DATASET_ID.SUFFIX``, never under the user's name.
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
    with plane.sessions() as session:
        room = plane.settings.dataset_quota_bytes - stored_bytes(session, account_id)
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(
        dir=plane.datasets_dir, prefix=UPLOAD_PREFIX, suffix=suffix, delete=False
    ) as out:
        partial = Path(out.name)
        try:
            while chunk := source.read(2**20):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise DatasetError.single(original, "the file is larger than 2 GiB")
                if size > room:
                    raise over_quota(plane)
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    try:
        summary = check_dataset(partial, display_name=original)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
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
    try:
        with plane.exclusive() as session:
            # Checked again under the lock: uploads running side by side share one quota.
            if stored_bytes(session, account_id) + size > plane.settings.dataset_quota_bytes:
                raise over_quota(plane)
            shutil.move(partial, target)
            session.add(dataset)
    except BaseException:
        partial.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise
    return dataset


def stored_bytes(session: Session, account_id: str) -> int:
    """Bytes of datasets the account keeps on the server."""
    total = session.scalar(
        select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.account_id == account_id)
    )
    return int(total or 0)


def over_quota(plane: ControlPlane) -> QuotaExceeded:
    quota = plane.settings.dataset_quota_bytes
    return QuotaExceeded(
        f"the upload would take the account's datasets past its quota of {quota / 2**30:.3g} "
        "GiB (setting dataset_quota_bytes)",
        hint="delete datasets you no longer need (tunery datasets list), or ask the admin",
    )


def dataset_view(dataset: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        format=dataset.format,
        kind=dataset_kind(dataset.format),
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
    """Delete a dataset and its file; Conflict naming the runs that have not finished and
    train on it."""
    with plane.exclusive() as session:
        dataset = owned_dataset(session, account_id, dataset_id)
        pending = session.scalars(
            select(Run).where(
                Run.account_id == account_id, Run.status.not_in([s.value for s in TERMINAL])
            )
        )
        users = [run.id for run in pending if dataset_id in _dataset_ids_of(run.config)]
        if users:
            raise Conflict(
                f"dataset {dataset_id} is used by unfinished run(s) {', '.join(users)}",
                hint="wait for them to finish, or cancel them, then delete the dataset",
            )
        session.delete(dataset)
    # Only once the record is gone: no submission can name the file after this point.
    (plane.datasets_dir / dataset.filename).unlink(missing_ok=True)


def _dataset_ids_of(config: dict[str, Any]) -> list[str]:
    """Every dataset a run's recipe names: training data and validation data."""
    validation = config.get("validation") or {}
    return [*config.get("dataset_ids", []), *validation.get("dataset_ids", [])]
