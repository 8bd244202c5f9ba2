"""What every ``/v1`` route shares: the caller's account (the tunery token is the API key),
page sizes, and the handler that writes ``OpenAIError`` in OpenAI's shape."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tunery.api.auth import AuthRefusal
from tunery.api.deps import PlaneDep, bearer_account
from tunery.db import Account
from tunery.openai_api.objects import OpenAIError, auth_error, unknown_route

MAX_PAGE = 100
WHOLE_NUMBER = re.compile(r"[0-9]{1,6}")
"""A page size as sent: ASCII digits (``str.isdigit`` also takes ``²``, which ``int``
refuses), few enough that converting them costs nothing."""


def openai_account(
    plane: PlaneDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Account:
    """The account whose tunery token is the bearer API key; 401 in OpenAI's shape."""
    found = bearer_account(plane, authorization)
    if isinstance(found, AuthRefusal):
        raise auth_error(found.message, found.hint)
    return found


OpenAIAccount = Annotated[Account, Depends(openai_account)]


def page_size(limit: str | None, default: int, maximum: int = MAX_PAGE) -> int:
    """``limit`` as a page size from 1 to ``maximum``; 400 (param ``limit``) otherwise."""
    if limit is None:
        return default
    if WHOLE_NUMBER.fullmatch(limit) is None or not 1 <= int(limit) <= maximum:
        raise OpenAIError(400, f"limit must be a whole number from 1 to {maximum}", param="limit")
    return int(limit)


async def json_body(request: Request) -> Any:
    """The request's JSON body; 400 for one that is not JSON, or nested too deep to parse
    (the parser gives up past about a thousand levels)."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        raise OpenAIError(400, "the request body is not valid JSON") from None


def add_error_handler(app: FastAPI) -> None:
    """``OpenAIError`` (raised on ``/v1`` routes only) answers ``{"error": {…}}``. The
    refusals FastAPI makes itself are answered by ``create_app``'s handlers, which hand those
    on ``/v1`` paths to ``http_refusal`` and ``invalid_request``."""

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, error: OpenAIError) -> JSONResponse:
        return _answer(error)


def http_refusal(request: Request, error: HTTPException) -> JSONResponse:
    """A refusal FastAPI made on a ``/v1`` path, in OpenAI's shape: an unknown route (404,
    saying what to use instead where OpenAI has the endpoint), a method the route does not
    take (405), any other."""
    if error.status_code == 404 and not isinstance(error.detail, dict):
        return _answer(unknown_route(request.method, request.url.path))
    if error.status_code == 405:
        refused = OpenAIError(
            405,
            f"{request.method} is not allowed on {request.url.path}",
            code="method_not_allowed",
            headers=dict(error.headers or {}),
        )
        return _answer(refused)
    message = error.detail.get("message") if isinstance(error.detail, dict) else error.detail
    return _answer(OpenAIError(error.status_code, str(message), headers=dict(error.headers or {})))


def invalid_request(error: RequestValidationError) -> JSONResponse:
    """A parameter of the wrong type on a ``/v1`` path: 400 naming the first."""
    first = error.errors()[0] if error.errors() else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    message = str(first.get("msg", "invalid request"))
    return _answer(OpenAIError(400, f"{param}: {message}" if param else message, param=param))


def is_openai(request: Request) -> bool:
    """Whether the request is on OpenAI's ``/v1`` API (refused in OpenAI's shape)."""
    return request.url.path.startswith("/v1/") or request.url.path == "/v1"


def _answer(error: OpenAIError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body(), headers=error.headers)
