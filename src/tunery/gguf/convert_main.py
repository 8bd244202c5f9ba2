"""Entry point that runs llama.cpp's own ``convert_hf_to_gguf.py`` in a child process.

Usage: ``python -m tunery.gguf.convert_main CONVERTER_DIR [converter arguments...]``.

One behaviour differs from running the script directly: a BPE tokenizer whose test-string
hash llama.cpp does not know is named from its actual pre-tokenizer regex (see
``tunery.gguf.pretokenizer``) instead of failing. A pre-tokenizer llama.cpp does not
implement still fails, with ``tunery-error:`` and the reason on stderr and exit status 3.
Running in a child process keeps the converter's imports, logging and memory out of the
caller.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tunery.gguf.pretokenizer import PreTokenizerNotSupported, pre_tokenizer_name

EXIT_UNSUPPORTED = 3


def main(argv: list[str]) -> int:
    converter = Path(argv[1])
    # The converter's own gguf-py must win over any installed gguf package.
    sys.path[:0] = [str(converter), str(converter / "gguf-py")]
    import conversion.base as conversion_base

    hash_lookup = conversion_base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(model: conversion_base.TextModel, tokenizer: object) -> str:
        try:
            return hash_lookup(model, tokenizer)
        except NotImplementedError:
            return pre_tokenizer_name(Path(model.dir_model) / "tokenizer.json")

    conversion_base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    spec = importlib.util.spec_from_file_location(
        "convert_hf_to_gguf", converter / "convert_hf_to_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sys.argv = ["convert_hf_to_gguf.py", *argv[2:]]
    try:
        script.main()
    except PreTokenizerNotSupported as error:
        sys.stderr.write(f"tunery-error: {error}\n")
        return EXIT_UNSUPPORTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
