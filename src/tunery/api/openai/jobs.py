"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events,
checkpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool

from tunery.api.deps import PlaneDep
from tunery.api.openai.common import OpenAIAccount, json_body, page_size
from tunery.api.openapi import request_body
from tunery.openai_api import jobs, mapping, progress
from tunery.openai_api.objects import (
    Checkpoint,
    FineTuningJob,
    JobCreateRequest,
    JobEvent,
    Page,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai"])


@router.post(
    "",
    response_model=FineTuningJob,
    openapi_extra=request_body(JobCreateRequest, tunery="RunRecipe"),
)
async def create_job(
    request: Request,
    plane: PlaneDep,
    account: OpenAIAccount,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> FineTuningJob:
    """Submit a run from OpenAI's job parameters; tunery's own settings ride in ``tunery``."""
    body = await json_body(request)
    return await run_in_threadpool(
        jobs.create_job, plane, account.id, body, idempotency_key=idempotency_key
    )


@router.get("", response_model=Page[FineTuningJob])
def list_jobs(
    request: Request,
    plane: PlaneDep,
    account: OpenAIAccount,
    after: str | None = None,
    limit: str | None = None,
) -> dict[str, Any]:
    """Newest first; ``metadata[k]=v`` filters, ``metadata=null`` keeps jobs without any."""
    return jobs.list_jobs(
        plane,
        account.id,
        after=after,
        limit=page_size(limit, 20),
        metadata=mapping.query_metadata(list(request.query_params.multi_items())),
    )


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(plane: PlaneDep, account: OpenAIAccount, job_id: str) -> FineTuningJob:
    return jobs.get_job(plane, account.id, job_id)


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(plane: PlaneDep, account: OpenAIAccount, job_id: str) -> FineTuningJob:
    return jobs.cancel_job(plane, account.id, job_id)


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(plane: PlaneDep, account: OpenAIAccount, job_id: str) -> FineTuningJob:
    """Pause: the run saves a checkpoint after its current step, frees its node and stops
    billing; ``paused`` once it did."""
    return jobs.pause_job(plane, account.id, job_id)


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(plane: PlaneDep, account: OpenAIAccount, job_id: str) -> FineTuningJob:
    """Queue a paused job again; it continues from its checkpoint."""
    return jobs.resume_job(plane, account.id, job_id)


@router.get("/{job_id}/events", response_model=Page[JobEvent])
def list_events(
    plane: PlaneDep,
    account: OpenAIAccount,
    job_id: str,
    after: str | None = None,
    limit: str | None = None,
) -> dict[str, Any]:
    """Newest first; the next page is ``after=<id of the last event>``."""
    return progress.list_events(plane, account.id, job_id, after=after, limit=page_size(limit, 20))


@router.get("/{job_id}/checkpoints", response_model=Page[Checkpoint])
def list_checkpoints(
    plane: PlaneDep,
    account: OpenAIAccount,
    job_id: str,
    after: str | None = None,
    limit: str | None = None,
) -> dict[str, Any]:
    return progress.list_checkpoints(
        plane, account.id, job_id, after=after, limit=page_size(limit, 10)
    )
