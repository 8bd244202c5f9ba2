"""The HTTP API (FastAPI). ``create_app`` wires settings, database, backend and scheduler.

Routes are thin: they authenticate, call a function of ``tunery.runs`` and return its
``tunery.wire.rest`` model; they hold no SQL. The background work (the scheduler, webhook
deliveries, chat's serving processes) starts and stops with the app, in its one lifespan.
Errors map to status codes in one place: invalid input 422 (the first problems, and how
many), unknown or foreign ids 404, state conflicts 409; every error body is
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
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery import __version__
from tunery.api import openai as openai_api
from tunery.api.body_limits import BodyGuard, BodyLimits
from tunery.api.openai.chat import CHAT_PATH
from tunery.api.request_log import RequestLog
from tunery.api.routes import credits, datasets, hub, internal, meta, runs
from tunery.api.routes import webhooks as webhooks_routes
from tunery.api.streams import Broadcast, SharedReads
from tunery.backends import open_backend
from tunery.backends.base import Backend
from tunery.errors import MAX_PROBLEMS, ConfigError, DatasetError, FieldProblem, TuneryError
from tunery.hub.s3 import StorageError
from tunery.hub.signing import load_secret
from tunery.pipeline.config import RunRecipe
from tunery.runs import attempts, leftovers
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
from tunery.serving.pool import Serving
from tunery.settings import Settings
from tunery.webhooks.delivery import Dispatcher
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


def _invalid(error: ConfigError) -> JSONResponse:
    problems = [{"field": p.field, "message": p.message} for p in error.problems]
    total = error.problems_total
    return _error(422, {**error.as_dict(), "problems": problems, "problems_total": total})


def request_problems(error: RequestValidationError) -> list[FieldProblem]:
    """FastAPI's validation errors as (dotted field, message): ``query.limit``,
    ``body.url``; the first ``MAX_PROBLEMS`` of them."""
    problems = []
    for item in error.errors()[:MAX_PROBLEMS]:
        field = ".".join(str(part) for part in item.get("loc", ())) or "request"
        problems.append(
            FieldProblem(field, str(item.get("msg", "invalid")).removeprefix("Value error, "))
        )
    return problems or [FieldProblem("request", "invalid request")]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConfigError)
    async def invalid_config(_: Request, error: ConfigError) -> JSONResponse:
        return _invalid(error)

    @app.exception_handler(DatasetError)
    async def invalid_dataset(_: Request, error: DatasetError) -> JSONResponse:
        problems = [problem.as_dict() for problem in error.problems]
        total = error.problems_total
        return _error(422, {**error.as_dict(), "problems": problems, "problems_total": total})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """A parameter FastAPI checks (a path, query or header value, a typed body): the
        first problems by field, never the values sent back; in OpenAI's shape on ``/v1``."""
        if openai_api.is_openai(request):
            return openai_api.invalid_request(error)
        problems = request_problems(error)
        return _invalid(ConfigError(problems, total=len(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body it cannot parse, a method not allowed, an unknown
        route) in the one error shape, or OpenAI's on ``/v1``; the routes' own
        HTTPExceptions already carry a detail object."""
        if openai_api.is_openai(request):
            return openai_api.http_refusal(request, error)
        if isinstance(error.detail, dict):
            detail = error.detail
        else:
            detail = {"code": f"http_{error.status_code}", "message": str(error.detail), "hint": ""}
        return JSONResponse(
            status_code=error.status_code, content={"detail": detail}, headers=error.headers
        )

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
    webhooks = Dispatcher(plane)
    serving = Serving(settings.serving)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """Every background thread of the server starts here and stops here: the
        scheduler, webhook deliveries, and chat's serving processes and their idle sweep;
        first, what a killed server left in the data dir goes."""
        broadcast.bind(asyncio.get_running_loop())
        for path in leftovers.sweep_at_start(plane):
            logger.info("removed %s, left by an earlier server", path.name)
        if run_scheduler:
            scheduler.start()
        webhooks.start()
        serving.start()
        try:
            yield
        finally:
            await serving.close()
            webhooks.stop()
            if run_scheduler:
                scheduler.stop()
            plane.close()

    app = FastAPI(title="tunery", version=__version__, lifespan=lifespan)
    app.state.plane = plane
    app.state.serving = serving
    app.state.broadcast = broadcast
    app.state.shared_reads = SharedReads()
    app.state.secret = load_secret(settings.data_dir)
    _add_error_handlers(app)
    openai_api.add_error_handler(app)
    app.add_middleware(
        BodyGuard,
        token_is_valid=lambda token: account_for_token(plane, token) is not None,
        attempt_token_is_valid=lambda attempt_id, token: attempts.token_is_valid(
            plane, attempt_id=attempt_id, token=token
        ),
        limits=BodyLimits(),
        # Chat requests check their keys on chat's own threads, never the pool the
        # workers' reports are served from.
        threads_for=lambda path: serving.threads if path == CHAT_PATH else None,
    )
    app.add_middleware(RequestLog)  # added last: outermost, so every answer has its id
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    app.include_router(meta.router, responses=ERRORS)
    app.include_router(datasets.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(runs.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(credits.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(hub.router, responses=ERRORS)
    app.include_router(internal.router)
    app.include_router(webhooks_routes.router, prefix="/api/v1", responses=ERRORS)
    app.include_router(openai_api.router)  # /v1: OpenAI's API

    @app.get("/", include_in_schema=False)
    def studio() -> FileResponse:
        """The web studio: one page that talks to this API with the user's token."""
        return FileResponse(
            WEB_ROOT / "index.html",
            headers={"Content-Security-Policy": STUDIO_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=WEB_ROOT / "static"), name="static")
    return app
