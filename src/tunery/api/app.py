"""The HTTP API (FastAPI). ``create_app`` wires settings, database, backend and scheduler.

Routes are thin: they authenticate, call a function of ``tunery.runs`` and return its
``tunery.wire.rest`` model; they hold no SQL. The scheduler runs in a background thread for
the app's lifetime. Errors map to status codes in one place: invalid input 422 (with every
problem), unknown or foreign ids 404, state conflicts 409; every error body is
``ErrorResponse``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from tunery import __version__
from tunery.api import openai as openai_api
from tunery.api.body_limits import BodyGuard, BodyLimits
from tunery.api.routes import credits, datasets, hub, internal, meta, runs
from tunery.api.streams import Broadcast, SharedReads
from tunery.backends import open_backend
from tunery.backends.base import Backend
from tunery.errors import ConfigError, DatasetError, TuneryError
from tunery.hub.s3 import StorageError
from tunery.hub.signing import load_secret
from tunery.pipeline.config import RunRecipe
from tunery.runs.accounts import account_for_token
from tunery.runs.plane import (
    Conflict,
    ControlPlane,
    NotFound,
    QuotaExceeded,
    StaleAttempt,
    TooManyQueued,
)
from tunery.scheduler.scheduler import SchedulerThread
from tunery.settings import Settings
from tunery.wire.rest import ErrorResponse

logger = logging.getLogger(__name__)
WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
# The studio loads only its own files: no inline script, nothing from other origins.
STUDIO_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing or unknown token"),
        (404, "Unknown id, or another account's"),
        (409, "The resource's state does not allow it"),
        (413, "The body, or the account's storage quota, is too large"),
        (422, "Invalid input, with every problem"),
        (429, "The account has as many queued runs as the server allows"),
    )
}


def _error(status: int, detail: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConfigError)
    async def invalid_config(_: Request, error: ConfigError) -> JSONResponse:
        problems = [{"field": p.field, "message": p.message} for p in error.problems]
        return _error(422, {**error.as_dict(), "problems": problems})

    @app.exception_handler(DatasetError)
    async def invalid_dataset(_: Request, error: DatasetError) -> JSONResponse:
        problems = [problem.as_dict() for problem in error.problems]
        return _error(422, {**error.as_dict(), "problems": problems})

    @app.exception_handler(TuneryError)
    async def tunery_error(_: Request, error: TuneryError) -> JSONResponse:
        status = {
            NotFound: 404,
            Conflict: 409,
            StaleAttempt: 409,
            QuotaExceeded: 413,
            TooManyQueued: 429,
            StorageError: 502,
        }.get(type(error), 400)
        return _error(status, error.as_dict())


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the submission payload, which the route reads raw."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        recipe = RunRecipe.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(recipe.pop("$defs", {}))
        components["RunRecipe"] = recipe
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(
    settings: Settings,
    *,
    server_url: str,
    backend: Backend | None = None,
    run_scheduler: bool = True,
) -> FastAPI:
    plane = ControlPlane.open(
        settings, backend=backend or open_backend(settings), server_url=server_url
    )
    broadcast = Broadcast()
    plane.notifier.subscribe(broadcast.publish)
    scheduler = SchedulerThread(plane)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        broadcast.bind(asyncio.get_running_loop())
        if run_scheduler:
            scheduler.start()
        yield
        if run_scheduler:
            scheduler.stop()
        plane.close()

    app = FastAPI(title="tunery", version=__version__, lifespan=lifespan)
    app.state.plane = plane
    app.state.broadcast = broadcast
    app.state.shared_reads = SharedReads()
    app.state.secret = load_secret(settings.data_dir)
    _add_error_handlers(app)
    openai_api.add_error_handler(app)
    app.add_middleware(
        BodyGuard,
        token_is_valid=lambda token: account_for_token(plane, token) is not None,
        limits=BodyLimits(),
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    app.include_router(meta.router, responses=ERRORS)
    app.include_router(datasets.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(runs.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(credits.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(hub.router, responses=ERRORS)
    app.include_router(internal.router)
    app.include_router(openai_api.router)  # /v1 (OpenAI's API) and /api/v1/webhooks

    @app.get("/", include_in_schema=False)
    def studio() -> FileResponse:
        """The web studio: one page that talks to this API with the user's token."""
        return FileResponse(
            WEB_ROOT / "index.html",
            headers={"Content-Security-Policy": STUDIO_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=WEB_ROOT / "static"), name="static")
    return app
