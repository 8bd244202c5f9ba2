"""The demo base model ``tunery/demo-tiny``, built offline and deterministically.

A 4-layer Llama with grouped-query attention, a byte-level BPE tokenizer trained here on
the demo corpus (Llama 3's pre-tokenizer regex, so GGUF converters recognise it), and a
ChatML chat template. Every matrix has rows whose length is a multiple of 256, so a Q4_K_M
export quantizes every weight as Q4_K/Q6_K instead of falling back. Same inputs, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEMO_MODEL_ID = "tunery/demo-tiny"
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
VOCAB_SIZE = 1024
DEMO_MODEL_SHAPE: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
"""The config.json fields that set the demo model's size: it is built with them, and the
catalog gives them to the memory planner."""
# Llama 3's split regex: digits in runs of up to three, contractions, letters, punctuation.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_demo_tokenizer(out_dir: Path) -> None:
    """Train the byte-level BPE tokenizer and save it in transformers' format."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    from tunery.catalog.demo_data import demo_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, TURN_START, TURN_END]
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(demo_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=1024,
        chat_template=CHAT_TEMPLATE,
    )
    wrapped.save_pretrained(out_dir)


PRETRAIN_STEPS = 120
PRETRAIN_ROW_TOKENS = 256
PRETRAIN_ROWS_PER_STEP = 8


def pretrain(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, steps: int = PRETRAIN_STEPS
) -> None:
    """Teach the random model the demo corpus as plain text (no chat format).

    A base that already knows the words and facts makes the demo fine-tune about what
    fine-tuning is for: the chat format, the tasks, and when to stop. Sequences are
    concatenated and cut into fixed rows, as in ordinary pretraining.
    """
    import torch

    from tunery.catalog.demo_data import pretraining_text

    ids: list[int] = []
    for text in pretraining_text():
        ids.extend(tokenizer(text, add_special_tokens=True)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    rows = torch.tensor(ids[: len(ids) // PRETRAIN_ROW_TOKENS * PRETRAIN_ROW_TOKENS]).view(
        -1, PRETRAIN_ROW_TOKENS
    )
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1
    )
    model.train()
    for step in range(steps):
        start = step * PRETRAIN_ROWS_PER_STEP % rows.shape[0]
        batch = rows[order[start : start + PRETRAIN_ROWS_PER_STEP]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def build_demo_model(out_dir: Path) -> Path:
    """Write the demo model to ``out_dir`` (replaced atomically); returns ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-tiny-", dir=out_dir.parent))
    try:
        build_demo_tokenizer(staging)
        tokenizer = AutoTokenizer.from_pretrained(staging)
        config = LlamaConfig(
            **DEMO_MODEL_SHAPE,
            rms_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        generator_state = torch.random.get_rng_state()
        threads = torch.get_num_threads()
        # One thread: float sums then add up in the same order on every machine.
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
            pretrain(model, tokenizer)
        finally:
            torch.set_num_threads(threads)
            torch.random.set_rng_state(generator_state)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(TURN_END)],
        )
        model.save_pretrained(staging)
        (staging / "tunery-demo.json").write_text(
            json.dumps({"id": DEMO_MODEL_ID, "parameters": model.num_parameters()}) + "\n"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def builder_fingerprint() -> str:
    """Identifies this builder's source: same fingerprint, same model bytes."""
    from tunery.catalog import demo_data

    digest = hashlib.sha256()
    for path in (Path(__file__), Path(demo_data.__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_demo_model(cache_root: Path) -> Path:
    """The demo model under ``cache_root``, built only when the builder's source changed.

    Tests and benchmarks share builds this way; stale builds are removed.
    """
    target = cache_root / f"demo-tiny-{builder_fingerprint()}"
    if not (target / "model.safetensors").is_file():
        for stale in cache_root.glob("demo-tiny-*"):
            shutil.rmtree(stale, ignore_errors=True)
        build_demo_model(target)
    return target
