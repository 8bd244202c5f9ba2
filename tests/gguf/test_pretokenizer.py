"""Naming pre-tokenizers from their regex, for tokenizers llama.cpp's hash table does not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.catalog.demo import LLAMA3_SPLIT
from tunery.catalog.tiny import QWEN2_SPLIT
from tunery.gguf.pretokenizer import PreTokenizerNotSupported, pre_tokenizer_name


def tokenizer_json(tmp_path: Path, pre_tokenizer: dict | None) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE"}, "pre_tokenizer": pre_tokenizer}))
    return path


def split_then_bytes(regex: str) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }


def test_demo_tokenizer_is_llama3s(demo_model_dir):
    assert pre_tokenizer_name(demo_model_dir / "tokenizer.json") == "llama-bpe"


def test_qwen2_regex(tmp_path):
    assert pre_tokenizer_name(tokenizer_json(tmp_path, split_then_bytes(QWEN2_SPLIT))) == "qwen2"
    assert QWEN2_SPLIT != LLAMA3_SPLIT


def test_plain_byte_level_is_gpt2(tmp_path):
    pre = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(tokenizer_json(tmp_path, pre)) == "gpt-2"


@pytest.mark.parametrize(
    "pre, reason",
    [
        (split_then_bytes(r"\p{L}+|\d"), "regex"),
        ({"type": "Whitespace"}, "Whitespace"),
        ({"type": "Metaspace", "replacement": "▁"}, "Metaspace"),
        (None, "no pre_tokenizer"),
    ],
)
def test_anything_else_is_refused_not_guessed(tmp_path, pre, reason):
    with pytest.raises(PreTokenizerNotSupported) as caught:
        pre_tokenizer_name(tokenizer_json(tmp_path, pre))
    assert reason in str(caught.value)
