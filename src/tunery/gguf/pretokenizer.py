"""Naming a BPE tokenizer's pre-tokenizer the way llama.cpp does, from its actual regex.

llama.cpp's converter recognises a pre-tokenizer by hashing the token ids of a test string,
so every locally trained tokenizer is "not recognized" even when its pre-tokenizer is
exactly Llama 3's. The pre-tokenizer really is a regex in ``tokenizer.json``; this module
maps the regexes llama.cpp implements to its names. Anything else is refused with a clear
error rather than guessed: a wrong name loads and silently tokenises differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Regex as written in tokenizer.json (Split pre-tokenizer, then ByteLevel without its own
# regex) → llama.cpp's tokenizer.ggml.pre name.
SPLIT_REGEXES = {
    # Llama 3, and tokenizers trained with its regex (tunery's demo model).
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Qwen2 / Qwen2.5: like Llama 3 but one digit per token.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
GPT2 = "gpt-2"


class PreTokenizerNotSupported(Exception):
    """The tokenizer's pre-tokenizer is not one llama.cpp implements."""


def pre_tokenizer_name(tokenizer_json: Path) -> str:
    """llama.cpp's name for the BPE pre-tokenizer in ``tokenizer_json``."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer")
    if pre is None:
        raise PreTokenizerNotSupported("tokenizer.json has no pre_tokenizer")
    parts = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return GPT2
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = _split_regex(parts[0])
        if regex in SPLIT_REGEXES:
            return SPLIT_REGEXES[regex]
        raise PreTokenizerNotSupported(
            f"llama.cpp implements no pre-tokenizer with regex {regex!r}"
        )
    raise PreTokenizerNotSupported(
        f"llama.cpp implements no pre-tokenizer made of {' + '.join(map(str, kinds))}"
    )


def _split_regex(split: dict[str, Any]) -> str:
    pattern = split.get("pattern", {})
    if "Regex" in pattern:
        return pattern["Regex"]
    raise PreTokenizerNotSupported(f"the Split pre-tokenizer has no regex: {pattern!r}")
