"""``/v1/chat/completions``: OpenAI's chat parameters, each honoured or refused by name.

``parse_request`` checks and bounds a request body and returns a ``ChatRequest``; its
``generation`` is what a serving host answers (``tunery.serving.generate`` says how each
parameter is honoured). A parameter tunery cannot honour is a 400 naming it (``param``),
never dropped: ``UNSUPPORTED`` says why for OpenAI's own, and any other name is unknown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunery.openai_api.objects import OpenAIError, finite_number
from tunery.serving.protocol import GenerationRequest
from tunery.settings import ServingSettings

MAX_TOKENS = 1024
"""The most tokens one answer may have."""
DEFAULT_MAX_TOKENS = 256
"""The answer's length when the request names none (cut to the room the context leaves)."""
MAX_MESSAGES = 256
CHARS_PER_TOKEN = 4
"""Prompts longer than this many characters per context token are refused unread."""
MAX_PROMPT_CHARS = CHARS_PER_TOKEN * ServingSettings.model_fields["context_tokens"].default
"""The bound with the default context."""
MAX_CHOICES = 8
"""The most choices (``n``) one request may ask for; they are generated one after another."""
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024
"""The largest JSON schema (``response_format`` or a tool's parameters), as JSON text."""
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ROLES = ("system", "developer", "user", "assistant", "tool")
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})

SUPPORTED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "store",
        "modalities",
        "service_tier",
    }
)
"""Parameters tunery takes (``user`` and ``safety_identifier`` are accepted and not kept;
``store`` only false, ``modalities`` only text, ``service_tier`` only auto or default)."""
UNSUPPORTED = {
    "functions": "it is deprecated: give tools instead",
    "function_call": "it is deprecated: give tool_choice instead",
    "audio": "the models answer in text only",
    "prediction": "predicted outputs are not available",
    "web_search_options": "the models cannot search the web",
    "reasoning_effort": "the models have no separate reasoning",
    "verbosity": "the models have no verbosity setting",
    "metadata": "metadata belongs to stored completions, and tunery stores none",
    "prompt_cache_key": "prompts are not cached across requests",
}
"""OpenAI's parameters tunery refuses, and why."""


@dataclass(frozen=True)
class ChatRequest:
    model: str
    stream: bool
    fields: dict[str, Any]
    """The checked parameters, as ``GenerationRequest`` names them (stops excepted)."""

    def generation(self, model_stops: list[str]) -> GenerationRequest:
        """What the serving host answers: the model's own stop strings join the request's."""
        stops = list(dict.fromkeys([*model_stops, *self.fields["stop"]]))
        return GenerationRequest(**{**self.fields, "model": self.model, "stop": stops})  # type: ignore[typeddict-item]


