"""GPU check: tunery's training loop on CUDA, proven against CPU and measured against HF Trainer.

``make gpu-check`` runs it; it needs torch, transformers and peft, plus tunery's own pure-
Python dependencies (the Makefile installs wheels from ``.whl/`` when the folder exists,
see /work/shared/notes/gpu.md). Parts, each recorded in one JSON file and printed as a table:

1. agreement: the demo model trains a few steps on the CPU (fp32) and, with CUDA, on the
   GPU in fp32 and bf16, over the same batches. fp32 on the GPU must match the CPU within
   FP32_TOLERANCE (relative, every step); bf16 within BF16_TOLERANCE (relative, every
   step: bf16 keeps 8 bits of mantissa, and ten steps compound the rounding).
2. throughput (CUDA only): randomly initialised Qwen2-style ~0.5B and Llama-style ~1.5B
   models (built from a config, no downloads), LoRA r16 on all linear layers, bf16, batches
   of 8 synthetic examples (lognormal lengths, median 512, at most 2048 tokens, half of each
   trained). Variants over the same batches in the same order: tunery with gradient
   checkpointing off and on, HF Trainer + PEFT padding each batch to its longest row, and
   the same Trainer with ``DataCollatorWithFlattening``. Reported: real tokens/s (median
   step time after WARMUP_STEPS), peak GPU memory (``max_memory_allocated``) beside the
   memory planner's figure for tunery's runs (a warning where the planner was lower), the
   final loss, and MFU: model FLOPs per second over the card's dense bf16 peak (PEAK_TFLOPS),
   where a trained token costs 4·N (N: parameters outside the input embedding; LoRA on a
   frozen base computes forward and input gradients, not weight gradients) and attention
   adds 3 passes of 4·d per layer per attended pair (causal: length²/2 pairs per example).
3. resume (CUDA only): 10 steps straight against 6 + resume from the checkpoint at step 6;
   the resumed losses must follow the straight ones within RESUME_TOLERANCE.
4. data-parallel (two or more CUDA devices; skipped with one): the Qwen2-style ~0.5B model
   on one GPU with a global batch of 8 per GPU, then on every GPU (one process each, NCCL,
   ``pipeline.distributed``) with 8 each, over the same batches: the scaling (median step
   time on one GPU over that on all, for the same examples per step), its efficiency (over
   the number of GPUs), the median all-reduce time per step, and the final losses (within
   BF16_TOLERANCE: the split changes only the order of sums).

Without CUDA it says so, runs part 1 on the CPU (tunery's kernels against the reference
loss) and exits 0. On one H100 the whole check is sized to finish in about 5 minutes.

Usage: ``python bench/gpu_check.py [--json PATH] [--model-dir DEMO] [--steps N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-dataset.jsonl"
CACHE = REPO / "bench" / ".cache"
FP32_TOLERANCE = 1e-3
BF16_TOLERANCE = 0.03
RESUME_TOLERANCE = 1e-3
WARMUP_STEPS = 3
LOSS_GAP_WARNING = 0.02
IGNORE = -100
PEAK_TFLOPS = {  # dense bf16 (T4: fp16) peaks by device name, most specific first
    "H100 PCIe": 756,
    "H100": 989,
    "H200": 989,
    "A100": 312,
    "L4": 121,
    "T4": 65,
}
SHAPES = {
    "qwen2-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    ),
    "llama-1.5b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
    ),
}


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in device_name), None)


# --- part 1: agreement on the demo model ---------------------------------------------------


def demo_losses(
    model_dir: Path, device: str, dtype: str, steps: int, *, reference: bool = False
) -> dict[str, Any]:
    """Losses of ``steps`` tunery steps on the demo model, and the kernels used: those chosen
    for the device, or with ``reference`` the masked rows and full-logits loss."""
    import torch

    from tunery.pipeline.config import LoraSettings, TrainingConfig
    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.kernels import Kernels
    from tunery.pipeline.load import choose_precision, load_model, load_tokenizer
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import default_kernels, train
    from tunery.pipeline.train_setup import TrainSetup

    target = torch.device(device)
    precision = choose_precision("no" if dtype == "fp32" else dtype, target)
    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    data = prepare_data([DATASET], tokenizer, chat_format, max_length=512, seed=42)
    torch.manual_seed(42)
    model, _ = attach_lora(
        load_model(model_dir, precision, target),
        LoraSettings(rank=16, alpha=32, dropout=0.0),
        gradient_checkpointing=False,
    )
    config = TrainingConfig(max_steps=steps, learning_rate=2e-3, batch_size=8, warmup_ratio=0)
    reporter = RecordingReporter()
    with tempfile.TemporaryDirectory() as checkpoints:
        setup = TrainSetup(
            model,
            data.examples,
            config,
            precision,
            target,
            tokenizer.pad_token_id,
            Path(checkpoints),
            "gpu-check",
        )
        kernels = Kernels("sdpa", "logits") if reference else default_kernels(setup)
        train(dataclasses.replace(setup, kernels=kernels), reporter)
    return {
        "losses": [step.loss for step in reporter.steps],
        "kernels": kernels.as_dict(),
    }


def worst_gap(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))


def agreement(model_dir: Path, steps: int, cuda: bool) -> dict[str, Any]:
    runs = {
        "cpu fp32": demo_losses(model_dir, "cpu", "fp32", steps),
        "cpu fp32 reference kernels": demo_losses(model_dir, "cpu", "fp32", steps, reference=True),
    }
    if cuda:
        runs["cuda fp32"] = demo_losses(model_dir, "cuda", "fp32", steps)
        runs["cuda bf16"] = demo_losses(model_dir, "cuda", "bf16", steps)
    reference = runs["cpu fp32"]["losses"]
    checks = {}
    for name, tolerance in (
        ("cpu fp32 reference kernels", FP32_TOLERANCE),
        ("cuda fp32", FP32_TOLERANCE),
        ("cuda bf16", BF16_TOLERANCE),
    ):
        if name in runs:
            gap = worst_gap(runs[name]["losses"], reference)
            checks[name] = {"worst_gap": gap, "tolerance": tolerance, "ok": gap <= tolerance}
    return {"runs": runs, "checks": checks}


# --- part 2: throughput on realistic shapes ------------------------------------------------


def synthetic_examples(vocab_size: int, count: int, seed: int) -> list[Any]:
    """Lognormal lengths (median 512, 64..2048), random tokens, the second half trained."""
    import random

    from tunery.pipeline.chat import Example

    generator = random.Random(seed)
    examples = []
    for _ in range(count):
        length = max(64, min(2048, int(generator.lognormvariate(math.log(512), 0.6))))
        ids = [generator.randrange(vocab_size) for _ in range(length)]
        targets = [IGNORE] * (length // 2) + ids[length // 2 + 1 :] + [IGNORE]
        examples.append(Example(ids, targets))
    return examples


def build_model(shape: str) -> Any:
    """The randomly initialised model of ``shape`` on the current CUDA device (seeded, so
    every process builds the same one)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def model_flops(model: Any, examples: list[Any]) -> float:
    """FLOPs of one pass over ``examples`` (see the module docstring)."""
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    tied = getattr(config, "tie_word_embeddings", False)
    weights = model.num_parameters() - (0 if tied else embedding)
    attention_width = config.num_attention_heads * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    pairs = sum(len(example.input_ids) ** 2 / 2 for example in examples)
    tokens = sum(len(example.input_ids) for example in examples)
    return 4 * weights * tokens + 3 * 4 * attention_width * config.num_hidden_layers * pairs


