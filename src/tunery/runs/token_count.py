"""Counting a dataset's tokens on the control plane, torch-free.

Where the server holds the base model (a local one, or a catalog model built in its models
directory), texts are counted with its own tokenizer (its
``tokenizer.json``, through ``tokenizers``) and each conversation adds the markers its chat
template writes around the messages, measured once per model by rendering the template
(sandboxed Jinja, as transformers renders it) for conversations of empty messages.
Otherwise a text counts ``ceil(characters / CHARS_PER_TOKEN)`` and each message
``TOKENS_PER_MESSAGE`` markers: characters per token vary by a factor of several (digits,
code, Chinese), which is what the tokenizer is for.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.catalog.models import find_build
from tunery.errors import ConfigError
from tunery.pipeline.load import DEFAULT_CHAT_TEMPLATE, parse_model_reference

logger = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
TOKENIZER_FILE_BYTES = 64 * 2**20
"""A model's tokenizer.json past this size is not read (large vocabularies take ~30 MB)."""
TOKENIZER_CONFIG_BYTES = 4 * 2**20
TEMPLATE_BYTES = 256 * 2**10


@dataclass(frozen=True)
class TokenizerFile:
    """A local model's tokenizer.json, as of its modification time (the caches' key)."""

    path: str
    modified_ns: int


@dataclass(frozen=True)
class TokenCount:
    """How to count a conversation: ``count`` gives each text's tokens; a conversation of n
    messages adds ``per_conversation + n * per_message`` for its template's markers."""

    count: Callable[[list[str]], list[int]]
    per_message: int
    per_conversation: int = 0


def character_counts(texts: list[str]) -> list[int]:
    """Each text's tokens at ``CHARS_PER_TOKEN`` characters a token."""
    return [math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts]


FROM_CHARACTERS = TokenCount(character_counts, TOKENS_PER_MESSAGE)
"""For a model whose tokenizer the server does not hold."""


def model_tokenizer(base_model: str, models_dir: Path) -> TokenizerFile | None:
    """The tokenizer.json of ``base_model`` when the server holds the model: a local model
    inside ``models_dir`` (as written: nothing else on the server's disk is read) or a
    catalog model built there; None otherwise, or when the file is not one to read."""
    try:
        reference = parse_model_reference(base_model, relative_dirs=False)
    except ConfigError:
        return None
    if reference.kind == "local" and _inside(Path(base_model.strip()), models_dir):
        folder = Path(base_model.strip())
    elif reference.kind == "demo" and (entry := find_build(reference.name)) is not None:
        assert entry.build is not None  # find_build finds built models only
        folder = models_dir / entry.build.folder
    else:
        return None
    try:
        found = (folder / "tokenizer.json").stat()
    except OSError:
        return None
    if found.st_size > TOKENIZER_FILE_BYTES:
        return None
    return TokenizerFile(str(folder / "tokenizer.json"), found.st_mtime_ns)


def _inside(path: Path, models_dir: Path) -> bool:
    """Whether absolute ``path`` lies below ``models_dir`` without walking up."""
    if not path.is_absolute() or ".." in path.parts:
        return False
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(models_dir))


@functools.lru_cache(maxsize=8)
def model_token_count(tokenizer: TokenizerFile) -> TokenCount:
    """Counting with the model's own tokenizer and template; ``FROM_CHARACTERS`` where the
    file is not one ``tokenizers`` reads (the worker, which loads it for real, says what is
    wrong). Template markers default to ``TOKENS_PER_MESSAGE`` where the template cannot be
    rendered here."""
    from tokenizers import Tokenizer

    try:
        loaded = Tokenizer.from_file(tokenizer.path)
    except Exception as error:  # tokenizers raises a bare Exception for a malformed file
        logger.warning("counting tokens from characters: %s: %s", tokenizer.path, error)
        return FROM_CHARACTERS

    def count(texts: list[str]) -> list[int]:
        encoded = loaded.encode_batch_fast(texts, add_special_tokens=False) if texts else []
        return [len(item.ids) for item in encoded]

    markers = _template_markers(Path(tokenizer.path).parent, count)
    if markers is None:
        return TokenCount(count, TOKENS_PER_MESSAGE)
    per_conversation, per_message = markers
    return TokenCount(count, per_message, per_conversation)


def _template_markers(
    model_dir: Path, count: Callable[[list[str]], list[int]]
) -> tuple[int, int] | None:
    """(tokens per conversation, tokens per message) the chat template adds around empty
    user/assistant turns; None when it cannot be rendered here."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    config = _tokenizer_config(model_dir)
    template = _chat_template(model_dir, config)
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.globals["raise_exception"] = _refuse
    try:
        compiled = environment.from_string(template)
        two, four = (
            compiled.render(
                messages=[
                    {"role": ("user", "assistant")[index % 2], "content": ""}
                    for index in range(turns)
                ],
                add_generation_prompt=False,
                bos_token=_token_text(config.get("bos_token")),
                eos_token=_token_text(config.get("eos_token")),
            )
            for turns in (2, 4)
        )
    except Exception as error:  # a template may raise anything (1/0, a missing key)
        logger.warning("chat template of %s not rendered here: %s", model_dir, error)
        return None
    two_tokens, four_tokens = count([two, four])
    per_message = max(0, (four_tokens - two_tokens) // 2)
    return max(0, two_tokens - 2 * per_message), per_message


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    try:
        if path.stat().st_size > TOKENIZER_CONFIG_BYTES:
            return {}
        config = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _chat_template(model_dir: Path, config: dict[str, Any]) -> str:
    """The template the worker renders with: ``chat_template.jinja``, else the tokenizer
    config's, else tunery's default."""
    path = model_dir / "chat_template.jinja"
    try:
        if path.stat().st_size <= TEMPLATE_BYTES:
            return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    template = config.get("chat_template")
    return template if isinstance(template, str) else DEFAULT_CHAT_TEMPLATE


def _token_text(token: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""


def _refuse(message: str) -> None:
    raise ValueError(message)
