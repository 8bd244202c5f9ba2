"""Worker-facing routes, authenticated by the attempt's fencing token (``tunery.wire.reports``).

A worker reads its spec, its run's datasets and the adapter it starts from, posts reports,
uploads its bundles, and, on a cluster without a shared checkpoint directory, uploads its
checkpoints and downloads the newest; nothing here takes a path or file name from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import PlaneDep
from tunery.api.openapi import request_body
from tunery.hub.storage import PresignedUrl
from tunery.runs import attempts, transfers
from tunery.wire.reports import (
    ATTEMPT_TOKEN_HEADER,
    AttemptSpec,
    ReportAck,
    ReportBatch,
    parse_batch,
)

router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
TokenHeader = Annotated[str, Header(alias=ATTEMPT_TOKEN_HEADER)]


@router.get("/attempts/{attempt_id}/spec", response_model=AttemptSpec)
def spec(plane: PlaneDep, attempt_id: str, token: TokenHeader) -> AttemptSpec:
    return attempts.attempt_spec(plane, attempt_id=attempt_id, token=token)


@router.post(
    "/attempts/{attempt_id}/events",
    response_model=ReportAck,
    openapi_extra=request_body(ReportBatch),
)
def events(
    plane: PlaneDep, attempt_id: str, token: TokenHeader, body: Annotated[Any, Body()]
) -> ReportAck:
    """A batch of reports; 422 naming each malformed field, 409 for a fenced-off attempt."""
    batch = parse_batch(body)
    return attempts.report(plane, attempt_id=attempt_id, token=token, batch=batch)


@router.get("/attempts/{attempt_id}/datasets/{dataset_id}")
def dataset(plane: PlaneDep, attempt_id: str, dataset_id: str, token: TokenHeader) -> FileResponse:
    """A dataset of the attempt's own run; 404 for any other id."""
    path = transfers.dataset_file(plane, attempt_id=attempt_id, token=token, dataset_id=dataset_id)
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/attempts/{attempt_id}/init-adapter", response_model=None)
def init_adapter(plane: PlaneDep, attempt_id: str, token: TokenHeader) -> Response:
    """The LoRA bundle of the run the attempt's run starts from (``init_from``): the file, or
    a redirect to the store's presigned URL (fetched without the attempt's token); 404 if
    there is none."""
    source, filename = transfers.init_adapter_source(plane, attempt_id=attempt_id, token=token)
    if isinstance(source, PresignedUrl):
        return RedirectResponse(source.url, status_code=307)
    return FileResponse(source, media_type="application/zip", filename=filename)


@router.put("/attempts/{attempt_id}/bundles/{kind}", status_code=204)
async def bundle(
    plane: PlaneDep,
    request: Request,
    attempt_id: str,
    kind: Literal["lora", "gguf"],
    token: TokenHeader,
    sha256: Annotated[str | None, Header(alias="X-Content-SHA256")] = None,
) -> Response:
    """The run's ``kind`` bundle, streamed to disk; the server names the file. 409 for a
    fenced-off attempt, 413 past the bundle cap, 400 when the digest differs."""
    upload = transfers.bundle_upload(plane, attempt_id=attempt_id, token=token, kind=kind)
    await _receive(request, upload, sha256)
    return Response(status_code=204)


@router.put("/attempts/{attempt_id}/checkpoints/{step}", status_code=204)
async def checkpoint(
    plane: PlaneDep,
    request: Request,
    attempt_id: str,
    step: Annotated[int, Path(ge=1, le=transfers.MAX_CHECKPOINT_STEP)],
    token: TokenHeader,
    sha256: Annotated[str | None, Header(alias="X-Content-SHA256")] = None,
) -> Response:
    """The complete checkpoint at ``step``, as an archive the server stores unopened; the
    run keeps its newest ones. 409 for a fenced-off attempt, 413 past the bundle cap."""
    upload = transfers.checkpoint_upload(plane, attempt_id=attempt_id, token=token, step=step)
    await _receive(request, upload, sha256)
    return Response(status_code=204)


@router.get("/attempts/{attempt_id}/checkpoints/newest", response_model=None)
def newest_checkpoint(plane: PlaneDep, attempt_id: str, token: TokenHeader) -> Response:
    """The run's newest checkpoint archive, its step in ``X-Checkpoint-Step``; 204 if none."""
    newest = transfers.newest_checkpoint(plane, attempt_id=attempt_id, token=token)
    if newest is None:
        return Response(status_code=204)
    step, path = newest
    return FileResponse(
        path, media_type="application/zip", headers={"X-Checkpoint-Step": str(step)}
    )


async def _receive(request: Request, upload: transfers.FileUpload, sha256: str | None) -> None:
    await run_in_threadpool(upload.open)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(upload.write, chunk)
        await run_in_threadpool(upload.commit, sha256)
    finally:
        await run_in_threadpool(upload.discard)
