"""Storing uploaded datasets: validated before they count, kept under opaque ids."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from tunery.db import Dataset, new_id
from tunery.errors import DatasetError
from tunery.pipeline.datasets import SUFFIXES, read_dataset
from tunery.runs.service import ControlPlane

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
