"""A chat request answered by one loaded llama.cpp model, as OpenAI answers it.

Runs inside a serving host (``tunery.serving.host``); imports ``llama_cpp`` only there.
The prompt is the conversation rendered with the chat template embedded in the GGUF (the
template the run trained with), tokenised as llama.cpp does. Tokens come from
``Llama.generate`` so that every parameter is ours to honour and every token is counted:

- ``response_format`` ``json_object`` / ``json_schema``: decoding constrained by a grammar
  (JSON, or the schema's), so the answer parses;
- ``tools``: the template sees them; ``tool_choice`` naming a function constrains the
  answer to that function's parameters schema, ``required`` to a call of one of the
  tools, ``auto`` lets the model answer freely and reads an answer made only of calls
  (``<tool_call>{…}</tool_call>`` blocks, or one bare ``{"name", "arguments"}`` object,
  naming tools it was given) as ``tool_calls``;
- ``logprobs`` / ``top_logprobs``: the model's log probabilities at each generated position,
  before penalties, bias and grammar;
- ``logit_bias``, ``presence_penalty``, ``frequency_penalty``, ``seed``, ``stop``, ``n``;
- usage: prompt and generated tokens as counted here, also at the end of a stream
  (``include_usage``).

Sampling is OpenAI's: temperature and nucleus (``top_p``) only; llama.cpp's top-k and
min-p are off. Temperature 0 is greedy.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tunery.serving.protocol import GenerationRequest

TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
"""How Hermes-style templates (Qwen2.5, SmolLM3, many fine-tunes) ask for a tool call."""
OPEN_TAG = "<tool_call>"


class RequestRefused(Exception):
    """The request cannot be answered as asked (a 400 naming ``param``)."""

    def __init__(self, message: str, *, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class _Answer:
    """One choice's text as it grows token by token, cut at the first stop string."""

    stops: list[str]
    tokens: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    """The text's length after each token."""
    logprobs: list[dict[str, Any] | None] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    def add(self, token: int, text: str, logprob: dict[str, Any] | None) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        cut = self._first_stop(text)
        if cut is not None:
            text, self.finish_reason = text[:cut], "stop"
        self.text = text
        self.ends.append(len(text))

    def _first_stop(self, text: str) -> int | None:
        # Only a stop string that ends in the new part can be new.
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        found = [i for stop in self.stops if (i := text.find(stop, start)) >= 0]
        return min(found) if found else None

    def settled(self) -> int:
        """How much of the text no stop string can still take back."""
        if self.finish_reason is not None:
            return len(self.text)
        held = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        return len(self.text) - held

    def kept(self, index: int) -> bool:
        """Whether token ``index`` begins inside the text (a token a stop string took
        away entirely does not)."""
        begin = self.ends[index - 1] if index else 0
        return begin < len(self.text)

    def kept_logprobs(self) -> list[dict[str, Any]]:
        return [
            entry
            for index, entry in enumerate(self.logprobs)
            if entry is not None and self.kept(index)
        ]


class _LogProbs:
    """A logits processor that keeps the log-softmax of each position's logits (the
    model's own distribution, before penalties, bias and grammar)."""

    def __init__(self, describe: Callable[[int], tuple[str, list[int]]], top: int) -> None:
        self._describe = describe
        self._top = top
        self._current: Any = None

    def __call__(self, _: Any, logits: Any) -> Any:
        import numpy as np

        shifted = logits.astype(np.float64) - float(logits.max())
        self._current = shifted - np.log(np.exp(shifted).sum())
        return logits

    def entry(self, token: int) -> dict[str, Any]:
        import numpy as np

        values = self._current
        best: list[int] = (
            np.argpartition(-values, self._top)[: self._top].tolist() if self._top else []
        )
        ranked = sorted(best, key=lambda index: -values[index])
        text, raw = self._describe(token)
        return {
            "token": text,
            "logprob": float(values[token]),
            "bytes": raw,
            "top_logprobs": [
                {"token": t, "logprob": float(values[i]), "bytes": b}
                for i in ranked
                for t, b in [self._describe(int(i))]
            ],
        }


class _Bias:
    def __init__(self, bias: dict[int, float]) -> None:
        self._ids = list(bias)
        self._values = list(bias.values())

    def __call__(self, _: Any, logits: Any) -> Any:
        logits[self._ids] += self._values
        return logits


