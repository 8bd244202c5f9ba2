"""What the API process and a serving host say to each other: one JSON object per line.

The API process writes to the host's stdin:

- ``{"op": "generate", "id": ID, "request": GenerationRequest}``: answer this request;
- ``{"op": "cancel", "id": ID}``: stop the generation ``ID`` at its next token.

The host writes to its stdout, after loading its model, ``{"kind": "ready", "rss_bytes":
N}`` (or ``{"kind": "failed", "message": …}`` and exits); then, for each request, ``chunk``
lines (streamed requests) or one ``result`` line, or one ``error`` line, and always an
``end`` line last, so the API process knows the host is free again.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict

MAX_LINE_BYTES = 64 * 2**20
"""The longest line either side reads: a whole answer with log probabilities."""


class GenerationRequest(TypedDict):
    """A chat request the API process checked and bounded (``openai_api.chat``)."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    max_tokens_asked: bool
    """Whether the client set ``max_tokens``: then a prompt leaving less room is refused;
    the default is cut to the room left."""
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[str, float]
    stop: list[str]
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    response_format: dict[str, Any]
    """``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type": "json_schema",
    "schema": {...}}``."""
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    """``"none"``, ``"auto"``, ``"required"`` or ``{"name": FUNCTION}``."""
    parallel_tool_calls: bool


class HostError(TypedDict):
    status: int
    message: str
    param: str | None
    code: str | None


MessageKind = Literal["ready", "failed", "chunk", "result", "error", "end"]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    return json.loads(line)
