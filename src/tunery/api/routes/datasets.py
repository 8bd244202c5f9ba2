"""Dataset upload and listing. Files are stored under opaque ids, never user names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from sqlalchemy import select

from tunery.api.deps import AccountDep, PlaneDep
from tunery.api.timefmt import iso
from tunery.db import Dataset, Run
from tunery.runs.datasets import store_dataset
from tunery.runs.lifecycle import TERMINAL
from tunery.runs.service import Conflict, NotFound

router = APIRouter(tags=["datasets"])


def dataset_public(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "format": dataset.format,
        "rows": dataset.rows,
        "bytes": dataset.bytes,
        "sha256": dataset.sha256,
        "created_at": iso(dataset.created_at),
    }


@router.post("/datasets", status_code=201)
def upload_dataset(
    plane: PlaneDep,
    account: AccountDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    """Store and validate a dataset; 422 with every problem (file, line) if it is unusable."""
    dataset = store_dataset(
        plane,
        account_id=account.id,
        source=file.file,
        original_name=file.filename or "upload",
        name=name,
    )
    return dataset_public(dataset)


@router.get("/datasets")
def list_datasets(plane: PlaneDep, account: AccountDep) -> list[dict[str, Any]]:
    with plane.sessions() as session:
        rows = session.scalars(
            select(Dataset)
            .where(Dataset.account_id == account.id)
            .order_by(Dataset.created_at.desc())
        )
        return [dataset_public(dataset) for dataset in rows]


def _owned(session: Any, account_id: str, dataset_id: str) -> Dataset:
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.account_id == account_id)
    )
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset


@router.get("/datasets/{dataset_id}")
def get_dataset(plane: PlaneDep, account: AccountDep, dataset_id: str) -> dict[str, Any]:
    with plane.sessions() as session:
        return dataset_public(_owned(session, account.id, dataset_id))


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(plane: PlaneDep, account: AccountDep, dataset_id: str) -> None:
    """Delete a dataset; 409 while a run that has not finished still needs it."""
    with plane.sessions.begin() as session:
        dataset = _owned(session, account.id, dataset_id)
        pending = session.scalars(
            select(Run).where(
                Run.account_id == account.id, Run.status.not_in([s.value for s in TERMINAL])
            )
        )
        users = [run.id for run in pending if dataset_id in run.config.get("dataset_ids", [])]
        if users:
            raise Conflict(f"dataset {dataset_id} is used by unfinished run(s) {', '.join(users)}")
        (plane.datasets_dir / dataset.filename).unlink(missing_ok=True)
        session.delete(dataset)
