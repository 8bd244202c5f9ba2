"""``/v1/chat/completions`` and ``/v1/models``: the account's fine-tuned models, served.

Chat never waits in the server's thread pool, which serves worker reports, heartbeats and
every other route: the route is a coroutine, its few database reads (the caller's key, also
the body guard's check of it, and the model's file) run on ``Serving.threads``, a few
threads of its own; admission waits on the event loop, and the answer streams from a
serving process (``tunery.serving``) over a pipe.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.auth import AuthRefusal
from tunery.api.deps import PlaneDep, bearer_account
from tunery.api.openai.common import OpenAIAccount, json_body
from tunery.api.openapi import open_body
from tunery.db import Account
from tunery.openai_api import chat, serving
from tunery.openai_api.objects import Model, ModelDeleted, ModelList, OpenAIError, auth_error
from tunery.serving.admission import Busy
from tunery.serving.pool import ServedModel, Serving, ServingFailed
from tunery.wire import model_names

router = APIRouter(prefix="/v1", tags=["openai"])
CHAT_PATH = "/v1/chat/completions"


@router.get("/models", response_model=ModelList)
def list_models(plane: PlaneDep, account: OpenAIAccount) -> ModelList:
    """Every completed run of the account that exported a GGUF, by its model name."""
    return ModelList(data=serving.served_models(plane, account.id))


@router.get("/models/{model:path}", response_model=Model)
def retrieve_model(plane: PlaneDep, account: OpenAIAccount, model: str) -> Model:
    for served in serving.served_models(plane, account.id):
        if model in (served.id, model_names.run_id_of_model(served.id)):
            return served
    raise OpenAIError(404, f"The model {model!r} does not exist", param="model")


@router.delete("/models/{model:path}", response_model=ModelDeleted)
def delete_model(plane: PlaneDep, account: OpenAIAccount, model: str) -> ModelDeleted:
    """Delete a fine-tuned model: its Hub entry, so its LoRA and GGUF bundles too."""
    return ModelDeleted(id=serving.delete_model(plane, account.id, model))


async def chat_account(
    request: Request,
    plane: PlaneDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Account:
    """The caller's account, looked up on chat's own threads; 401 in OpenAI's shape."""
    found = await anyio.to_thread.run_sync(
        bearer_account, plane, authorization, limiter=request.app.state.serving.threads
    )
    if isinstance(found, AuthRefusal):
        raise auth_error(found.message, found.hint)
    return found


ChatAccount = Annotated[Account, Depends(chat_account)]

COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "OpenAI's chat.completion object, or its chunks as Server-Sent Events",
        "content": {
            "application/json": {"schema": {"type": "object", "title": "ChatCompletion"}},
            "text/event-stream": {},
        },
    }
}


@router.post(
    "/chat/completions",
    response_model=None,
    responses=COMPLETION_RESPONSES,
    openapi_extra=open_body(chat.SUPPORTED, required=("model", "messages")),
)
async def chat_completions(
    request: Request, plane: PlaneDep, account: ChatAccount
) -> JSONResponse | StreamingResponse:
    """Answer with the fine-tuned model (whole, or streamed as Server-Sent Events)."""
    body = await json_body(request)
    service: Serving = request.app.state.serving
    asked = chat.parse_request(body, context_tokens=service.settings.context_tokens)
    gguf = await anyio.to_thread.run_sync(
        serving.served_gguf,
        plane,
        account.id,
        asked.model,
        limiter=request.app.state.serving.threads,
    )
    answer = service.answer(
        account_id=account.id,
        model=ServedModel(key=gguf.key, path=gguf.path),
        request=asked.generation(gguf.stops),
    )
    first = await _first(answer)  # refusals answer here, before the 200
    if not asked.stream:
        await anext(answer, None)  # the host's end: the model is free again
        return JSONResponse(first["data"])
    return StreamingResponse(
        _events(first, answer),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _first(answer: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The host's first message; a refusal (busy, unservable, a 400 of the host) raises."""
    try:
        first = await anext(answer)
    except Busy as busy:
        raise OpenAIError(
            429, busy.message, code=busy.code, headers={"Retry-After": str(busy.retry_after)}
        ) from None
    except ServingFailed as failed:
        raise OpenAIError(failed.status, failed.message, code=failed.code) from None
    if first["kind"] == "error":
        await anext(answer, None)
        raise _host_error(first)
    return first


def _host_error(message: dict[str, Any]) -> OpenAIError:
    return OpenAIError(
        message["status"], message["message"], param=message["param"], code=message["code"]
    )


async def _events(
    first: dict[str, Any], answer: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[str]:
    """Chunks as OpenAI streams them: ``data: {json}`` events, then ``data: [DONE]``; a
    failure midway is an ``error`` object, as OpenAI sends one."""
    yield f"data: {json.dumps(first['data'])}\n\n"
    try:
        async for message in answer:
            if message["kind"] == "error":
                yield f"data: {json.dumps(_host_error(message).body())}\n\n"
                return
            yield f"data: {json.dumps(message['data'])}\n\n"
    except ServingFailed as failed:
        error = OpenAIError(failed.status, failed.message, code=failed.code)
        yield f"data: {json.dumps(error.body())}\n\n"
        return
    yield "data: [DONE]\n\n"