def run_tunery(shape: str, examples: list[Any], steps: int, checkpointing: bool) -> dict[str, Any]:
    import torch

    from tunery.pipeline.config import LoraSettings, TrainingConfig
    from tunery.pipeline.load import Precision
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import default_kernels, train
    from tunery.pipeline.train_setup import TrainSetup

    model = build_model(shape)
    flops = model_flops(model, examples)
    torch.manual_seed(42)
    peft_model, _ = attach_lora(
        model, LoraSettings(rank=16, alpha=32, dropout=0.0), gradient_checkpointing=checkpointing
    )
    precision = Precision(torch.bfloat16, torch.bfloat16)
    config = TrainingConfig(
        max_steps=steps,
        learning_rate=2e-4,
        batch_size=8,
        warmup_ratio=0,
        gradient_checkpointing=checkpointing,
        checkpoint_every_steps=steps,
    )
    reporter = RecordingReporter()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as checkpoints:
        setup = TrainSetup(
            peft_model,
            examples,
            config,
            precision,
            torch.device("cuda"),
            0,
            Path(checkpoints),
            "gpu-check",
        )
        kernels = default_kernels(setup)
        train(setup, reporter)
    seconds = [1 / step.tokens_per_second for step in reporter.steps]  # per real token
    return {
        "variant": f"tunery, checkpointing {'on' if checkpointing else 'off'}",
        "kernels": kernels.as_dict(),
        "seconds_per_token": statistics.median(seconds[WARMUP_STEPS:]),
        "losses": [step.loss for step in reporter.steps],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "planned_tensors_gib": planned_tensors_gib(setup),
        "flops_per_token": flops / sum(len(example.input_ids) for example in examples),
    }


