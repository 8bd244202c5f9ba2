"""``/v1/chat/completions`` and ``/v1/models``: the account's fine-tuned models, served."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tunery.api.deps import PlaneDep
from tunery.api.openai.common import OpenAIAccount, json_body
from tunery.openai_api import chat, mapping, serving
from tunery.openai_api.objects import Model, ModelList, OpenAIError

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList)
def list_models(plane: PlaneDep, account: OpenAIAccount) -> ModelList:
    """Every completed run of the account that exported a GGUF, by its model name."""
    return ModelList(data=serving.served_models(plane, account.id))


@router.get("/models/{model:path}", response_model=Model)
def retrieve_model(plane: PlaneDep, account: OpenAIAccount, model: str) -> Model:
    for served in serving.served_models(plane, account.id):
        if model in (served.id, mapping.run_id_of_model(served.id)):
            return served
    raise OpenAIError(404, f"The model {model!r} does not exist", param="model")


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "OpenAI's chat.completion object, or its chunks as Server-Sent Events",
        "content": {
            "application/json": {"schema": {"type": "object", "title": "ChatCompletion"}},
            "text/event-stream": {},
        },
    }
}


@router.post("/chat/completions", response_model=None, responses=COMPLETION_RESPONSES)
async def chat_completions(
    request: Request, plane: PlaneDep, account: OpenAIAccount
) -> dict[str, Any] | StreamingResponse:
    """Answer with the fine-tuned model (whole, or streamed as Server-Sent Events)."""
    body = await json_body(request)
    asked = chat.parse_request(body)
    gguf = await run_in_threadpool(serving.served_gguf, plane, account.id, asked.model)
    pool: serving.ModelPool = request.app.state.model_pool
    if not asked.stream:
        return await run_in_threadpool(chat.complete, pool, gguf, asked)
    chunks = chat.stream_chunks(pool, gguf, asked)
    first = await run_in_threadpool(next, chunks, None)  # 400 here, before the 200
    head = [first] if first is not None else []
    return StreamingResponse(
        chat.sse_lines(itertools.chain(head, chunks), asked.model),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
