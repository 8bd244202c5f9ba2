"""``/v1/chat/completions`` on a fine-tuned model: the request checked and bounded, then
answered by llama.cpp, whole or as OpenAI's ``chat.completion.chunk`` stream."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tunery.openai_api.objects import OpenAIError
from tunery.openai_api.serving import CONTEXT_TOKENS, ModelPool, ServedGguf
from tunery.pipeline.datasets import ROLES

MAX_TOKENS = 1024
"""The most tokens one answer may have; also the default when the request names none."""
DEFAULT_MAX_TOKENS = 256
MAX_PROMPT_CHARS = 4 * CONTEXT_TOKENS
"""A prompt longer than this cannot fit the context, whatever the tokenizer."""
MAX_MESSAGES = 256
CHAT_ROLES = ("developer", *ROLES)
"""The dataset roles, and OpenAI's newer name for the system role."""


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    stream: bool


def parse_request(body: Any) -> ChatRequest:
    """A chat request within tunery's bounds; OpenAIError (400, ``param``) otherwise."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "missing required parameter 'model'", param="model")
    if body.get("n", 1) != 1:
        raise OpenAIError(400, "only n=1 is supported", param="n")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:
        tokens = DEFAULT_MAX_TOKENS
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
        raise OpenAIError(400, f"max_tokens must be from 1 to {MAX_TOKENS}", param="max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise OpenAIError(400, "stop is a string or up to 4 strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OpenAIError(400, "seed must be a whole number", param="seed")
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        max_tokens=tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=stop,
        seed=seed,
        stream=body.get("stream") is True,
    )


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpenAIError(400, f"{name} must be a number", param=name)
    if not low <= value <= high:
        raise OpenAIError(400, f"{name} must be from {low:g} to {high:g}", param=name)
    return float(value)


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_MESSAGES:
        raise OpenAIError(400, f"messages must list 1 to {MAX_MESSAGES} messages", param="messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages.[{index}]"
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise OpenAIError(
                400, f"role must be one of {', '.join(CHAT_ROLES)}", param=f"{where}.role"
            )
        role = "system" if message["role"] == "developer" else message["role"]
        messages.append({"role": role, "content": _text(message.get("content"), where)})
    if sum(len(message["content"]) for message in messages) > MAX_PROMPT_CHARS:
        raise OpenAIError(
            400,
            f"the messages are longer than {MAX_PROMPT_CHARS} characters; the models are "
            f"served with a {CONTEXT_TOKENS}-token context",
            param="messages",
            code="context_length_exceeded",
        )
    return messages


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise OpenAIError(
        400, "content must be text (images and audio are not supported)", param=f"{where}.content"
    )


def _arguments(request: ChatRequest, gguf: ServedGguf) -> dict[str, Any]:
    return {
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": list(dict.fromkeys([*gguf.stops, *request.stop])),
        "seed": request.seed,
    }


def _context_error(error: ValueError) -> OpenAIError:
    # llama.cpp refuses a prompt that, with max_tokens, does not fit the context.
    return OpenAIError(400, str(error), param="messages", code="context_length_exceeded")


def complete(pool: ModelPool, gguf: ServedGguf, request: ChatRequest) -> dict[str, Any]:
    """The whole answer as a ``chat.completion`` (blocking: call it off the event loop)."""
    with pool.lend(gguf) as llama:
        try:
            answer = llama.create_chat_completion(**_arguments(request, gguf))
        except ValueError as error:
            raise _context_error(error) from None
    answer["model"] = request.model
    return answer


def stream_chunks(
    pool: ModelPool, gguf: ServedGguf, request: ChatRequest
) -> Iterator[dict[str, Any]]:
    """The answer's ``chat.completion.chunk`` objects (blocking: pull them off the event
    loop). The model stays lent until the generator is exhausted or closed; the route pulls
    the first chunk before answering 200, so a prompt that does not fit still answers 400."""
    with pool.lend(gguf) as llama:
        try:
            chunks = llama.create_chat_completion(**_arguments(request, gguf), stream=True)
            first = next(chunks, None)
        except ValueError as error:
            raise _context_error(error) from None
        if first is None:
            return
        yield first
        for chunk in chunks:
            chunk["model"] = request.model
            yield chunk


def sse_lines(chunks: Iterator[dict[str, Any]], model: str) -> Iterator[str]:
    """Chunks as OpenAI streams them: ``data: {json}`` events, then ``data: [DONE]``."""
    for chunk in chunks:
        chunk["model"] = model
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
