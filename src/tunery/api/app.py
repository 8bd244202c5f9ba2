"""The HTTP API (FastAPI). ``create_app`` wires settings, database, backend and scheduler.

Routes are thin: they authenticate, call ``tunery.runs.service`` and shape the answer. The
scheduler runs in a background thread for the app's lifetime. Errors map to status codes
in one place: invalid input 422 (with every problem), unknown or foreign ids 404, state
conflicts 409.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from tunery import __version__
from tunery.api.routes import credits, datasets, hub, internal, meta, runs
from tunery.api.streams import SharedReads
from tunery.backends.base import Backend
from tunery.backends.local import LocalBackend
from tunery.db import make_engine, make_sessions
from tunery.errors import ConfigError, DatasetError, TuneryError
from tunery.hub.s3 import StorageError
from tunery.hub.signing import load_secret
from tunery.runs.service import Conflict, ControlPlane, NotFound, StaleAttempt
from tunery.runs.store import EventNotifier
from tunery.scheduler.scheduler import SchedulerThread
from tunery.settings import Settings

logger = logging.getLogger(__name__)
WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
# The studio loads only its own files: no inline script, nothing from other origins.
STUDIO_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class Broadcast:
    """Lets event streams sleep until something new is committed (no polling per watcher)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self.generation = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self) -> None:
        """Called from any thread after a commit."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.generation += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait for a publish after generation ``seen``: True when woken, False on timeout.

        A publish that happened after the caller read ``generation`` returns at once, so a
        commit between a stream's read and its wait is never missed.
        """
        if self.generation != seen:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)


def create_app(
    settings: Settings,
    *,
    server_url: str,
    backend: Backend | None = None,
    run_scheduler: bool = True,
) -> FastAPI:
    engine = make_engine(settings.database_path)
    notifier = EventNotifier()
    plane = ControlPlane(
        settings=settings,
        sessions=make_sessions(engine),
        backend=backend or LocalBackend(),
        notifier=notifier,
        server_url=server_url,
    )
    broadcast = Broadcast()
    notifier.subscribe(broadcast.publish)
    scheduler = SchedulerThread(plane)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        broadcast.bind(asyncio.get_running_loop())
        if run_scheduler:
            scheduler.start()
        yield
        if run_scheduler:
            scheduler.stop()
        engine.dispose()

    app = FastAPI(title="tunery", version=__version__, lifespan=lifespan)
    app.state.plane = plane
    app.state.broadcast = broadcast
    app.state.shared_reads = SharedReads()
    app.state.secret = load_secret(settings.data_dir)

    @app.exception_handler(ConfigError)
    async def invalid_config(_: Request, error: ConfigError) -> JSONResponse:
        problems = [{"field": p.field, "message": p.message} for p in error.problems]
        return JSONResponse(
            status_code=422,
            content={
                "detail": {
                    "code": error.code,
                    "message": error.message,
                    "hint": error.hint,
                    "problems": problems,
                }
            },
        )

    @app.exception_handler(DatasetError)
    async def invalid_dataset(_: Request, error: DatasetError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={
                "detail": {
                    "code": error.code,
                    "message": error.message,
                    "hint": error.hint,
                    "problems": [problem.as_dict() for problem in error.problems],
                }
            },
        )

    @app.exception_handler(TuneryError)
    async def tunery_error(_: Request, error: TuneryError) -> JSONResponse:
        status = {NotFound: 404, Conflict: 409, StaleAttempt: 409, StorageError: 502}.get(
            type(error), 400
        )
        return JSONResponse(status_code=status, content={"detail": error.as_dict()})

    app.include_router(meta.router)
    app.include_router(datasets.router, prefix="/api/v1")
    app.include_router(runs.router, prefix="/api/v1")
    app.include_router(credits.router, prefix="/api/v1")
    app.include_router(hub.router)
    app.include_router(internal.router)

    @app.get("/", include_in_schema=False)
    def studio() -> FileResponse:
        """The web studio: one page that talks to this API with the user's token."""
        return FileResponse(
            WEB_ROOT / "index.html",
            headers={"Content-Security-Policy": STUDIO_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=WEB_ROOT / "static"), name="static")
    return app
