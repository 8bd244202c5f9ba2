"""Gates a GGUF must pass before it is published.

- Tokenisation parity: llama.cpp's tokenizer gives the same ids as the Hugging Face one on
  rendered conversations and awkward strings (digits, whitespace runs, emoji, accents).
- Logits parity on the 16-bit GGUF against the merged model in float32: per-position cosine
  and KL divergence. A missing Q/K permutation, a wrong RoPE or norm, or a wrong tokenizer
  all fail these, where a load test passes.
- The quantized file's type is what was asked for.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.errors import TuneryError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MIN_COSINE = 0.999
MAX_KL = 1e-3
AWKWARD_TEXTS = (
    "Hello world! 12345 3.14159 1,000,000",
    "  leading spaces,\ttabs\tand\n\nnewlines\n",
    "naïve café — déjà vu; emoji 🚀🦙 and 漢字",
    "I've been told he's there, 'RE you sure? can't won't",
)
GGUF_FILE_TYPES = {"Q4_K_M": 15, "F16": 1}


class ExportCheckFailed(TuneryError):
    """A verification gate failed; the file is not published."""

    code = "gguf_check_failed"


@contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """Send the C library's stdout/stderr to a temp file; the list receives its text.

    llama.cpp logs every tensor it touches; the run log wants the outcome, and the text is
    still there for an error message.
    """
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


@dataclass(frozen=True)
class ParityReport:
    tokenization_texts: int
    min_cosine: float
    max_kl: float
    positions: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "tokenization_texts": self.tokenization_texts,
            "min_cosine": self.min_cosine,
            "max_kl": self.max_kl,
            "positions": self.positions,
        }


def check_parity(
    gguf_path: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[str],
) -> ParityReport:
    """Tokenisation and logits parity of a 16/32-bit GGUF; raises ExportCheckFailed."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    # Awkward strings are checked where inference meets them: inside a rendered prompt.
    texts = [*conversations] + [
        str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        )
        for text in AWKWARD_TEXTS
    ]
    with native_output_captured():
        vocab = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    for text in texts:
        expected = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        actual = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if expected != actual:
            raise ExportCheckFailed(
                f"llama.cpp tokenises {text[:60]!r} differently from the Hugging Face tokenizer "
                f"({len(actual)} vs {len(expected)} tokens)",
                hint="the tokenizer's pre-tokenizer or normalizer is not one llama.cpp implements",
            )
    del vocab

    min_cosine, max_kl, positions = 1.0, 0.0, 0
    with native_output_captured():
        runner = Llama(
            model_path=str(gguf_path),
            logits_all=True,
            n_ctx=1024,
            verbose=False,
            n_threads=max(1, torch.get_num_threads()),
        )
    model = model.float().eval()
    for text in conversations:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:1024]
        runner.reset()
        runner.eval(ids)
        gguf_logits = np.asarray(runner.scores[: len(ids)], dtype=np.float64)
        with torch.no_grad():
            hf_logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        cosine = (gguf_logits * hf_logits).sum(-1) / (
            np.linalg.norm(gguf_logits, axis=-1) * np.linalg.norm(hf_logits, axis=-1)
        )
        log_p, log_q = _log_softmax(hf_logits), _log_softmax(gguf_logits)
        kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
        min_cosine = min(min_cosine, float(cosine.min()))
        max_kl = max(max_kl, float(kl.max()))
        positions += len(ids)
    report = ParityReport(len(texts), min_cosine, max_kl, positions)
    if min_cosine < MIN_COSINE or max_kl > MAX_KL:
        raise ExportCheckFailed(
            f"the 16-bit GGUF's logits disagree with the merged model: min cosine "
            f"{min_cosine:.5f} (gate {MIN_COSINE}), max KL {max_kl:.2e} (gate {MAX_KL:.0e})",
            hint="this architecture's conversion is wrong in this llama.cpp version",
        )
    return report


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def gguf_file_type(path: Path) -> int:
    """``general.file_type`` of a GGUF file (15 is Q4_K_M)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        raise ExportCheckFailed(f"{path.name} has no general.file_type")
    return int(field.parts[field.data[0]][0])


def check_file_type(path: Path, quantization: str) -> None:
    actual = gguf_file_type(path)
    if actual != GGUF_FILE_TYPES[quantization]:
        raise ExportCheckFailed(
            f"{path.name} has file type {actual}, not {quantization} "
            f"({GGUF_FILE_TYPES[quantization]})"
        )