class Engine:
    """Answers chat requests with one loaded ``llama_cpp.Llama``, one at a time."""

    def __init__(self, llama: Any) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama = llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF has no chat template (tokenizer.chat_template)")
        eos, bos = llama.token_eos(), llama.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._special_text(eos),
            bos_token=self._special_text(bos),
            stop_token_ids=[eos],
        )
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._is_end = llama_cpp.llama_vocab_is_eog
        self.vocab_size = llama.n_vocab()
        self.context = llama.n_ctx()

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def _describe(self, token: int) -> tuple[str, list[int]]:
        raw = self.llama.detokenize([token], special=True)
        return raw.decode("utf-8", errors="replace"), list(raw)

    # The request ----------------------------------------------------------------------

    def _prompt(self, request: GenerationRequest) -> list[int]:
        from jinja2 import TemplateError

        use_tools = request["tools"] and request["tool_choice"] != "none"
        try:
            # The API checked both against OpenAI's shapes, which llama-cpp types as TypedDicts.
            rendered = self._formatter(
                messages=request["messages"],  # type: ignore[arg-type]
                tools=request["tools"] if use_tools else None,  # type: ignore[arg-type]
            )
        except (TemplateError, ValueError, TypeError, KeyError) as error:
            raise RequestRefused(
                f"the model's chat template cannot render these messages: {error}",
                param="messages",
            ) from None
        tokens = self.llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        room = self.context - len(tokens)
        if room < 1 or (request["max_tokens_asked"] and request["max_tokens"] > room):
            raise RequestRefused(
                f"the messages take {len(tokens)} tokens and the answer may take "
                f"{request['max_tokens']}, more than the model's {self.context}-token context",
                param="messages",
                code="context_length_exceeded",
            )
        return tokens

    def _grammar(self, request: GenerationRequest) -> Any:
        """The grammar the answer must follow, or None."""
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        choice = request["tool_choice"]
        schema: dict[str, Any] | None = None
        param = "response_format"
        if request["tools"] and isinstance(choice, dict):
            schema = _named_tool(request["tools"], choice["name"])["function"].get(
                "parameters"
            ) or {"type": "object"}
            param = "tools"
        elif request["tools"] and choice == "required":
            schema = {"anyOf": [_call_schema(tool) for tool in request["tools"]]}
            param = "tools"
        elif request["response_format"]["type"] == "json_schema":
            schema = request["response_format"]["schema"]
            param = "response_format.json_schema.schema"
        elif request["response_format"]["type"] == "json_object":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if schema is None:
            return None
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as error:  # the converter raises bare Exceptions and ValueErrors
            raise RequestRefused(
                f"the JSON schema cannot be turned into a grammar: {error}", param=param
            ) from None

    def _bias(self, request: GenerationRequest) -> dict[int, float]:
        bias = {}
        for key, value in request["logit_bias"].items():
            token = int(key)
            if token >= self.vocab_size:
                raise RequestRefused(
                    f"logit_bias names token {token}; the model has {self.vocab_size} tokens",
                    param="logit_bias",
                )
            bias[token] = value
        return bias

    # Generation -----------------------------------------------------------------------

    def _choice(
        self,
        answer: _Answer,
        prompt: list[int],
        request: GenerationRequest,
        *,
        seed: int,
        grammar: Any,
        bias: dict[int, float],
        cancelled: Callable[[], bool],
    ) -> Iterator[None]:
        """Generate one choice into ``answer``; yields after each token."""
        logprobs = (
            _LogProbs(self._describe, request["top_logprobs"]) if request["logprobs"] else None
        )
        processors: list[Any] = [p for p in (logprobs, _Bias(bias) if bias else None) if p]
        llama = self.llama
        llama.set_seed(seed)
        tokens = llama.generate(
            prompt,
            temp=request["temperature"],
            top_p=request["top_p"],
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            presence_penalty=request["presence_penalty"],
            frequency_penalty=request["frequency_penalty"],
            logits_processor=processors or None,
            grammar=grammar,
        )
        try:
            for token in tokens:
                if cancelled():
                    return
                if self._is_end(self._vocab, token):
                    answer.finish_reason = "stop"
                    yield None
                    return
                text = llama.detokenize([*answer.tokens, token], prev_tokens=prompt).decode(
                    "utf-8", errors="ignore"
                )
                answer.add(token, text, logprobs.entry(token) if logprobs else None)
                if answer.finish_reason is None and len(answer.tokens) >= request["max_tokens"]:
                    answer.finish_reason = "length"
                if (
                    answer.finish_reason is None
                    and len(prompt) + len(answer.tokens) >= self.context
                ):
                    answer.finish_reason = "length"
                yield None
                if answer.finish_reason is not None:
                    return
        finally:
            tokens.close()

    def complete(self, request: GenerationRequest, cancelled: Callable[[], bool]) -> dict[str, Any]:
        """The whole answer, as OpenAI's ``chat.completion``."""
        prompt, grammar, bias = self._prompt(request), self._grammar(request), self._bias(request)
        choices, generated = [], 0
        for index, seed in enumerate(_seeds(request)):
            answer = _Answer(stops=request["stop"])
            for _ in self._choice(
                answer, prompt, request, seed=seed, grammar=grammar, bias=bias, cancelled=cancelled
            ):
                pass
            generated += len(answer.tokens)
            calls = _tool_calls(answer, request)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if calls else answer.text,
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = calls
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": _logprobs(answer.kept_logprobs()) if request["logprobs"] else None,
                    "finish_reason": "tool_calls" if calls else answer.finish_reason or "stop",
                }
            )
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": choices,
            "usage": _usage(len(prompt), generated),
        }

    def stream(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[dict[str, Any]]:
        """The answer as OpenAI's ``chat.completion.chunk`` objects; the request is checked
        (and may raise RequestRefused) before the first one."""
        prompt, grammar, bias = self._prompt(request), self._grammar(request), self._bias(request)
        chunks = _Chunks(request)
        generated = 0
        for index, seed in enumerate(_seeds(request)):
            yield chunks.delta(index, {"role": "assistant", "content": ""})
            stream = _ChoiceStream(request, index, chunks)
            answer = _Answer(stops=request["stop"])
            for _ in self._choice(
                answer, prompt, request, seed=seed, grammar=grammar, bias=bias, cancelled=cancelled
            ):
                yield from stream.advance(answer)
            if cancelled():
                return
            answer.finish_reason = answer.finish_reason or "stop"
            yield from stream.finish(answer)
            generated += len(answer.tokens)
        if request["include_usage"]:
            yield chunks.usage(_usage(len(prompt), generated))


class _Chunks:
    """Makes the chunks of one streamed completion (same id, creation time and model)."""

    def __init__(self, request: GenerationRequest) -> None:
        self.id = _completion_id()
        self.created = int(time.time())
        self.model = request["model"]
        self.with_usage = request["include_usage"]

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.with_usage:
            chunk["usage"] = None
        return chunk

    def delta(
        self,
        index: int,
        delta: dict[str, Any],
        *,
        logprobs: list[dict[str, Any]] | None = None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        return self._chunk(
            [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": _logprobs(logprobs) if logprobs is not None else None,
                    "finish_reason": finish_reason,
                }
            ]
        )

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._chunk([]), "usage": usage}


