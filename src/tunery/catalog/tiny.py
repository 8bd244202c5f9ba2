"""Small models of real families, built offline, for export tests and benchmarks.

Each family reproduces what makes its real counterpart different for conversion:

- ``qwen2``: Qwen2 architecture (attention biases, tied embeddings), a byte-level BPE
  tokenizer with Qwen2's one-digit regex, no BOS, and Qwen2.5's ChatML template with its
  default system prompt;
- ``mistral-spm``: Mistral architecture with a SentencePiece BPE tokenizer
  (``tokenizer.model``, byte fallback, like Llama 2 and Mistral 7B) and the ``[INST]``
  template, which has no system role.

The weights are random unless ``pretrain_steps`` is given. Dimensions default to multiples
of 256 so K-quants apply to every matrix; ``hidden_size`` and ``layers`` scale a model up
to a realistic shape for benchmarks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from tunery.catalog.demo import pretrain

Family = Literal["qwen2", "mistral-spm"]
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)


def build_tiny_model(
    family: Family,
    out_dir: Path,
    *,
    hidden_size: int = 256,
    layers: int = 2,
    vocab_size: int = 1024,
    pretrain_steps: int = 0,
) -> Path:
    """Write a model of ``family`` to ``out_dir`` (replaced atomically); returns it."""
    import torch
    from transformers import AutoTokenizer

    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    try:
        if family == "qwen2":
            _qwen2_tokenizer(staging, vocab_size)
        else:
            _spm_tokenizer(staging, vocab_size)
        tokenizer = AutoTokenizer.from_pretrained(staging)
        model = _model(
            family, tokenizer, hidden_size=hidden_size, layers=layers, vocab_size=vocab_size
        )
        if pretrain_steps:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                pretrain(model, tokenizer, steps=pretrain_steps)
            finally:
                torch.set_num_threads(threads)
        model.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _model(
    family: Family, tokenizer: Any, *, hidden_size: int, layers: int, vocab_size: int
) -> Any:
    import torch
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    heads = hidden_size // 64
    common = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 3,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 2048,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    torch.manual_seed(0)
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    return MistralForCausalLM(MistralConfig(**common, sliding_window=None))


def _corpus() -> list[str]:
    from tunery.catalog.demo_data import demo_corpus

    return list(demo_corpus())


def _qwen2_tokenizer(out_dir: Path, vocab_size: int) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=2048,
        chat_template=QWEN2_TEMPLATE,
    ).save_pretrained(out_dir)


def _spm_tokenizer(out_dir: Path, vocab_size: int) -> None:
    import io

    import sentencepiece
    from transformers import AutoTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "legacy": True,
                "model_max_length": 2048,
            }
        )
    )
    # transformers converts the SentencePiece model to a fast tokenizer on load.
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    tokenizer.chat_template = MISTRAL_TEMPLATE
    tokenizer.save_pretrained(out_dir)
