"""Dataset upload and listing. Files are stored under opaque ids, never user names."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from tunery.api.deps import AccountDep, PlaneDep
from tunery.runs import datasets
from tunery.wire.rest import DatasetPublic

router = APIRouter(tags=["datasets"])


@router.post("/datasets", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    plane: PlaneDep,
    account: AccountDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str | None, Form()] = None,
) -> DatasetPublic:
    """Store and validate a dataset; 422 with every problem (file, line) if it is unusable."""
    dataset = datasets.store_dataset(
        plane,
        account_id=account.id,
        source=file.file,
        original_name=file.filename or "upload",
        name=name,
    )
    return datasets.dataset_view(dataset)


@router.get("/datasets", response_model=list[DatasetPublic])
def list_datasets(plane: PlaneDep, account: AccountDep) -> list[DatasetPublic]:
    return datasets.list_datasets(plane, account.id)


@router.get("/datasets/{dataset_id}", response_model=DatasetPublic)
def get_dataset(plane: PlaneDep, account: AccountDep, dataset_id: str) -> DatasetPublic:
    return datasets.view_dataset(plane, account.id, dataset_id)


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(plane: PlaneDep, account: AccountDep, dataset_id: str) -> None:
    """Delete a dataset; 409 while a run that has not finished still needs it."""
    datasets.delete_dataset(plane, account_id=account.id, dataset_id=dataset_id)