def planned_tensors_gib(setup: Any) -> float:
    """The memory planner's figure for ``setup`` without its CUDA-context and slack
    allowances: what ``max_memory_allocated`` measures, which it should not exceed."""
    from tunery.pipeline.memory import GIB, ModelShape, TrainingPlan, estimate_peak_memory

    model = setup.model
    plan = TrainingPlan(
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        gradient_checkpointing=setup.config.gradient_checkpointing,
        lora_dropout=False,
        value_bytes=2,
    )
    longest = max(len(example.input_ids) for example in setup.examples)
    estimate = estimate_peak_memory(
        ModelShape.from_config(model.config.to_dict()),
        plan,
        tokens_per_micro_batch=setup.config.batch_size * longest,
    )
    tensors = estimate.weights + estimate.lora_state + estimate.activations + estimate.loss
    return tensors / GIB


def run_trainer(shape: str, examples: list[Any], steps: int, flatten: bool) -> dict[str, Any]:
    """HF Trainer + PEFT over the same batches in the same order (labels shifted back)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tunery.pipeline.budget import epoch_order
    from tunery.pipeline.config import TrainingConfig

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.seconds: list[float] = []
            self.losses: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.started)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    model = build_model(shape)
    flops = model_flops(model, examples)
    torch.manual_seed(42)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    ordered = [examples[i] for i in epoch_order(len(examples), TrainingConfig().seed, 0)]
    features = [
        {"input_ids": example.input_ids, "labels": [IGNORE, *example.targets[:-1]]}
        for example in ordered
    ]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_byte_tokenizer(), pad_token="<pad>")
    collator: Any = (
        DataCollatorWithFlattening()
        if flatten
        else DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE)
    )
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    sequential = (
        {"train_sampling_strategy": "sequential"} if "train_sampling_strategy" in names else {}
    )
    clock = StepClock()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as output_dir:
        Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=output_dir,
                max_steps=steps,
                per_device_train_batch_size=8,
                learning_rate=2e-4,
                lr_scheduler_type="cosine",
                bf16=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                remove_unused_columns=False,
                **sequential,
            ),
            train_dataset=features,
            data_collator=collator,
            callbacks=[clock],
        ).train()
    per_step_tokens = [
        sum(len(example.input_ids) for example in ordered[i * 8 : (i + 1) * 8])
        for i in range(steps)
    ]
    per_token = [s / t for s, t in zip(clock.seconds, per_step_tokens, strict=True)]
    return {
        "variant": "Trainer, " + ("DataCollatorWithFlattening" if flatten else "padded"),
        "seconds_per_token": statistics.median(per_token[WARMUP_STEPS:]),
        "losses": clock.losses,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "flops_per_token": flops / sum(len(example.input_ids) for example in examples),
    }


def _byte_tokenizer() -> Any:
    # The padded collator needs a tokenizer only for its pad id; the data is already ids.
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))


def throughput(steps: int) -> dict[str, Any]:
    import torch

    peak = peak_tflops(torch.cuda.get_device_name())
    results = {}
    for shape in SHAPES:
        vocab = SHAPES[shape]["vocab_size"]
        examples = synthetic_examples(vocab, steps * 8, seed=1)
        rows = [
            run_tunery(shape, examples, steps, checkpointing=False),
            run_tunery(shape, examples, steps, checkpointing=True),
            run_trainer(shape, examples, steps, flatten=False),
            run_trainer(shape, examples, steps, flatten=True),
        ]
        for row in rows:
            row["tokens_per_second"] = 1 / row["seconds_per_token"]
            row["final_loss"] = statistics.fmean(row["losses"][-5:])
            achieved = row["tokens_per_second"] * row["flops_per_token"] / 1e12
            row["mfu"] = achieved / peak if peak else None
            gc.collect()
            torch.cuda.empty_cache()
        results[shape] = rows
    return {"peak_tflops": peak, "shapes": results}


# --- part 3: resume on the GPU -------------------------------------------------------------


def resume_check(model_dir: Path) -> dict[str, Any]:
    import torch

    from tunery.errors import RunCancelled
    from tunery.pipeline.config import LoraSettings, TrainingConfig
    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.load import choose_precision, load_model, load_tokenizer
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainSetup

    cuda = torch.device("cuda")
    precision = choose_precision("bf16", cuda)
    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    data = prepare_data([DATASET], tokenizer, chat_format, max_length=512, seed=42)
    config = TrainingConfig(
        max_steps=10, learning_rate=2e-3, batch_size=8, checkpoint_every_steps=3
    )

    def run(checkpoints: Path, stop_after: int | None) -> list[float]:
        torch.manual_seed(42)
        model, _ = attach_lora(
            load_model(model_dir, precision, cuda),
            LoraSettings(rank=16, alpha=32),
            gradient_checkpointing=True,
        )
        reporter = RecordingReporter(stop_after_step=stop_after)
        setup = TrainSetup(
            model, data.examples, config, precision, cuda, tokenizer.pad_token_id, checkpoints, "r"
        )
        with contextlib.suppress(RunCancelled):  # the interrupted run stops at step 7
            train(setup, reporter)
        return [step.loss for step in reporter.steps]

    with tempfile.TemporaryDirectory() as root:
        straight = run(Path(root) / "straight", None)
        run(Path(root) / "resumed", 7)
        resumed = run(Path(root) / "resumed", None)
    gap = worst_gap(resumed, straight[6:])
    return {
        "straight": straight,
        "resumed": resumed,
        "worst_gap": gap,
        "tolerance": RESUME_TOLERANCE,
        "ok": gap <= RESUME_TOLERANCE,
    }


# --- part 4: data-parallel on every GPU ----------------------------------------------------

DATA_PARALLEL_SHAPE = "qwen2-0.5b"
BATCH_PER_GPU = 8


def data_parallel_rank(
    rank: int, processes: int, port: int, batch: int, steps: int, result: str
) -> None:
    """One process of the data-parallel part; rank 0 writes its figures to ``result``."""
    import torch

    from tunery.pipeline.config import LoraSettings, TrainingConfig
    from tunery.pipeline.distributed import DataParallel, join_world, leave_world
    from tunery.pipeline.load import Precision
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainSetup

    world, device = join_world(
        rank, processes, store_host="127.0.0.1", store_port=port, timeout_seconds=600
    )
    vocab = SHAPES[DATA_PARALLEL_SHAPE]["vocab_size"]
    examples = synthetic_examples(vocab, steps * batch, seed=2)
    torch.manual_seed(42)
    model, _ = attach_lora(
        build_model(DATA_PARALLEL_SHAPE),
        LoraSettings(rank=16, alpha=32, dropout=0.0),
        gradient_checkpointing=True,
    )
    reporter = RecordingReporter()
    parallel = DataParallel(world, device, events=reporter)
    config = TrainingConfig(
        max_steps=steps,
        learning_rate=2e-4,
        batch_size=batch // processes,
        warmup_ratio=0,
        checkpoint_every_steps=steps,
    )
    with tempfile.TemporaryDirectory() as checkpoints:
        setup = TrainSetup(
            model,
            examples,
            config,
            Precision(torch.bfloat16, torch.bfloat16),
            device,
            0,
            Path(checkpoints),
            "gpu-check-dp",
            data_parallel=parallel,
        )
        train(setup, parallel.reporter)
    if world.is_main:
        step_seconds = [
            later.training_seconds - earlier.training_seconds
            for earlier, later in zip(reporter.steps, reporter.steps[1:], strict=False)
        ]
        Path(result).write_text(
            json.dumps(
                {
                    "processes": processes,
                    "step_seconds": statistics.median(step_seconds[WARMUP_STEPS:]),
                    "all_reduce_seconds": (
                        statistics.median(parallel.all_reduce_seconds[WARMUP_STEPS:])
                        if parallel.all_reduce_seconds
                        else 0.0
                    ),
                    "losses": [step.loss for step in reporter.steps],
                    "steps": len(reporter.steps),
                }
            )
        )
    leave_world()


def data_parallel_run(processes: int, batch: int, steps: int) -> dict[str, Any]:
    """Train on ``processes`` GPUs (one process each) and return rank 0's figures."""
    from datetime import timedelta

    import torch.distributed as dist
    import torch.multiprocessing

    store = dist.TCPStore(
        "127.0.0.1",
        0,
        processes,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=600),
    )
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "rank0.json"
        torch.multiprocessing.start_processes(
            data_parallel_rank,
            args=(processes, store.port, batch, steps, str(result)),
            nprocs=processes,
            start_method="spawn",
        )
        return json.loads(result.read_text())


