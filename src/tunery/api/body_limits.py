"""Authentication before bodies, and a size cap on every body, at the ASGI level.

FastAPI reads (and, for multipart, spools) a request body while resolving a route's
parameters, before any dependency has checked the token. A hostile client could therefore
make the server buffer hundreds of megabytes with no credentials at all. This middleware
runs first: a request that carries a body to an authenticated path must present a valid
bearer token before one byte of the body is read, and no body may exceed its path's cap,
whether it announces its length or streams it chunked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.api.auth import MISSING_TOKEN, TUNERY_CODE, UNKNOWN_TOKEN, AuthRefusal, bearer_token
from tunery.openai_api.objects import OpenAIError, auth_error
from tunery.wire.reports import MAX_WORKER_FILE_BYTES

MIB = 1024 * 1024
FILE_UPLOAD_PATH = re.compile(r"/internal/attempts/[^/]+/(bundles|checkpoints)/[^/]+")
"""Worker uploads, matched by the whole route shape: an attempt id that reads "bundles"
must not lend a report route the bundle cap."""


@dataclass(frozen=True)
class BodyLimits:
    """Byte caps by kind of request; every one is documented in the README."""

    json_bytes: int = 1 * MIB
    """A submission payload is kilobytes; a megabyte leaves room for long sample prompts."""
    report_bytes: int = 16 * MIB
    """A worker's batch may carry a resumed run's whole step history."""
    upload_bytes: int = 512 * MIB
    """A dataset upload (multipart); datasets are further capped by rows and decoded size."""
    bundle_bytes: int = MAX_WORKER_FILE_BYTES
    """A worker's bundle or checkpoint upload; the route reads it only after checking the
    attempt's token."""

    def for_request(self, path: str, content_type: str) -> int:
        if FILE_UPLOAD_PATH.fullmatch(path):
            return self.bundle_bytes
        if path.startswith("/internal/"):
            return self.report_bytes
        if content_type.startswith("multipart/form-data"):
            return self.upload_bytes
        return self.json_bytes


class BodyTooLarge(Exception):
    """The client sent more bytes than its path allows."""


def requires_token(path: str) -> bool:
    """Paths whose bodies are read only after the bearer token is verified.

    Worker routes carry their own attempt token (checked against the database by the
    route), and everything else with a body lives under the API prefixes.
    """
    return path.startswith(("/api/", "/v1/"))


def error_body(path: str, status: int, code: str, message: str, hint: str) -> bytes:
    """The refusal in the shape the path's clients parse: tunery's, or OpenAI's on ``/v1``."""
    if path.startswith("/v1/"):
        text = f"{message}; {hint}" if hint else message
        return json.dumps(OpenAIError(status, text, code=code).body()).encode()
    return json.dumps({"detail": {"code": code, "message": message, "hint": hint}}).encode()


def auth_refusal_body(path: str, refusal: AuthRefusal) -> bytes:
    if path.startswith("/v1/"):
        return json.dumps(auth_error(refusal.message, refusal.hint).body()).encode()
    return error_body(path, 401, TUNERY_CODE, refusal.message, refusal.hint)


class BodyGuard:
    """ASGI middleware: 401 before reading a body without a valid token; 413 past a cap.

    ``token_is_valid`` is called in a worker thread (it queries the database) only for
    requests that carry a body to an authenticated path.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token_is_valid: Callable[[str], bool],
        limits: BodyLimits,
    ) -> None:
        self.app = app
        self.token_is_valid = token_is_valid
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value for key, value in scope["headers"]}
        path: str = scope["path"]
        if requires_token(path):
            refusal = await self._authenticate(path, headers.get("authorization", b""))
            if refusal is not None:
                await respond(send, 401, refusal)
                return
        limit = self.limits.for_request(path, headers.get("content-type", b"").decode("latin-1"))
        announced = headers.get("content-length")
        if announced is not None and (not announced.isdigit() or int(announced) > limit):
            await respond(send, 413, too_large(path, limit))
            return
        counter = BodyCounter(receive, limit)
        replaced = False

        async def replacing_send(message: Message) -> None:
            # Past the cap FastAPI turns the abandoned read into some error answer of its
            # own; the client is told the truth instead.
            nonlocal replaced
            if not counter.exceeded:
                await send(message)
            elif not replaced:
                replaced = True
                await respond(send, 413, too_large(path, limit))

        try:
            await self.app(scope, counter.receive, replacing_send)
        except BodyTooLarge:
            if not replaced:
                await respond(send, 413, too_large(path, limit))

    async def _authenticate(self, path: str, authorization: bytes) -> bytes | None:
        """None when the header holds a valid bearer token, else the 401 body."""
        token = bearer_token(authorization.decode("latin-1"))
        if token is None:
            return auth_refusal_body(path, MISSING_TOKEN)
        if not await run_in_threadpool(self.token_is_valid, token):
            return auth_refusal_body(path, UNKNOWN_TOKEN)
        return None


def too_large(path: str, limit: int) -> bytes:
    return error_body(
        path,
        413,
        "payload_too_large",
        f"the request body is larger than {limit // MIB} MiB, the limit for this route",
        "send a smaller body; dataset uploads and their limits are described in the README",
    )


class BodyCounter:
    """Passes body chunks through while their total stays within ``limit``."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._received = 0
        self.exceeded = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self.exceeded = True
                raise BodyTooLarge
        return message


async def respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The body was not read: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
