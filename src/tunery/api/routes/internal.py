"""Worker-facing routes, authenticated by the attempt's fencing token (``tunery.wire.reports``).

A worker reads its spec and its run's datasets, posts reports, and uploads its bundles;
nothing here takes a path or file name from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import PlaneDep
from tunery.runs import attempts, transfers
from tunery.wire.reports import AttemptSpec, ReportAck, parse_batch

router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
TokenHeader = Annotated[str, Header(alias="X-Attempt-Token")]


@router.get("/attempts/{attempt_id}/spec", response_model=AttemptSpec)
def spec(plane: PlaneDep, attempt_id: str, token: TokenHeader) -> AttemptSpec:
    return attempts.attempt_spec(plane, attempt_id=attempt_id, token=token)


@router.post("/attempts/{attempt_id}/events", response_model=ReportAck)
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
    upload = transfers.BundleUpload(plane, attempt_id=attempt_id, token=token, kind=kind)
    await run_in_threadpool(upload.open)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(upload.write, chunk)
        await run_in_threadpool(upload.commit, sha256)
    finally:
        await run_in_threadpool(upload.discard)
    return Response(status_code=204)
