"""OpenAI's fine-tuning API on ``/v1`` of the tunery server (see docs/openai.md).

``router`` carries every ``/v1`` route; ``add_error_handler`` makes ``OpenAIError`` answer
in OpenAI's shape, and ``http_refusal`` and ``invalid_request`` answer FastAPI's own
refusals on ``/v1`` paths. ``create_app`` includes both, and starts chat serving
(``tunery.serving``) with the server's other background work in its one lifespan.
"""

from __future__ import annotations

from fastapi import APIRouter

from tunery.api.openai import chat, files, jobs
from tunery.api.openai.common import add_error_handler, http_refusal, invalid_request, is_openai

router = APIRouter()
for part in (files, jobs, chat):
    router.include_router(part.router)

__all__ = ["add_error_handler", "http_refusal", "invalid_request", "is_openai", "router"]
