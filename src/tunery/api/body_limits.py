"""Authentication before bodies, and a size cap on every body, at the ASGI level.

FastAPI reads (and, for multipart, spools) a request body while resolving a route's
parameters, before any dependency has checked the token. A hostile client could therefore
make the server buffer and parse hundreds of megabytes with no credentials at all. This
middleware runs first: a request that carries a body must present valid credentials before
one byte of the body is read — a bearer token on the API paths, the attempt's fencing
token (``X-Attempt-Token``) on a worker's ``/internal/attempts/{id}/`` paths; a body to any
other path is refused unread — and no body may exceed its path's cap, whether it announces
its length or streams it chunked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.api.auth import MISSING_TOKEN, TUNERY_CODE, UNKNOWN_TOKEN, AuthRefusal, bearer_token
from tunery.openai_api.objects import OpenAIError, auth_error
from tunery.wire.reports import ATTEMPT_TOKEN_HEADER, MAX_WORKER_FILE_BYTES

MIB = 1024 * 1024
FILE_UPLOAD_PATH = re.compile(r"/internal/attempts/[^/]+/(bundles|checkpoints)/[^/]+")
"""Worker uploads, matched by the whole route shape: an attempt id that reads "bundles"
must not lend a report route the bundle cap."""
WORKER_PATH = re.compile(r"/internal/attempts/([^/]+)/.+")
"""A worker route; the group is the attempt id its token must belong to."""
DIGITS = re.compile(r"[0-9]+")
"""A Content-Length: ASCII digits only (``str.isdigit`` also takes ``²`` and ``٣``)."""


@dataclass(frozen=True)
class BodyLimits:
    """Byte caps by kind of request; every one is documented in the README."""

    json_bytes: int = 1 * MIB
    """A submission payload is kilobytes; a megabyte leaves room for long sample prompts."""
    report_bytes: int = 4 * MIB
    """A worker's batch of reports; its reporter sends at most a megabyte at a time (a
    resumed run's step history in several reports)."""
    upload_bytes: int = 512 * MIB
    """A dataset upload (multipart); datasets are further capped by rows and decoded size."""
    bundle_bytes: int = MAX_WORKER_FILE_BYTES
    """A worker's bundle or checkpoint upload; the route reads it only after checking the
    attempt's token."""

    def for_request(self, path: str, content_type: str) -> int:
        return getattr(self, f"{kind_of(path, content_type)}_bytes")


def kind_of(path: str, content_type: str) -> str:
    """What a request's body is: ``bundle`` (a worker's file), ``report`` (a worker's JSON),
    ``upload`` (multipart) or ``json``."""
    if FILE_UPLOAD_PATH.fullmatch(path):
        return "bundle"
    if path.startswith("/internal/"):
        return "report"
    if content_type.startswith("multipart/form-data"):
        return "upload"
    return "json"


class BodyTooLarge(Exception):
    """The client sent more bytes than its path allows."""


def requires_token(path: str) -> bool:
    """Paths whose bodies are read only after the bearer token is verified."""
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

    ``token_is_valid`` (a bearer token) and ``attempt_token_is_valid`` (an attempt id and
    its fencing token) are called in a worker thread (they query the database) only for
    requests that carry a body: a bearer token on the threads ``threads_for`` gives for the
    path, else the server's pool. A worker whose token does not match gets 404, as from the
    worker routes themselves (the worker reads it as "fenced off"). No route outside these
    paths takes a body (``tests/unit/test_body_limits.py`` checks the app's routes).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token_is_valid: Callable[[str], bool],
        attempt_token_is_valid: Callable[[str, str], bool],
        limits: BodyLimits,
        threads_for: Callable[[str], anyio.CapacityLimiter | None] = lambda _: None,
    ) -> None:
        self.app = app
        self.token_is_valid = token_is_valid
        self.attempt_token_is_valid = attempt_token_is_valid
        self.limits = limits
        self.threads_for = threads_for

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
        elif (worker := WORKER_PATH.fullmatch(path)) is not None:
            token = headers.get(ATTEMPT_TOKEN_HEADER.lower(), b"").decode("latin-1")
            attempt_id = worker.group(1)
            if not token or not await anyio.to_thread.run_sync(
                self.attempt_token_is_valid, attempt_id, token
            ):
                await respond(send, 404, error_body(path, 404, "not_found", "no such attempt", ""))
                return
        content_type = headers.get("content-type", b"").decode("latin-1")
        limit = self.limits.for_request(path, content_type)
        announced = headers.get("content-length", b"").decode("latin-1")
        if "content-length" in headers and DIGITS.fullmatch(announced) is None:
            await respond(send, 400, not_a_length(path))
            return
        if "content-length" in headers and (len(announced) > 18 or int(announced) > limit):
            await respond(send, 413, too_large(path, limit))
            return
        counter = BodyCounter(receive, limit)
        if kind_of(path, content_type) in ("json", "report"):
            # A JSON body is read whole here (routes read it whole anyway) and checked once
            # for what no route can store, before any route sees it.
            try:
                body = await read_all(counter.receive)
            except BodyTooLarge:
                await respond(send, 413, too_large(path, limit))
                return
            problem = json_problem(body)
            if problem is not None:
                await respond(send, 400, error_body(path, 400, "invalid_json", problem, ""))
                return
            counter = BodyCounter(replay(body, receive), limit)
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
        valid = await anyio.to_thread.run_sync(
            self.token_is_valid, token, limiter=self.threads_for(path)
        )
        if not valid:
            return auth_refusal_body(path, UNKNOWN_TOKEN)
        return None


def not_a_length(path: str) -> bytes:
    return error_body(
        path,
        400,
        "invalid_content_length",
        "the Content-Length header is not a number of bytes",
        "send the body's length in ASCII digits, or send it chunked",
    )


def too_large(path: str, limit: int) -> bytes:
    return error_body(
        path,
        413,
        "payload_too_large",
        f"the request body is larger than {limit // MIB} MiB, the limit for this route",
        "send a smaller body; dataset uploads and their limits are described in the README",
    )


ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A UTF-16 surrogate written as a JSON escape: the only way a body can carry one."""


def json_problem(body: bytes) -> str | None:
    """Why a JSON body holds something no route can store, or None (a body that is not JSON
    at all is left to its route, which names what it expected).

    JSON may spell a lone UTF-16 surrogate (``"\\ud800"``); Python decodes it into a string
    that no UTF-8 encoder, and so no database or file, accepts."""
    if not ESCAPED_SURROGATE.search(body):
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "the body holds a string that is not text (a lone UTF-16 surrogate such as \\ud800)"
    return None


async def read_all(receive: Receive) -> bytes:
    """The whole body (``receive`` enforces the cap); what arrived if the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the client does next."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


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
