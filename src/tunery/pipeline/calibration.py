"""The estimate's prior: a micro-benchmark of a model shape on this machine's hardware.

Before any run of a model was measured on a tier, its estimate needs to know how fast that
tier trains that shape. Peak FLOPs are a poor guess (a CPU, or a small model that cannot
fill a GPU, reaches a small and unpredictable share of them), so the tier measures instead:
a few optimizer steps of the recipe's adapter on a randomly initialised model of the same
width, with one decoder layer and with three, through the training loop every run uses
(same packing, attention, loss and precision). Half the difference between the two is a
layer's cost; the rest (embeddings, output head, optimizer, loop) is the base; the full
model is the base plus a layer's cost times its depth. The same two models time an
evaluation pass (forward only), token-by-token generation (the samples), and writing and
reading their weights (loading the model, saving the adapter, the GGUF export). A layer's
cost is multiplied by the depth (30 for SmolLM2), so each timing is the fastest of several:
another process on the machine only ever adds time, which a mean would carry into the
estimate thirty-fold.

``calibrate`` is run in a process of its own on a node of the tier (``tunery.worker.calibrate``)
and its answer cached by the control plane (``tunery.runs.calibration``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from tunery.pipeline.config import RunRecipe
from tunery.pipeline.memory import ModelShape

DEPTHS = (1, 3)
"""Decoder layers of the two benchmark models: their difference, over its layers, is one
layer's cost."""
MEASURED_STEPS = 3
WARM_UP_STEPS = 1
"""Optimizer steps timed per model, after steps that are run but not counted (the first
step pays one-off costs: allocation, kernel choice)."""
DECODE_TOKENS = (4, 20)
"""Tokens generated in two passes: their difference is the per-token cost, the prompt's
forward pass cancelling out."""
REPEATS = 3
"""Times each generation and each write-and-read of the weights is timed (the fastest counts)."""


def calibrate(shape_config: dict[str, Any], recipe: RunRecipe, *, example_tokens: int) -> dict:
    """Seconds per token of training, evaluation and generation, and per parameter of weight
    I/O, for the full model of ``shape_config`` trained as ``recipe`` says, on this machine.

    ``example_tokens``: the length of a typical example of the run's data.
    """
    shape = ModelShape.from_config(shape_config)
    measured = [_measure(shape, depth, recipe, example_tokens) for depth in DEPTHS]
    result: dict[str, Any] = {"layers": shape.layers, "example_tokens": example_tokens}
    shallow, deep = DEPTHS
    for key in ("train_seconds_per_token", "eval_seconds_per_token", "decode_seconds_per_token"):
        one, more = (sample[key] for sample in measured)
        # A noisy machine can make more layers look cheaper than one: never below zero.
        per_layer = max(more - one, 0.0) / (deep - shallow)
        base = max(one - per_layer * shallow, 0.0)
        result[key] = base + per_layer * shape.layers
    result["weights_seconds_per_parameter"] = min(
        sample["weights_seconds_per_parameter"] for sample in measured
    )
    return result


def _measure(shape: ModelShape, depth: int, recipe: RunRecipe, example_tokens: int) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from tunery.pipeline.attention import attention_in_use
    from tunery.pipeline.chat import Example
    from tunery.pipeline.evaluation import evaluate
    from tunery.pipeline.load import choose_device, choose_precision
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import default_kernels, train
    from tunery.pipeline.train_setup import TrainSetup

    device = choose_device()
    precision = choose_precision(recipe.training.mixed_precision, device)
    model = _random_model(shape, depth, example_tokens, precision.weights, device)
    peft_model, _ = attach_lora(
        model, recipe.lora, gradient_checkpointing=recipe.training.gradient_checkpointing
    )
    steps = WARM_UP_STEPS + MEASURED_STEPS
    per_step = recipe.training.batch_size * recipe.training.gradient_accumulation_steps
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        3, shape.vocab_size, (per_step * steps, example_tokens + 1), generator=generator
    ).tolist()
    examples = [Example(input_ids=row[:-1], targets=row[1:]) for row in tokens]
    config = recipe.training.model_copy(
        update={"max_steps": steps, "checkpoint_every_steps": steps + 1, "warmup_ratio": 0.0}
    )
    reporter = RecordingReporter()
    with tempfile.TemporaryDirectory(prefix="tunery-calibration-") as scratch:
        setup = TrainSetup(
            model=peft_model,
            examples=examples,
            config=config,
            precision=precision,
            device=device,
            pad_id=0,
            checkpoint_dir=Path(scratch) / "checkpoints",
            fingerprint="calibration",
        )
        kernels = default_kernels(setup)
        train(setup, reporter)
        timed = reporter.steps[WARM_UP_STEPS:]
        train_seconds = min(1 / step.tokens_per_second for step in timed)
        with attention_in_use(peft_model, kernels.attention):
            evaluation = evaluate(
                peft_model,
                examples[:per_step],
                pad_id=0,
                device=device,
                autocast=precision.autocast,
                attention=kernels.attention,
            )
        decode = _decode_seconds_per_token(peft_model, examples[0].input_ids[:16], device)
        weights = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        io_seconds = float("inf")
        for _ in range(REPEATS):
            started = time.perf_counter()
            save_file(weights, Path(scratch) / "weights.safetensors")
            load_file(Path(scratch) / "weights.safetensors")
            io_seconds = min(io_seconds, time.perf_counter() - started)
    parameters = sum(value.numel() for value in weights.values())
    return {
        "train_seconds_per_token": train_seconds,
        "eval_seconds_per_token": evaluation.seconds / max(1, evaluation.tokens),
        "decode_seconds_per_token": decode,
        "weights_seconds_per_parameter": io_seconds / parameters,
    }


def _random_model(shape: ModelShape, depth: int, context: int, dtype: Any, device: Any) -> Any:
    """A Llama-architecture model of ``shape``'s width with ``depth`` layers: Qwen2, Mistral
    and Llama layers do the same matrix products, biases aside."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=depth,
        num_attention_heads=shape.attention_heads,
        num_key_value_heads=shape.key_value_heads,
        head_dim=shape.head_dim,
        vocab_size=shape.vocab_size,
        tie_word_embeddings=shape.tied_embeddings,
        max_position_embeddings=max(2 * context, 512),
    )
    torch.manual_seed(0)
    # transformers types PreTrainedModel.to by its decorator's signature, not Module.to's.
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)  # type: ignore[call-arg]


def _decode_seconds_per_token(model: Any, prompt: list[int], device: Any) -> float:
    import torch

    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    fastest = {count: float("inf") for count in DECODE_TOKENS}
    model.eval()
    with torch.no_grad():
        for _ in range(REPEATS):
            for count in DECODE_TOKENS:
                started = time.perf_counter()
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=count,
                    min_new_tokens=count,
                    do_sample=False,
                    pad_token_id=0,
                )
                fastest[count] = min(fastest[count], time.perf_counter() - started)
    few, many = DECODE_TOKENS
    return max(fastest[many] - fastest[few], 0.0) / (many - few)