def data_parallel(steps: int) -> dict[str, Any]:
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        return {"skipped": f"needs two or more GPUs; this machine has {gpus}"}
    batch = BATCH_PER_GPU * gpus
    one = data_parallel_run(1, batch, steps)
    every = data_parallel_run(gpus, batch, steps)
    scaling = one["step_seconds"] / every["step_seconds"]
    gap = worst_gap(every["losses"][-5:], one["losses"][-5:])
    return {
        "gpus": gpus,
        "global_batch": batch,
        "one_gpu": one,
        "every_gpu": every,
        "scaling": scaling,
        "efficiency": scaling / gpus,
        "all_reduce_share": every["all_reduce_seconds"] / every["step_seconds"],
        "loss_gap": gap,
        "ok": gap <= BF16_TOLERANCE,
    }


# --- report --------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']}"]
    for name, check in report["agreement"]["checks"].items():
        verdict = "ok" if check["ok"] else "FAIL"
        lines.append(
            f"agreement {name} vs cpu fp32: worst step gap {check['worst_gap']:.2e} "
            f"(tolerance {check['tolerance']:g}) {verdict}"
        )
    cpu = report["agreement"]["runs"]["cpu fp32"]
    lines.append(f"cpu kernels: {cpu['kernels']['attention']}, loss {cpu['kernels']['loss']}")
    if "throughput" in report:
        lines.append(
            f"{'shape':12}{'variant':40}{'tokens/s':>10}{'peak GiB':>10}{'plan GiB':>10}"
            f"{'MFU':>7}{'loss':>8}"
        )
        for shape, rows in report["throughput"]["shapes"].items():
            for row in rows:
                mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
                planned = row.get("planned_tensors_gib")
                plan = f"{planned:>10.2f}" if planned is not None else f"{'':>10}"
                lines.append(
                    f"{shape:12}{row['variant']:40}{row['tokens_per_second']:>10.0f}"
                    f"{row['peak_memory_gib']:>10.2f}{plan}{mfu:>7}{row['final_loss']:>8.3f}"
                )
                if planned is not None and row["peak_memory_gib"] > planned:
                    lines.append(f"WARNING: the memory planner underestimated {row['variant']}")
            losses = [row["final_loss"] for row in rows]
            if (max(losses) - min(losses)) / min(losses) > LOSS_GAP_WARNING:
                lines.append(f"WARNING: {shape} final losses differ by more than 2%: {losses}")
    if "resume" in report:
        verdict = "ok" if report["resume"]["ok"] else "FAIL"
        lines.append(f"resume on GPU: worst step gap {report['resume']['worst_gap']:.2e} {verdict}")
    if "data_parallel" in report:
        parallel = report["data_parallel"]
        if "skipped" in parallel:
            lines.append(f"data-parallel: skipped ({parallel['skipped']})")
        else:
            verdict = "ok" if parallel["ok"] else "FAIL"
            lines.append(
                f"data-parallel on {parallel['gpus']} GPUs, {parallel['global_batch']} examples "
                f"per step: {parallel['scaling']:.2f}x one GPU ({parallel['efficiency']:.0%} "
                f"efficiency), all-reduce {parallel['every_gpu']['all_reduce_seconds'] * 1000:.1f}"
                f" ms per step ({parallel['all_reduce_share']:.1%}), loss gap "
                f"{parallel['loss_gap']:.2e} {verdict}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "gpu-check.json")
    parser.add_argument("--model-dir", type=Path, help="the demo model (default: bench/.cache)")
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput variant")
    args = parser.parse_args()
    try:
        import torch

        from tunery.catalog.demo import cached_demo_model
    except ImportError as error:
        print(
            f"gpu-check cannot start: {error}; put the missing wheels in .whl/ (see "
            "bench/README.md)",
            file=sys.stderr,
        )
        return 1
    import transformers

    cuda = torch.cuda.is_available()
    model_dir = args.model_dir or cached_demo_model(CACHE)
    device = torch.cuda.get_device_name() if cuda else "no CUDA device"
    report: dict[str, Any] = {
        "machine": f"{device}, torch {torch.__version__}, transformers {transformers.__version__}"
    }
    if not cuda:
        print("no CUDA device: running the CPU part only", file=sys.stderr)
    report["agreement"] = agreement(model_dir, 10 if cuda else 4, cuda)
    if cuda:
        report["throughput"] = throughput(args.steps)
        report["resume"] = resume_check(model_dir)
        report["data_parallel"] = data_parallel(args.steps)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    failed = [c for c in report["agreement"]["checks"].values() if not c["ok"]]
    if "resume" in report and not report["resume"]["ok"]:
        failed.append(report["resume"])
    if not report.get("data_parallel", {}).get("ok", True):
        failed.append(report["data_parallel"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
