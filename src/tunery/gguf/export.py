"""The GGUF bundle: merge the adapter, convert, verify, quantize, bundle, sample.

``export_gguf`` turns a saved adapter into ``<name>-gguf.zip`` (``model.gguf`` in Q4_K_M,
``Modelfile``, ``install.sh``, ``install.ps1``, ``README.md``) with llama.cpp's own converter
and quantizer, and refuses to publish a file that fails a gate (see ``verify``). All
intermediate files live in a scratch folder that is removed whatever happens, and the ZIP
appears under its name only when complete, so a failed or interrupted export leaves nothing a
download could find, and leaves the LoRA bundle untouched. Running it again needs only the
adapter directory: no retraining.

``preflight`` runs the converter on the base model's vocabulary and derives the Ollama
template before any training, so a model that will not export is refused at submission.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.errors import TuneryError
from tunery.gguf.merge import merge_adapter
from tunery.gguf.modelfile import (
    TemplateNotSupported,
    install_ps1,
    install_sh,
    ollama_model_name,
    ollama_template,
    render_modelfile,
    stop_tokens,
)
from tunery.gguf.toolchain import converter_dir, require_llama_cpp
from tunery.gguf.verify import check_file_type, check_parity, native_output_captured
from tunery.pipeline.chat import SamplePrompt, render_with_spans

GGUF_BUNDLE_FILES = ("model.gguf", "Modelfile", "install.sh", "install.ps1", "README.md")
QUANTIZATION = "Q4_K_M"
# The largest value of a 16-bit float: the converter writes the merged model in f16.
F16_LARGEST = 65504.0
RERUN_HINT = "free disk space, then run `tunery export RUN_DIR` (no retraining needed)"
IO_FAILURES = ("No space left", "File too large", "Disk quota", "Input/output error")


class ExportError(TuneryError):
    """The GGUF could not be produced; the LoRA bundle is unaffected."""

    code = "gguf_export_failed"


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    gguf_bytes: int
    checks: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


def convert_to_gguf(
    model_dir: Path, out_file: Path, *, outtype: str = "f16", vocab_only: bool = False
) -> None:
    """Run llama.cpp's converter in a child process; raises ExportError with its reason."""
    command = [
        sys.executable,
        "-m",
        "tunery.gguf.convert_main",
        str(converter_dir()),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    if vocab_only:
        command.append("--vocab-only")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = [line for line in result.stderr.splitlines() if line.strip()]
        marked = [
            line.removeprefix("tunery-error: ")
            for line in reason
            if line.startswith("tunery-error: ")
        ]
        detail = marked[-1] if marked else (reason[-1] if reason else "no output")
        disk = any(text in result.stderr for text in IO_FAILURES)
        raise ExportError(
            f"llama.cpp's converter failed on {model_dir.name}: {detail}",
            hint=RERUN_HINT
            if disk
            else "this model's architecture or tokenizer is not supported by llama.cpp "
            "at the pinned version",
        )


def quantize(source: Path, target: Path, quantization: str = QUANTIZATION) -> None:
    """Quantize with llama.cpp's own quantizer (byte-identical to ``llama-quantize``).

    Raises ExportError; when the disk is (nearly) full it says so, with how much is free:
    the quantizer itself often reports a failed write with no reason at all.
    """
    import ctypes

    import llama_cpp

    short = _space_shortfall(source, target)
    if short is not None:
        raise ExportError(f"llama.cpp's quantizer cannot run: {short}", hint=RERUN_HINT)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantization}")
    with native_output_captured() as output:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(target).encode(), ctypes.byref(params)
        )
    if status != 0:
        text = output[0] if output else ""
        tail = " ".join(text.strip().splitlines()[-3:]) or "no reason given"
        short = _space_shortfall(source, target)
        if short is not None or any(failure in text for failure in IO_FAILURES):
            raise ExportError(f"llama.cpp's quantizer failed: {short or tail}", hint=RERUN_HINT)
        raise ExportError(f"llama.cpp's quantizer failed ({status}): {tail}")


