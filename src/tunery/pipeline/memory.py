"""Peak GPU memory of a LoRA run, estimated from the model's config.json before anything loads.

Torch-free, so the control plane can refuse a run that cannot fit a tier's card before it
queues, with the batch size or sequence length that would fit. The estimate is an upper
bound for tunery's loop: every micro-batch is assumed full (``batch_size`` examples of
``max_seq_length`` tokens), attention is a variable-length kernel (no seq² scores), and
logits exist one chunk at a time.

What it counts, in bytes:

- weights: every parameter in the compute dtype (2 bytes in bf16/fp16, 4 in fp32); with
  ``quantize_base: nf4`` the decoder's linear layers take 4 bits plus one fp32 scale per
  64 weights, embeddings and the output head stay 16-bit (as bitsandbytes loads them);
- LoRA: fp32 parameters, gradients and the two AdamW moments (16 bytes per parameter);
- activations saved for the backward pass, per token and layer (below), or with gradient
  checkpointing one hidden state per layer plus one layer's activations being recomputed;
- the loss: one chunk of logits (fp32 and compute dtype) and the hidden states' gradient;
- on several devices (data-parallel, ``pipeline.distributed``), per device: the run is
  planned per device, since every device holds the whole base, the adapter and
  ``batch_size`` examples; the all-reduce adds one fp32 copy of the adapter's gradients
  and NCCL's own buffers (COMMUNICATOR_BYTES);
- the CUDA context and allocator slack: a fixed CONTEXT_BYTES and SLACK on top.

A DPO run packs two sequences per example (the pair's answers, each after its prompt), so
its micro-batches hold twice the tokens (``sequences_per_example``). Its reference pass
scores the same micro-batches without gradients and saves no activations, so its peak stays
below a training step's and adds nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunery.errors import ConfigError
from tunery.pipeline.config import MIN_SEQ_LENGTH, RunRecipe

GIB = 2**30
CONTEXT_BYTES = int(0.75 * GIB)
"""The CUDA context, cuBLAS workspaces and kernels' scratch, outside the tensors counted."""
SLACK = 1.10
"""Allocator fragmentation on top of the tensors counted."""
LOGITS_CHUNK_ELEMENTS = 2**26
"""Kept equal to tunery.pipeline.loss.LOGITS_CHUNK_ELEMENTS (a test checks), which needs torch."""
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64
COMMUNICATOR_BYTES = int(0.5 * GIB)
"""NCCL's buffers and streams for one communicator on a device: a few MiB per channel and
peer, and its own context; rounded up."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only transformer's config.json."""

    hidden_size: int
    layers: int
    vocab_size: int
    intermediate_size: int
    attention_heads: int
    key_value_heads: int
    head_dim: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Read Llama/Qwen2/Mistral-style names (and GPT-style aliases); ValueError naming
        the field when one is absent or not a positive whole number."""

        def size(*names: str, default: int | None = None) -> int:
            value = next((config[name] for name in names if config.get(name) is not None), None)
            value = default if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.json has no usable {names[0]} ({value!r})")
            return value

        hidden = size("hidden_size", "n_embd")
        heads = size("num_attention_heads", "n_head")
        return cls(
            hidden_size=hidden,
            layers=size("num_hidden_layers", "n_layer"),
            vocab_size=size("vocab_size"),
            intermediate_size=size("intermediate_size", default=4 * hidden),
            attention_heads=heads,
            key_value_heads=size("num_key_value_heads", default=heads),
            head_dim=size("head_dim", default=max(hidden // heads, 1)),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by module name."""
        query = self.attention_heads * self.head_dim
        key_value = self.key_value_heads * self.head_dim
        return {
            "q_proj": (self.hidden_size, query),
            "k_proj": (self.hidden_size, key_value),
            "v_proj": (self.hidden_size, key_value),
            "o_proj": (query, self.hidden_size),
            "gate_proj": (self.hidden_size, self.intermediate_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }

    @property
    def decoder_linear_parameters(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def embedding_parameters(self) -> int:
        """Input embeddings plus the output head (once when they are tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden_size
        return self.decoder_linear_parameters + self.embedding_parameters + norms


def lora_parameters(shape: ModelShape, rank: int, target_modules: str | list[str]) -> int:
    """Trainable LoRA parameters; names the model lacks count nothing (refused at load)."""
    shapes = shape.linear_shapes()
    names = shapes if target_modules == "all-linear" else [n for n in target_modules if n in shapes]
    return shape.layers * sum(rank * sum(shapes[name]) for name in names)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes by part; ``total`` includes the context and the slack."""

    weights: int
    lora_state: int
    activations: int
    loss: int
    total: int
    all_reduce: int = 0
    """On several devices: the all-reduce's gradient buffer and NCCL's own (in ``total``)."""

    def as_dict(self) -> dict[str, float]:
        return {name: round(value / GIB, 3) for name, value in vars(self).items()}


def activation_bytes_per_token(
    shape: ModelShape, *, value_bytes: int, lora_dropout: bool, checkpointing: bool
) -> int:
    """Bytes saved for the backward pass per token, over all layers.

    A decoder layer saves about 10 hidden-size vectors per token (norm inputs and outputs,
    query, attention output, residuals), 4 of the MLP's width (gate, up, their activation and
    product), keys and values; LoRA dropout keeps one dropped copy of each adapted input
    (about 6 hidden-size vectors and one of the MLP's width).
    """
    key_value = shape.key_value_heads * shape.head_dim
    per_layer = 10 * shape.hidden_size + 4 * shape.intermediate_size + 2 * key_value
    if lora_dropout:
        per_layer += 6 * shape.hidden_size + shape.intermediate_size
    if checkpointing:
        # Layer inputs are kept; one layer's activations exist while it is recomputed.
        return value_bytes * (shape.layers * shape.hidden_size + per_layer)
    return value_bytes * shape.layers * per_layer


@dataclass(frozen=True)
class TrainingPlan:
    """What besides the model's shape and the tokens decides the memory of a LoRA run."""

    trainable_parameters: int
    gradient_checkpointing: bool
    lora_dropout: bool = True
    quantize_base: str = "none"
    value_bytes: int = 2  # 2 for bf16/fp16 compute, 4 for fp32
    sequences_per_example: int = 1  # 2 for DPO: both answers of a pair
    devices: int = 1  # data-parallel devices; the plan is per device


def estimate_peak_memory(
    shape: ModelShape, plan: TrainingPlan, *, tokens_per_micro_batch: int
) -> MemoryEstimate:
    """Peak memory of training ``shape`` as ``plan`` says, on micro-batches of that many tokens."""
    value_bytes = plan.value_bytes
    linear = shape.decoder_linear_parameters
    per_weight = NF4_BYTES_PER_WEIGHT if plan.quantize_base == "nf4" else value_bytes
    weights = shape.embedding_parameters * value_bytes + int(linear * per_weight)
    lora_state = 16 * plan.trainable_parameters
    activations = tokens_per_micro_batch * activation_bytes_per_token(
        shape,
        value_bytes=value_bytes,
        lora_dropout=plan.lora_dropout,
        checkpointing=plan.gradient_checkpointing,
    )
    chunk = min(LOGITS_CHUNK_ELEMENTS, tokens_per_micro_batch * shape.vocab_size)
    hidden = tokens_per_micro_batch * shape.hidden_size * value_bytes
    loss = chunk * (4 + value_bytes) + 2 * hidden  # logits chunk; hidden states and gradient
    all_reduce = 4 * plan.trainable_parameters if plan.devices > 1 else 0
    tensors = weights + lora_state + activations + loss + all_reduce
    communicator = COMMUNICATOR_BYTES if plan.devices > 1 else 0
    return MemoryEstimate(
        weights=weights,
        lora_state=lora_state,
        activations=activations,
        loss=loss,
        total=int(tensors * SLACK) + CONTEXT_BYTES + communicator,
        all_reduce=all_reduce + communicator,
    )


def largest_fitting_tokens(shape: ModelShape, plan: TrainingPlan, budget_bytes: int) -> int:
    """The most tokens per micro-batch whose estimate fits ``budget_bytes``; 0 if none."""

    def fits(tokens: int) -> bool:
        estimate = estimate_peak_memory(shape, plan, tokens_per_micro_batch=tokens)
        return estimate.total <= budget_bytes

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):  # the estimate grows with the tokens: double, then bisect
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def fit_problem(
    shape: ModelShape,
    plan: TrainingPlan,
    *,
    batch_size: int,
    sequence_length: int,
    gpu_memory_gib: float,
    card_name: str = "the card",
) -> ConfigError | None:
    """Why ``batch_size`` examples of ``sequence_length`` tokens do not fit, or None (each
    example ``plan.sequences_per_example`` sequences of that length).

    The error names ``training.batch_size`` with the largest that fits, else
    ``training.max_seq_length`` (at batch size 1), else ``lora.quantize_base`` (or
    ``base_model`` when even 4-bit weights do not fit).
    """
    budget = int(gpu_memory_gib * GIB)
    per_example = plan.sequences_per_example
    estimate = estimate_peak_memory(
        shape, plan, tokens_per_micro_batch=batch_size * sequence_length * per_example
    )
    if estimate.total <= budget:
        return None
    need = f"need about {estimate.total / GIB:.1f} GiB; {card_name} has {gpu_memory_gib:g} GiB"
    # Tokens per example from here on: both sequences of a pair.
    tokens = largest_fitting_tokens(shape, plan, budget) // per_example
    if tokens >= sequence_length:
        return ConfigError.single(
            "training.batch_size",
            f"{batch_size} examples of up to {sequence_length} tokens {need}",
            hint=f"use training.batch_size {tokens // sequence_length} or lower, with "
            "training.gradient_accumulation_steps to keep the effective batch",
        )
    if tokens >= MIN_SEQ_LENGTH:
        length = tokens // MIN_SEQ_LENGTH * MIN_SEQ_LENGTH
        return ConfigError.single(
            "training.max_seq_length",
            f"even one example of {sequence_length} tokens would {need}",
            hint=f"use training.batch_size 1 and training.max_seq_length {length} or lower"
            + ("" if plan.gradient_checkpointing else ", or turn gradient_checkpointing on"),
        )
    if plan.quantize_base == "none":
        return ConfigError.single(
            "lora.quantize_base",
            f"the 16-bit base weights leave no room to train ({need})",
            hint="use lora.quantize_base nf4 (a 4-bit base, QLoRA) or a card with more memory",
        )
    return ConfigError.single(
        "base_model", f"this model does not fit the card even with a 4-bit base ({need})"
    )


def plan_for_recipe(recipe: RunRecipe, shape: ModelShape, *, devices: int = 1) -> TrainingPlan:
    """The plan of ``recipe`` on each of ``devices`` GPUs (bf16/fp16 compute unless
    mixed_precision is 'no')."""
    training = recipe.training
    return TrainingPlan(
        trainable_parameters=lora_parameters(shape, recipe.lora.rank, recipe.lora.target_modules),
        gradient_checkpointing=training.gradient_checkpointing,
        lora_dropout=recipe.lora.dropout > 0,
        quantize_base=recipe.lora.quantize_base,
        value_bytes=4 if training.mixed_precision == "no" else 2,
        sequences_per_example=2 if recipe.method.preference else 1,
        devices=devices,
    )


def check_fits(
    recipe: RunRecipe,
    model_config: dict[str, Any],
    gpu_memory_gib: float,
    *,
    longest_example: int | None = None,
    card_name: str = "the card",
    devices: int = 1,
) -> MemoryEstimate:
    """The estimate for ``recipe`` on each card of ``gpu_memory_gib`` (``devices`` of them,
    data-parallel); ConfigError if it does not fit (see ``fit_problem``). ``model_config``:
    the base model's config.json as a dict (its context, ``max_position_embeddings``, 2048
    when absent); ``longest_example``: the tokens of the data's longest example (for DPO, of
    one answer after its prompt), when known, since a micro-batch never holds longer ones."""
    shape = ModelShape.from_config(model_config)
    plan = plan_for_recipe(recipe, shape, devices=devices)
    context = model_config.get("max_position_embeddings") or 2048
    asked = recipe.training.max_seq_length
    length = min(asked, context) if asked else context
    if longest_example:
        length = min(length, longest_example)
    batch_size = recipe.training.batch_size
    problem = fit_problem(
        shape,
        plan,
        batch_size=batch_size,
        sequence_length=length,
        gpu_memory_gib=gpu_memory_gib,
        card_name=card_name,
    )
    if problem is not None:
        raise problem
    return estimate_peak_memory(
        shape, plan, tokens_per_micro_batch=batch_size * length * plan.sequences_per_example
    )