class _ChoiceStream:
    """What one choice streams: content as it settles, a forced call's arguments as they
    come, and a call read from a free answer (``auto``) once the answer is complete."""

    def __init__(self, request: GenerationRequest, index: int, chunks: _Chunks) -> None:
        self.request = request
        self.index = index
        self.chunks = chunks
        self.sent = 0
        """Characters of the text streamed so far."""
        self.tokens_sent = 0
        """Tokens whose log probabilities were streamed so far."""
        choice = request["tool_choice"] if request["tools"] else "none"
        self.named = choice["name"] if isinstance(choice, dict) else None
        self.call_id = _call_id()
        self.call_opened = False
        # A required call is read once complete; an auto answer is held back while it may
        # be a call (it starts with "{" or "<tool_call>").
        self.holding = choice == "required"
        self.deciding = choice == "auto"

    def advance(self, answer: _Answer) -> Iterator[dict[str, Any]]:
        if self.deciding and not self._decide(answer):
            return
        if self.holding:
            return
        end = answer.settled()
        # A forced call that produced nothing still opens its call before it finishes.
        opening = self.named is not None and not self.call_opened and answer.finish_reason
        if end <= self.sent and not opening:
            return
        piece = answer.text[self.sent : end]
        logprobs = self._logprobs(answer, end)
        if self.named is not None:
            call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
            if not self.call_opened:
                call = {
                    "index": 0,
                    "id": self.call_id,
                    "type": "function",
                    "function": {"name": self.named, "arguments": piece},
                }
                self.call_opened = True
            delta: dict[str, Any] = {"tool_calls": [call]}
        else:
            delta = {"content": piece}
        self.sent = end
        yield self.chunks.delta(self.index, delta, logprobs=logprobs)

    def _decide(self, answer: _Answer) -> bool:
        """For ``auto``: whether the answer is known yet to be text or a possible call."""
        start = answer.text.lstrip()
        if start.startswith(("{", OPEN_TAG)):
            self.deciding, self.holding = False, True
        elif answer.finish_reason is None and (not start or OPEN_TAG.startswith(start)):
            return False  # still too short to tell "<tool_call>" from text
        else:
            self.deciding = False
        return True

    def _logprobs(self, answer: _Answer, end: int) -> list[dict[str, Any]] | None:
        """The entries of the tokens whose text is now all streamed (at the end: every
        token a stop string left some of)."""
        if not self.request["logprobs"]:
            return None
        entries = []
        final = answer.finish_reason is not None
        while self.tokens_sent < len(answer.tokens):
            index = self.tokens_sent
            if final and not answer.kept(index):
                self.tokens_sent += 1
                continue
            if not final and answer.ends[index] > end:
                break
            entry = answer.logprobs[index]
            if entry is not None:
                entries.append(entry)
            self.tokens_sent += 1
        return entries

    def finish(self, answer: _Answer) -> Iterator[dict[str, Any]]:
        if self.holding or self.deciding:
            calls = _tool_calls(answer, self.request)
            logprobs = answer.kept_logprobs() if self.request["logprobs"] else None
            if calls:
                delta: dict[str, Any] = {
                    "tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]
                }
                yield self.chunks.delta(self.index, delta, logprobs=logprobs)
                yield self.chunks.delta(self.index, {}, finish_reason="tool_calls")
                return
            if answer.text:
                yield self.chunks.delta(self.index, {"content": answer.text}, logprobs=logprobs)
            yield self.chunks.delta(self.index, {}, finish_reason=answer.finish_reason or "stop")
            return
        yield from self.advance(answer)
        if self.named is not None and answer.finish_reason != "length":
            reason = "tool_calls"
        else:
            reason = answer.finish_reason or "stop"
        yield self.chunks.delta(self.index, {}, finish_reason=reason)


