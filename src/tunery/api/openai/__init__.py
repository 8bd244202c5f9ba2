"""OpenAI's fine-tuning API on ``/v1`` of the tunery server (see docs/openai.md).

``router`` carries every ``/v1`` route, tunery's ``/api/v1/webhooks``, and in its lifespan
the webhook delivery thread and the chat model pool; ``add_error_handler`` makes
``OpenAIError`` answer in OpenAI's shape. ``create_app`` includes both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from tunery.api.openai import chat, files, jobs, webhooks
from tunery.api.openai.common import add_error_handler
from tunery.openai_api.serving import ModelPool
from tunery.openai_api.webhooks import Dispatcher


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    dispatcher = Dispatcher(app.state.plane)
    pool = ModelPool()
    app.state.model_pool = pool
    dispatcher.start()
    pool.start()
    try:
        yield
    finally:
        dispatcher.stop()
        pool.close()


router = APIRouter(lifespan=lifespan)
for part in (files, jobs, chat, webhooks):
    router.include_router(part.router)

__all__ = ["add_error_handler", "router"]
