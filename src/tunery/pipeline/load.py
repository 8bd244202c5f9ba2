"""Finding the base model, loading it and its tokenizer, settling the chat format.

A base model is named by the id of a catalog model tunery builds itself
(``tunery/demo-tiny``, ``tunery/smollm2-135m-instruct``: built into ``DATA_DIR/models`` by
the first run that needs it, or by ``tunery demo-model``), a Hugging Face id
(``Qwen/Qwen2.5-0.5B-Instruct``), a Hub URL (``https://huggingface.co/ORG/NAME`` or
``.../tree/REVISION``) or a local directory. Hub downloads go through the Hugging Face cache,
so the second run of a model downloads nothing, and ``HF_HUB_OFFLINE=1`` is respected.
``parse_model_reference`` needs neither torch nor the network, so submissions are checked
before any GPU time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunery.catalog.builds import built_model_dir
from tunery.catalog.models import find_build
from tunery.errors import ConfigError, ModelLoadError, TransientError
from tunery.pipeline.config import MAX_BASE_MODEL_CHARS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HUB_URL = re.compile(
    r"^https://(?:huggingface\.co|hf\.co)/(?P<repo>[^/?#]+/[^/?#]+)"
    r"(?:/tree/(?P<revision>[^/?#]+))?/?$"
)
# Files a causal LM needs; skips other frameworks' weights and repo extras.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]

# Used when a base model has no chat template. Plain-text markers need no new tokens (so no
# embedding resize), and the end-of-text token closes each assistant turn so the model stops.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


HUB_CHECK_SECONDS = 10.0
"""How long a submission waits for the Hub to say whether a model exists."""


@dataclass(frozen=True)
class ModelReference:
    """Where a base model comes from; ``name`` is what artifacts record as the base."""

    kind: Literal["demo", "hub", "local"]
    name: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None


def parse_model_reference(text: str, *, relative_dirs: bool = True) -> ModelReference:
    """Classify ``text`` without touching the network; raises ConfigError on bad formats.

    ``relative_dirs`` False: a relative name (``org/name``) is never looked up on disk, only
    names starting with ``/``, ``.`` or ``~`` are local (a server, whose working directory
    is nobody's business, resolves relative names against its models directory itself).
    """
    value = text.strip()
    if not value:
        raise ConfigError.single("base_model", "is empty; name a model to fine-tune")
    if len(value) > MAX_BASE_MODEL_CHARS:
        raise ConfigError.single("base_model", f"is longer than {MAX_BASE_MODEL_CHARS} characters")
    if (built := find_build(value)) is not None and value == built.id:
        return ModelReference(kind="demo", name=built.id)
    if value.startswith(("http://", "https://")):
        match = HUB_URL.match(value)
        if not match or not _is_hub_id(match["repo"]):
            raise ConfigError.single(
                "base_model",
                f"{value!r} is not a Hugging Face model URL",
                hint="use https://huggingface.co/ORG/NAME or .../ORG/NAME/tree/REVISION",
            )
        revision = match["revision"]
        if revision is not None and (revision == "." or ".." in revision):
            raise ConfigError.single(
                "base_model", f"{revision!r} is not a revision (a branch, tag or commit)"
            )
        return ModelReference(
            kind="hub", name=match["repo"], repo_id=match["repo"], revision=revision
        )
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        raise ConfigError.single("base_model", f"{value[:60]!r} names no home directory") from None
    if path.is_absolute() or value.startswith((".", "~")) or (relative_dirs and _is_dir(path)):
        if not _is_file(path / "config.json"):
            raise ConfigError.single(
                "base_model",
                f"local directory {value!r} does not exist or has no config.json",
                hint="point to a directory saved with save_pretrained()",
            )
        return ModelReference(kind="local", name=str(path.resolve()), path=path.resolve())
    if _is_hub_id(value):
        return ModelReference(kind="hub", name=value, repo_id=value)
    raise ConfigError.single(
        "base_model",
        f"{value!r} is not a catalog id, Hugging Face id (ORG/NAME), Hub URL or local directory",
    )


def _is_hub_id(value: str) -> bool:
    # The Hub refuses ".." and "--" anywhere in an id.
    return bool(HUB_ID.match(value)) and ".." not in value and "--" not in value


def _is_dir(path: Path) -> bool:
    # A name too long for the filesystem, or with a NUL in it, names no directory.
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def resolve_model_dir(reference: ModelReference) -> Path:
    """A local directory holding the model; downloads (through the HF cache) or builds it."""
    if reference.kind == "local":
        assert reference.path is not None
        return reference.path
    if reference.kind == "demo":
        entry = find_build(reference.name)
        assert entry is not None, f"{reference.name} is not built by tunery"
        return built_model_dir(entry)
    return _download(reference)


def hub_model_problem(reference: ModelReference) -> str | None:
    """Why this machine could not download a Hub model, asked before a run queues; None when
    the model is in the Hugging Face cache or the Hub has it (one metadata request, or none
    offline). A run on a model that does not exist then never waits in the queue, retries,
    and fails after it."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert reference.repo_id is not None
    cached = try_to_load_from_cache(
        reference.repo_id, "config.json", revision=reference.revision or "main"
    )
    if isinstance(cached, str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return (
            f"{reference.repo_id} is not in the server's Hugging Face cache, and the server is "
            "offline (HF_HUB_OFFLINE): put the model in the models directory, or download it "
            "once with network access"
        )
    try:
        model_info(reference.repo_id, revision=reference.revision, timeout=HUB_CHECK_SECONDS)
    except GatedRepoError:
        return f"{reference.repo_id} is gated: accept its license on the Hub and set HF_TOKEN"
    except RevisionNotFoundError:
        return f"{reference.repo_id} has no revision {reference.revision!r}"
    except RepositoryNotFoundError:
        return (
            f"{reference.repo_id} does not exist on the Hugging Face Hub (or is private: set "
            "HF_TOKEN on the server)"
        )
    except Exception as failure:  # any transport failure: the Hub cannot be asked from here
        return (
            f"{reference.repo_id} is not in the server's Hugging Face cache, and the server "
            f"cannot reach the Hub to get it ({type(failure).__name__}): put the model in "
            "the models directory, or give the server network access"
        )
    return None


def _download(reference: ModelReference) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert reference.repo_id is not None
    try:
        return Path(
            snapshot_download(
                reference.repo_id, revision=reference.revision, allow_patterns=HUB_FILES
            )
        )
    except GatedRepoError:
        raise ModelLoadError(
            f"{reference.repo_id} is gated on the Hugging Face Hub",
            hint="accept its license on the Hub and set HF_TOKEN",
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(
            f"{reference.repo_id} has no revision {reference.revision!r}"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{reference.repo_id} does not exist on the Hugging Face Hub (or is private)",
            hint="check the id, or set HF_TOKEN for a private model",
        ) from None
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            raise ModelLoadError(
                f"{reference.repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                hint="download it once with network access, or unset HF_HUB_OFFLINE",
            ) from None
        raise TransientError(
            f"could not reach the Hugging Face Hub to download {reference.repo_id}"
        ) from None
    except OSError as error:
        raise TransientError(f"downloading {reference.repo_id} failed: {error}") from None


@dataclass(frozen=True)
class ChatFormat:
    """How conversations become text: the template, where it came from, and its stop token."""

    template: str
    source: Literal["model", "default"]
    end_of_turn: str


def load_tokenizer(model_dir: Path) -> tuple[PreTrainedTokenizerBase, ChatFormat, list[str]]:
    """Load the tokenizer, settle the chat format and fix a missing pad token.

    Returns the tokenizer, its chat format and notes for the run log. A missing pad token
    becomes the end-of-text token rather than a new token, so embeddings keep their size.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load the tokenizer from {model_dir}: {error}",
            hint="the model directory needs its tokenizer files (tokenizer.json, or "
            "tokenizer_config.json with the vocabulary files) next to config.json",
        ) from None
    if tokenizer.eos_token is None:
        raise ModelLoadError(
            f"the tokenizer in {model_dir} defines no end-of-text (eos) token",
            hint="set eos_token in tokenizer_config.json",
        )
    notes = []
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"tokenizer has no pad token; using {tokenizer.eos_token!r}")
    if tokenizer.chat_template:
        source: Literal["model", "default"] = "model"
    else:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        source = "default"
        notes.append("base model has no chat template; using tunery's default (### markers)")
    chat_format = ChatFormat(
        template=tokenizer.chat_template,
        source=source,
        end_of_turn=find_end_of_turn(tokenizer),
    )
    return tokenizer, chat_format, notes


def find_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The special token the chat template writes right after an assistant message."""
    marker = "\x1fTUNERY_END_PROBE\x1f"
    try:
        rendered: str = tokenizer.apply_chat_template(  # type: ignore[assignment]
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            tokenize=False,
        )
    except Exception as error:  # Jinja's own errors, SecurityError from the sandbox
        raise ModelLoadError(
            f"the model's chat template cannot render a user/assistant exchange: {error}",
            hint="fix chat_template in the model's tokenizer_config.json or chat_template.jinja",
        ) from None
    tail = rendered.split(marker, 1)[-1]
    specials = sorted(
        tokenizer.all_special_tokens + list(tokenizer.added_tokens_encoder), key=len, reverse=True
    )
    for position in range(len(tail)):
        for token in specials:
            if token and tail.startswith(token, position):
                return token
    return tokenizer.eos_token


@dataclass(frozen=True)
class Precision:
    """Weights dtype and the autocast dtype (None: plain fp32) for a device."""

    weights: torch.dtype
    autocast: torch.dtype | None


def choose_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_precision(mixed_precision: str, device: torch.device) -> Precision:
    """Map the recipe's mixed_precision onto what ``device`` can do."""
    import torch

    on_gpu = device.type == "cuda"
    if mixed_precision == "fp16" and not on_gpu:
        raise ConfigError.single(
            "training.mixed_precision", "fp16 needs a CUDA GPU; use 'auto', 'bf16' or 'no'"
        )
    if mixed_precision == "auto":
        if not on_gpu:
            return Precision(torch.float32, None)
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mixed_precision == "no":
        return Precision(torch.float32, None)
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    # On CPU the frozen base stays fp32: CPU matmuls in half precision are slower, not faster.
    return Precision(dtype if on_gpu else torch.float32, dtype)


def check_quantization(quantize_base: str, device: torch.device) -> None:
    """Refuse a 4-bit base where bitsandbytes cannot train it: no CUDA, or not installed."""
    import importlib.util

    if quantize_base == "none":
        return
    if device.type != "cuda":
        raise ConfigError.single(
            "lora.quantize_base",
            f"{quantize_base} needs a CUDA GPU (bitsandbytes); this node has none",
            hint="set lora.quantize_base to none, or run on a GPU tier",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError.single(
            "lora.quantize_base",
            f"{quantize_base} needs the bitsandbytes package, which this node lacks",
            hint="install tunery[gpu] on the GPU node, or set lora.quantize_base to none",
        )


def load_model(
    model_dir: Path, precision: Precision, device: torch.device, *, quantize_base: str = "none"
) -> PreTrainedModel:
    """Load the causal LM in ``precision.weights`` on ``device``.

    ``quantize_base="nf4"`` loads the decoder's linear layers in 4 bits (bitsandbytes NF4
    with double quantization, computing in the autocast dtype); embeddings and the output
    head stay in ``precision.weights``. Callers check ``check_quantization`` first.
    """
    from transformers import AutoModelForCausalLM

    options: dict[str, object] = {"dtype": precision.weights}
    if quantize_base == "nf4":
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=precision.autocast or precision.weights,
        )
        # A quantized model is placed while loading; it cannot be moved afterwards.
        options["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **options)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(
            f"cannot load a causal language model from {model_dir}: {error}",
            hint="tunery fine-tunes decoder-only models that AutoModelForCausalLM loads",
        ) from None
    # transformers types PreTrainedModel.to by its decorator's signature, not Module.to's.
    return model if quantize_base == "nf4" else model.to(device)  # type: ignore[arg-type]


def max_context(model: PreTrainedModel) -> int:
    """The longest sequence the model was built for."""
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