# A Q4_K_M file is about 0.3 of its f16 source; the margin covers metadata and rounding.
QUANTIZED_SHARE = 0.35


def _space_shortfall(source: Path, target: Path) -> str | None:
    """Why the quantized file will not fit on the target's disk, or None if it will."""
    try:
        free = shutil.disk_usage(target.parent).free
        needed = int(source.stat().st_size * QUANTIZED_SHARE)
    except OSError:
        return None
    if free >= needed:
        return None
    return (
        f"no space left on the server's disk for the quantized model "
        f"({free / 2**20:.0f} MiB free, about {needed / 2**20:.0f} MiB needed)"
    )


def modelfile_parts(tokenizer_dir: Path, end_of_turn: str) -> tuple[str, list[str]]:
    """The Ollama TEMPLATE and stop strings for the tokenizer in ``tokenizer_dir``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Ollama's prompt is the BOS token, where the tokenizer adds one (the GGUF's
    # add_bos_token), then the TEMPLATE's text. A template that begins with the BOS token's
    # text when the tokenizer adds none (SmolLM2's BOS is <|im_start|>) keeps it.
    first = tokenizer("x")["input_ids"][:1]
    adds_bos = tokenizer.bos_token_id is not None and first == [tokenizer.bos_token_id]
    try:
        template = ollama_template(
            tokenizer.chat_template,
            bos_token=tokenizer.bos_token if adds_bos else None,
            eos_token=tokenizer.eos_token,
        )
    except TemplateNotSupported as error:
        raise ExportError(
            f"the chat template cannot be written as an Ollama TEMPLATE: {error}",
            hint="without an explicit TEMPLATE Ollama would never stop this model",
        ) from None
    return template, stop_tokens(end_of_turn, tokenizer.eos_token)


def preflight(base_model_dir: Path, end_of_turn: str) -> None:
    """Check, before any training, that the base model will convert and get a Modelfile."""
    require_llama_cpp()
    modelfile_parts(base_model_dir, end_of_turn)
    with tempfile.TemporaryDirectory(prefix="tunery-preflight-") as scratch:
        convert_to_gguf(base_model_dir, Path(scratch) / "vocab.gguf", vocab_only=True)


def export_gguf(
    *,
    adapter_dir: Path,
    base_model_dir: Path,
    out_dir: Path,
    run_name: str,
    base_model: str,
    dataset_names: list[str],
    end_of_turn: str,
    sample_prompts: list[SamplePrompt],
    max_new_tokens: int,
) -> ExportResult:
    """Produce ``out_dir/<run_name>-gguf.zip``; raises ExportError (nothing partial remains)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_llama_cpp()
    bundle_path = out_dir / f"{run_name}-gguf.zip"
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".gguf-export-", dir=out_dir))
    except OSError as error:
        raise ExportError(
            f"cannot create the export folder: {os_reason(error)}", hint=RERUN_HINT
        ) from None
    try:
        merged_dir = scratch / "merged"
        largest = merge_adapter(base_model_dir, adapter_dir, merged_dir)
        if not largest <= F16_LARGEST:
            raise ExportError(
                f"the merged weights reach {largest:.3g}, beyond the {F16_LARGEST:g} a "
                "16-bit GGUF can hold: the GGUF would hold inf",
                hint="the adapter's weights grew far past the base model's; train again with "
                "a lower training.learning_rate or lora.alpha (the LoRA bundle is complete)",
            )
        f16 = scratch / "model-f16.gguf"
        convert_to_gguf(merged_dir, f16, outtype="f16")

        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        conversations = [
            render_with_spans(tokenizer, prompt.messages, add_generation_prompt=True)[0]
            for prompt in sample_prompts
        ]
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype="float32")
        parity = check_parity(f16, merged, tokenizer, conversations)
        del merged

        quantized = scratch / "model.gguf"
        quantize(f16, quantized)
        check_file_type(quantized, QUANTIZATION)
        f16.unlink()

        template, stops = modelfile_parts(merged_dir, end_of_turn)
        samples = gguf_samples(quantized, sample_prompts, max_new_tokens=max_new_tokens)
        model_name = ollama_model_name(run_name)
        texts = {
            "Modelfile": render_modelfile(gguf_file="model.gguf", template=template, stops=stops),
            "install.sh": install_sh(model_name),
            "install.ps1": install_ps1(model_name),
            "README.md": bundle_readme(
                run_name=run_name,
                model_name=model_name,
                base_model=base_model,
                dataset_names=dataset_names,
            ),
        }
        _write_bundle(bundle_path, quantized, texts)
        return ExportResult(
            bundle=bundle_path,
            gguf_bytes=quantized.stat().st_size,
            checks={**parity.as_dict(), "quantization": QUANTIZATION},
            samples=samples,
        )
    except (OSError, SafetensorError) as error:
        reason = os_reason(error) if isinstance(error, OSError) else str(error)
        raise ExportError(f"writing the GGUF bundle failed: {reason}", hint=RERUN_HINT) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def os_reason(error: OSError) -> str:
    """An OSError as a user reads it: the reason and the file's name, not its server path."""
    reason = error.strerror or type(error).__name__
    named = isinstance(error.filename, str) and error.filename
    return f"{reason} ({Path(error.filename).name})" if named else reason