# Helpers ------------------------------------------------------------------------------


def _seeds(request: GenerationRequest) -> list[int]:
    """One seed per choice: the request's (plus the choice's index), else random ones."""
    base = request["seed"]
    if base is None:
        return [secrets.randbelow(2**31) for _ in range(request["n"])]
    return [(base + index) % 2**32 for index in range(request["n"])]


def _named_tool(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(tool for tool in tools if tool["function"]["name"] == name)


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            "arguments": function.get("parameters") or {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _tool_calls(answer: _Answer, request: GenerationRequest) -> list[dict[str, Any]]:
    """The calls the answer makes, in OpenAI's ``tool_calls`` shape (none: plain text)."""
    choice = request["tool_choice"]
    if not request["tools"] or choice == "none" or answer.finish_reason == "length":
        return []
    names = {tool["function"]["name"] for tool in request["tools"]}
    if isinstance(choice, dict):
        found = [(choice["name"], answer.text)]
    else:
        text = answer.text.strip()
        tagged = TOOL_CALL_TAG.findall(text)
        if tagged and TOOL_CALL_TAG.sub("", text).strip():
            return []  # calls and words together: the answer is read as the words it is
        bodies = tagged if tagged else [text] if text.startswith("{") else []
        found = []
        for body in bodies:
            call = _parsed_call(body, names)
            if call is None:
                return []  # not a call after all: the answer stays text
            found.append(call)
        if not request["parallel_tool_calls"]:
            found = found[:1]
    return [
        {
            "id": _call_id(),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for name, arguments in found
    ]


def _parsed_call(body: str, names: set[str]) -> tuple[str, str] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments)


def _logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": entries, "refusal": None}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"