def parse_request(body: Any, *, context_tokens: int) -> ChatRequest:
    """A chat request within tunery's bounds; OpenAIError (400, ``param``) otherwise."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for name in body:
        if name in UNSUPPORTED:
            raise OpenAIError(400, f"{name} is not supported: {UNSUPPORTED[name]}", param=name)
        if name not in SUPPORTED:
            raise OpenAIError(400, f"unknown parameter {name!r}", param=name)
    _accepted_only(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "missing required parameter 'model'", param="model")
    stream = _flag(body, "stream")
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    response_format = _response_format(body.get("response_format"))
    if response_format["type"] != "text" and tool_choice not in ("none", "auto"):
        raise OpenAIError(
            400,
            "response_format cannot apply while tool_choice forces a tool call (the call's "
            "arguments follow the tool's parameters schema)",
            param="response_format",
        )
    logprobs = _flag(body, "logprobs")
    top_logprobs = _whole(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if "top_logprobs" in body and body["top_logprobs"] is not None and not logprobs:
        raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    tokens_param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(tokens_param) is not None
    fields: dict[str, Any] = {
        "messages": _messages(body.get("messages"), context_tokens),
        "max_tokens": _whole(body, tokens_param, DEFAULT_MAX_TOKENS, 1, MAX_TOKENS),
        "max_tokens_asked": asked,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "logit_bias": _logit_bias(body.get("logit_bias")),
        "stop": _stops(body.get("stop")),
        "seed": _seed(body.get("seed")),
        "n": _whole(body, "n", 1, 1, MAX_CHOICES),
        "stream": stream,
        "include_usage": _include_usage(body.get("stream_options"), stream),
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
        "response_format": response_format,
        "tools": tools,
        "tool_choice": tool_choice,
        "parallel_tool_calls": _flag(body, "parallel_tool_calls", default=True),
    }
    return ChatRequest(model=model, stream=stream, fields=fields)


def _accepted_only(body: Mapping[str, Any]) -> None:
    """The parameters tunery takes with some values only."""
    if body.get("store") not in (None, False):
        raise OpenAIError(400, "store must be false: tunery stores no completions", param="store")
    if body.get("modalities") not in (None, ["text"]):
        raise OpenAIError(400, 'modalities may only be ["text"]', param="modalities")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise OpenAIError(400, "service_tier may only be 'auto' or 'default'", param="service_tier")
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 512):
            raise OpenAIError(400, f"{name} must be a string of up to 512 characters", param=name)


def _flag(body: Mapping[str, Any], name: str, *, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise OpenAIError(400, f"{name} must be true or false", param=name)
    return value


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not finite_number(value):
        raise OpenAIError(400, f"{name} must be a number", param=name)
    if not low <= value <= high:
        raise OpenAIError(400, f"{name} must be from {low:g} to {high:g}", param=name)
    return float(value)


def _whole(body: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OpenAIError(400, f"{name} must be a whole number from {low} to {high}", param=name)
    return value


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
        raise OpenAIError(400, "seed must be a whole number", param="seed")
    return value % 2**32


def _stops(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stops)
    ):
        raise OpenAIError(
            400,
            f"stop is a string or up to {MAX_STOPS} strings (1 to 256 characters)",
            param="stop",
        )
    return stops


def _logit_bias(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise OpenAIError(
            400, f"logit_bias maps up to {MAX_LOGIT_BIAS} token ids to biases", param="logit_bias"
        )
    bias = {}
    for key, amount in value.items():
        if not key.isascii() or not key.isdigit() or len(key) > 9:
            raise OpenAIError(
                400, f"logit_bias key {key[:20]!r} is not a token id", param="logit_bias"
            )
        if not finite_number(amount) or not -100 <= amount <= 100:
            raise OpenAIError(
                400,
                f"logit_bias of token {key} must be a number from -100 to 100",
                param="logit_bias",
            )
        bias[str(int(key))] = float(amount)
    return bias


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise OpenAIError(
            400, "stream_options is only allowed with stream: true", param="stream_options"
        )
    if not isinstance(options, dict):
        raise OpenAIError(400, "stream_options must be an object", param="stream_options")
    for key in options:
        if key not in ("include_usage", "include_obfuscation"):
            raise OpenAIError(400, f"unknown parameter {key!r}", param=f"stream_options.{key}")
    if options.get("include_obfuscation"):
        raise OpenAIError(
            400,
            "include_obfuscation is not supported: chunks are not padded",
            param="stream_options.include_obfuscation",
        )
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise OpenAIError(
            400, "include_usage must be true or false", param="stream_options.include_usage"
        )
    return usage


def _schema(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OpenAIError(400, f"{param} must be a JSON schema object", param=param)
    if len(json.dumps(value)) > MAX_SCHEMA_BYTES:
        raise OpenAIError(
            400, f"{param} is larger than {MAX_SCHEMA_BYTES // 1024} KiB as JSON", param=param
        )
    return value


def _response_format(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "text"}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        extra = sorted(set(value) - {"type"})
        if extra:
            raise OpenAIError(
                400, f"unknown parameter {extra[0]!r}", param=f"response_format.{extra[0]}"
            )
        return {"type": kind}
    if kind != "json_schema":
        raise OpenAIError(
            400,
            "response_format.type must be 'text', 'json_object' or 'json_schema'",
            param="response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise OpenAIError(
            400,
            "response_format.json_schema must be an object",
            param="response_format.json_schema",
        )
    for key in spec:
        if key not in ("name", "schema", "strict", "description"):
            raise OpenAIError(
                400, f"unknown parameter {key!r}", param=f"response_format.json_schema.{key}"
            )
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise OpenAIError(
            400,
            "response_format.json_schema.name takes 1 to 64 letters, digits, '_' and '-'",
            param="response_format.json_schema.name",
        )
    schema = spec.get("schema", {"type": "object"})
    return {"type": "json_schema", "schema": _schema(schema, "response_format.json_schema.schema")}


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise OpenAIError(400, f"tools must list up to {MAX_TOOLS} tools", param="tools")
    tools, names = [], set()
    for index, tool in enumerate(value):
        where = f"tools.[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise OpenAIError(
                400, "only function tools are supported (type: function)", param=f"{where}.type"
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise OpenAIError(400, "function must be an object", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise OpenAIError(
                400,
                "a function's name takes 1 to 64 letters, digits, '_' and '-'",
                param=f"{where}.function.name",
            )
        if name in names:
            raise OpenAIError(400, f"two tools are named {name!r}", param=f"{where}.function.name")
        names.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise OpenAIError(
                400, "description must be a string", param=f"{where}.function.description"
            )
        kept: dict[str, Any] = {"name": name}
        if description:
            kept["description"] = description
        if function.get("parameters") is not None:
            kept["parameters"] = _schema(function["parameters"], f"{where}.function.parameters")
        tools.append({"type": "function", "function": kept})
    return tools


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> str | dict[str, str]:
    if value is None:
        return "auto" if tools else "none"
    if value in ("none", "auto", "required"):
        if value != "none" and not tools:
            raise OpenAIError(400, f"tool_choice {value!r} needs tools", param="tool_choice")
        return value
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(name, str):
        raise OpenAIError(
            400,
            "tool_choice is 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": NAME}}',
            param="tool_choice",
        )
    if name not in {tool["function"]["name"] for tool in tools}:
        raise OpenAIError(
            400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
        )
    return {"name": name}


def _messages(raw: Any, context_tokens: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_MESSAGES:
        raise OpenAIError(400, f"messages must list 1 to {MAX_MESSAGES} messages", param="messages")
    messages = [_message(message, f"messages.[{index}]") for index, message in enumerate(raw)]
    longest = CHARS_PER_TOKEN * context_tokens
    if sum(len(m.get("content") or "") for m in messages) > longest:
        raise OpenAIError(
            400,
            f"the messages are longer than {longest} characters; the models are served "
            f"with a {context_tokens}-token context",
            param="messages",
            code="context_length_exceeded",
        )
    return messages


def _message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise OpenAIError(400, f"role must be one of {', '.join(ROLES)}", param=f"{where}.role")
    for key in message:
        if key not in MESSAGE_FIELDS:
            raise OpenAIError(400, f"unknown parameter {key!r}", param=f"{where}.{key}")
    role = message["role"]
    # The chat templates know the system role; developer is OpenAI's newer name for it.
    kept: dict[str, Any] = {"role": "system" if role == "developer" else role}
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise OpenAIError(
                400, "only assistant messages carry tool_calls", param=f"{where}.tool_calls"
            )
        kept["tool_calls"] = _calls(calls, f"{where}.tool_calls")
    content = message.get("content")
    # A call's message may have no content; templates concatenate it, so it is "" then.
    kept["content"] = (
        "" if content is None and calls is not None else _text(content, f"{where}.content")
    )
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise OpenAIError(
                400,
                "a tool message needs the tool_call_id it answers",
                param=f"{where}.tool_call_id",
            )
        kept["tool_call_id"] = call_id
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str) or not NAME.match(name):
            raise OpenAIError(
                400, "name takes 1 to 64 letters, digits, '_' and '-'", param=f"{where}.name"
            )
        kept["name"] = name
    return kept


def _calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or not calls or len(calls) > MAX_TOOLS:
        raise OpenAIError(400, "tool_calls must list the calls made", param=where)
    kept = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise OpenAIError(
                400,
                'a tool call is {"id", "type": "function", "function": {"name", "arguments"}}',
                param=f"{where}.[{index}]",
            )
        kept.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": function["arguments"]},
            }
        )
    return kept


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise OpenAIError(400, "content must be text (images and audio are not supported)", param=where)