def _write_bundle(bundle_path: Path, gguf_file: Path, texts: dict[str, str]) -> None:
    partial = bundle_path.with_name(f".{bundle_path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w") as bundle:
            # Quantized weights do not compress; storing them keeps the export fast.
            bundle.write(gguf_file, arcname="model.gguf", compress_type=zipfile.ZIP_STORED)
            for name, text in texts.items():
                info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (0o755 if name == "install.sh" else 0o644) << 16
                bundle.writestr(info, text)
        partial.replace(bundle_path)
    finally:
        partial.unlink(missing_ok=True)


def gguf_samples(
    gguf_path: Path, prompts: list[SamplePrompt], *, max_new_tokens: int
) -> list[dict[str, Any]]:
    """The smoke test on the exported file itself, through its embedded chat template."""
    from llama_cpp import Llama

    with native_output_captured():
        runner = Llama(model_path=str(gguf_path), n_ctx=2048, verbose=False)
    samples = []
    for prompt in prompts:
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in prompt.messages]
        completion: Any = runner.create_chat_completion(
            messages=messages, max_tokens=max_new_tokens, temperature=0.0
        )
        choice = completion["choices"][0]
        samples.append(
            {
                "prompt": prompt.messages[-1].content,
                "messages": messages,
                "response": (choice["message"]["content"] or "").strip(),
                "expected": prompt.expected,
                "stopped": choice["finish_reason"] == "stop",
                "tokens": completion["usage"]["completion_tokens"],
                "source": "gguf",
            }
        )
    return samples


def bundle_readme(
    *, run_name: str, model_name: str, base_model: str, dataset_names: list[str]
) -> str:
    datasets = ", ".join(f"`{name}`" for name in dataset_names) or "(none)"
    return f"""# {run_name} — GGUF ({QUANTIZATION})

`model.gguf` is `{base_model}` with the LoRA adapter of run `{run_name}` merged in and
quantized to {QUANTIZATION} with llama.cpp. Trained on: {datasets}.

Before this bundle was written, tunery checked that llama.cpp tokenises like the original
tokenizer and that the 16-bit conversion's logits match the merged model.

## Ollama

    ./install.sh            # macOS / Linux   (Windows: ./install.ps1)
    ollama run {model_name}

or by hand: `ollama create {model_name} -f Modelfile`. The Modelfile carries the model's chat
template and its stop tokens, so replies end where they should.

## llama.cpp

    llama-cli -m model.gguf -cnv
    llama-server -m model.gguf --port 8080     # OpenAI-compatible API

## LM Studio

Import `model.gguf` (My Models → Import, or `lms import model.gguf`); the chat template is
embedded in the file.
"""
