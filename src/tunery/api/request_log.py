"""A request id on every answer, and one line in the server's log per request.

``RequestLog`` is the outermost middleware: every answer, the body guard's refusals and
errors nothing handled included, carries ``x-request-id`` (``req_…``, as OpenAI names
them; the ``openai`` SDK shows it as ``_request_id``), and the log line of the request says
the same id, its method, path, status and duration, so a user quoting an id finds its line.
An exception that reached this far is answered 500 here, with the id, and logged with its
traceback.
"""

from __future__ import annotations

import json
import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.openai_api.objects import OpenAIError

logger = logging.getLogger(__name__)
HEADER = b"x-request-id"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        except Exception:
            logger.exception("%s %s %s failed", request_id, scope["method"], scope["path"])
            if status == 0:
                await _internal_error(with_id, scope["path"])
        finally:
            milliseconds = (time.perf_counter() - started) * 1000
            logger.info(
                "%s %s %s %d %.0fms",
                request_id,
                scope["method"],
                scope["path"],
                status,
                milliseconds,
            )


async def _internal_error(send: Send, path: str) -> None:
    """A 500 in the shape the path's clients read: OpenAI's on ``/v1``, tunery's else."""
    message = "the server failed to answer; its log has the details under this request's id"
    if path.startswith("/v1/"):
        body = OpenAIError(500, message).body()
    else:
        body = {"detail": {"code": "internal_error", "message": message, "hint": ""}}
    encoded = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(encoded)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": encoded})
