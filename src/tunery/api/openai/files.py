"""``/v1/files``: fine-tune files (tunery datasets) and jobs' results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, Response

from tunery.api.deps import PlaneDep
from tunery.api.openai.common import OpenAIAccount, page_size
from tunery.openai_api import files
from tunery.openai_api.objects import FileDeleted, FileObject, OpenAIError, Page

router = APIRouter(prefix="/v1/files", tags=["openai"])


@router.post("", response_model=FileObject)
def upload_file(
    plane: PlaneDep,
    account: OpenAIAccount,
    file: Annotated[UploadFile | None, File()] = None,
    purpose: Annotated[str | None, Form()] = None,
) -> FileObject:
    """Upload a training file; 400 with every problem (file, line) when it is unusable."""
    if file is None:
        raise OpenAIError(400, "missing required parameter 'file'", param="file")
    if purpose is None:
        raise OpenAIError(400, "missing required parameter 'purpose'", param="purpose")
    return files.upload(
        plane,
        account.id,
        source=file.file,
        filename=file.filename or "upload.jsonl",
        purpose=purpose,
    )


@router.get("", response_model=Page[FileObject])
def list_files(
    plane: PlaneDep,
    account: OpenAIAccount,
    purpose: str | None = None,
    after: str | None = None,
    limit: str | None = None,
    order: str = "desc",
) -> dict[str, Any]:
    if order not in ("asc", "desc"):
        raise OpenAIError(400, "order is 'asc' or 'desc'", param="order")
    return files.list_files(
        plane,
        account.id,
        purpose=purpose,
        after=after,
        limit=page_size(limit, files.MAX_LIST, files.MAX_LIST),
        order=order,
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(plane: PlaneDep, account: OpenAIAccount, file_id: str) -> FileObject:
    return files.retrieve(plane, account.id, file_id)


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}, "text/csv": {}}}},
)
def file_content(plane: PlaneDep, account: OpenAIAccount, file_id: str) -> Response:
    content = files.content(plane, account.id, file_id)
    if isinstance(content, Path):
        return FileResponse(content, media_type="application/octet-stream")
    return Response(content, media_type="text/csv")


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(plane: PlaneDep, account: OpenAIAccount, file_id: str) -> FileDeleted:
    files.delete(plane, account.id, file_id)
    return FileDeleted(id=file_id)
