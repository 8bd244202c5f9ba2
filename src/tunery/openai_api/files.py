"""``/v1/files``: uploads are tunery datasets (same validation, same ids), and each
succeeded job's metrics CSV is a read-only ``fine-tune-results`` file."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from tunery.db import Dataset, Run
from tunery.errors import DatasetError, TuneryError
from tunery.lifecycle import RunStatus
from tunery.openai_api.mapping import RESULTS_PREFIX, metrics_csv, results_file_id
from tunery.openai_api.objects import FileObject, OpenAIError, openai_error, page_of
from tunery.runs import datasets, history
from tunery.runs.plane import Conflict, ControlPlane, NotFound

PURPOSE = "fine-tune"
MAX_LIST = 10_000


def file_object(dataset: Dataset) -> FileObject:
    return FileObject(
        id=dataset.id,
        bytes=dataset.bytes,
        created_at=int(dataset.created_at),
        filename=dataset.name,
        purpose="fine-tune",
    )


def upload(
    plane: ControlPlane, account_id: str, *, source: BinaryIO, filename: str, purpose: str
) -> FileObject:
    """Store a training file as a dataset; 400 with every problem (file, line) if unusable."""
    if purpose != PURPOSE:
        raise OpenAIError(
            400,
            f"purpose {purpose!r} is not supported here; tunery stores 'fine-tune' files only",
            param="purpose",
        )
    try:
        dataset = datasets.store_dataset(
            plane, account_id=account_id, source=source, original_name=filename
        )
    except DatasetError as error:
        problems = "; ".join(str(problem) for problem in error.problems)
        raise OpenAIError(
            400, f"invalid training file: {problems}", param="file", code="invalid_file"
        ) from None
    except TuneryError as error:
        raise openai_error(error) from None
    return file_object(dataset)


def list_files(
    plane: ControlPlane,
    account_id: str,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: str,
) -> dict:
    """The account's fine-tune files by ``created_at`` (``order``), ``limit`` after ``after``."""
    if purpose not in (None, PURPOSE):
        return page_of([], has_more=False)
    newest_first = order != "asc"
    with plane.sessions() as session:
        rows = list(
            session.scalars(
                select(Dataset)
                .where(Dataset.account_id == account_id)
                .order_by(
                    Dataset.created_at.desc() if newest_first else Dataset.created_at,
                    Dataset.id.desc() if newest_first else Dataset.id,
                )
            )
        )
    ids = [row.id for row in rows]
    if after and after not in ids:
        raise OpenAIError(400, f"unknown cursor {after!r}", param="after")
    start = ids.index(after) + 1 if after else 0
    page = rows[start : start + limit]
    items = [file_object(row) for row in page]
    return page_of(items, has_more=start + limit < len(rows))


def retrieve(plane: ControlPlane, account_id: str, file_id: str) -> FileObject:
    if file_id.startswith(RESULTS_PREFIX):
        run, content = _results(plane, account_id, file_id)
        return FileObject(
            id=file_id,
            bytes=len(content.encode()),
            created_at=int(run.finished_at or run.created_at),
            filename=f"{run.name}-metrics.csv",
            purpose="fine-tune-results",
        )
    return file_object(_dataset(plane, account_id, file_id))


def content(plane: ControlPlane, account_id: str, file_id: str) -> Path | bytes:
    """The file's bytes: a dataset's stored file (as a path), or a results CSV."""
    if file_id.startswith(RESULTS_PREFIX):
        return _results(plane, account_id, file_id)[1].encode()
    return plane.datasets_dir / _dataset(plane, account_id, file_id).filename


def delete(plane: ControlPlane, account_id: str, file_id: str) -> None:
    if file_id.startswith(RESULTS_PREFIX):
        _results(plane, account_id, file_id)
        raise OpenAIError(400, "results files belong to their job and cannot be deleted")
    try:
        datasets.delete_dataset(plane, account_id=account_id, dataset_id=file_id)
    except NotFound:
        raise _no_file(file_id) from None
    except Conflict as error:
        raise OpenAIError(409, error.message, param="file_id") from None


def _no_file(file_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such File object: {file_id}", param="id")


def _dataset(plane: ControlPlane, account_id: str, file_id: str) -> Dataset:
    with plane.sessions() as session:
        try:
            return datasets.owned_dataset(session, account_id, file_id)
        except NotFound:
            raise _no_file(file_id) from None


def _results(plane: ControlPlane, account_id: str, file_id: str) -> tuple[Run, str]:
    run_id = file_id.removeprefix(RESULTS_PREFIX)
    with plane.sessions() as session:
        run = session.scalar(select(Run).where(Run.id == run_id, Run.account_id == account_id))
        if run is None or run.status != RunStatus.COMPLETED or results_file_id(run.id) != file_id:
            raise _no_file(file_id)
        return run, metrics_csv(history.step_rows(session, run.id))
