"""A DPO step against an SFT step on the same pairs, and against TRL's DPOTrainer.

Three variants train the same LoRA adapter (``train_throughput``'s settings: rank 16, alpha
32, dropout 0, all linear layers, lr 2e-3 cosine with 5% warmup, batch 8, seed 42, fp32, no
gradient checkpointing) on the demo model and the pairs of
``examples/demo-preferences.jsonl``, cycled to ``steps * 8`` pairs and read in tunery's epoch
order by all three (the same tokens as ``prepare_preference_data`` gives, without its
shuffle and hold-outs):

- S: ``tunery.pipeline.train.train`` with supervised fine-tuning on the chosen answers only
  (each pair's chosen side as an example): the step DPO is compared with;
- D: the same loop with the DPO objective (beta 0.1) on both sides of each pair, after its
  reference pass;
- T: TRL's ``DPOTrainer`` (sigmoid loss, beta 0.1) on the same conversations, with
  ``precompute_ref_log_probs`` (its equivalent of the reference pass) and a PEFT model, so
  its reference is the adapter switched off, as tunery's is. Runs only where ``trl`` is
  installed (``pip install 'tunery[trl]'``); the report says so otherwise.

Each run is a fresh process with fixed torch threads; runs go S D T S D T …, and the report
gives the median per-round ratios of:

- **step time**: the median time of an optimizer step (the first two skipped), D/S and T/D;
- **time per real token**: the same per token processed (D processes both answers, each
  after its prompt, so about twice S's tokens);
- **training time**: the whole training call, the reference pass apart (tunery: the first
  ``should_stop()`` to ``train()`` returning; TRL: ``on_epoch_begin`` to ``on_train_end``);
- **reference pass**: tunery's (``train()`` entered → first step) against TRL's
  (its constructor, which tokenises and precomputes), both beside D's training time.

Final losses: D's and T's first-step loss must both be log 2 (the policy starts at the
reference); their final losses are printed side by side (TRL tokenises the conversations
itself, so they agree only roughly).

Usage: ``python bench/dpo_step.py [--steps 30] [--pairs 3] [--threads 1] [--quick]
[--json PATH] [--model-dir DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from train_throughput import (
    BATCH_SIZE,
    LEARNING_RATE,
    LORA_ALPHA,
    LORA_RANK,
    SEED,
    WARMUP_RATIO,
    clocks,
    machine_info,
    model_dir_for,
    peak_rss_mb,
    training_config,
)
from worker_process import worker_result

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-preferences.jsonl"
VARIANTS = {
    "S": "tunery, SFT on the chosen answers",
    "D": "tunery, DPO on the pairs",
    "T": "TRL DPOTrainer, DPO on the pairs",
}
BETA = 0.1
SKIPPED_STEPS = 2
LOSS_WINDOW = 5


# --- worker side: one variant, one process -----------------------------------------------


def load_pairs(model_dir: Path, steps: int) -> tuple[Any, Any, list[Any], list[Any]]:
    """The base model (fp32, CPU), its tokenizer, ``steps * BATCH_SIZE`` tokenised pairs
    (the file's pairs cycled, numbered in order), and the rows behind them in the order
    tunery's steps read them."""
    import torch

    from tunery.pipeline.budget import epoch_order
    from tunery.pipeline.chat import Encoder, PairExample
    from tunery.pipeline.data import read_datasets
    from tunery.pipeline.datasets import Row
    from tunery.pipeline.load import Precision, load_model, load_tokenizer

    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    model = load_model(model_dir, Precision(torch.float32, None), torch.device("cpu"))
    model.config.use_cache = False
    rows = read_datasets([DATASET], method="dpo", field="datasets")[0].pairs
    encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=False)
    stream_rows = [rows[index % len(rows)] for index in range(steps * BATCH_SIZE)]
    stream = [
        PairExample(
            index,
            *(
                encoder.encode(Row(row.file, row.line, messages=(*row.prompt, *answer)))
                for answer in (row.chosen, row.rejected)
            ),
        )
        for index, row in enumerate(stream_rows)
    ]
    order = epoch_order(len(stream), SEED, 0)
    return model, tokenizer, stream, [stream_rows[index] for index in order]


def lora_settings() -> Any:
    from tunery.pipeline.config import LoraSettings

    return LoraSettings(rank=LORA_RANK, alpha=LORA_ALPHA, dropout=0.0, target_modules="all-linear")


def step_seconds(cumulative: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *cumulative], cumulative, strict=False)]


def run_tunery(model_dir: Path, steps: int, preference: bool) -> dict[str, Any]:
    """S or D: tunery's ``train()`` over the shared pairs (D) or their chosen sides (S)."""
    import torch

    from tunery.pipeline.load import Precision
    from tunery.pipeline.lora import attach_lora
    from tunery.pipeline.preference import PreferenceObjective
    from tunery.pipeline.reporting import RecordingReporter
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainSetup

    class ClockedReporter(RecordingReporter):
        started = (0.0, 0.0)

        def should_stop(self) -> bool:
            self.started = self.started if self.started[0] else clocks()
            return super().should_stop()

    model, tokenizer, stream, _ = load_pairs(model_dir, steps)
    examples: list[Any] = stream if preference else [pair.chosen for pair in stream]
    torch.manual_seed(SEED)
    peft_model, _ = attach_lora(model, lora_settings(), gradient_checkpointing=False)
    reporter = ClockedReporter()
    config = training_config(steps)
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        setup = TrainSetup(
            model=peft_model,
            examples=examples,
            config=config,
            precision=Precision(torch.float32, None),
            device=torch.device("cpu"),
            pad_id=tokenizer.pad_token_id,
            checkpoint_dir=Path(checkpoint_dir),
            fingerprint="bench",
            preference=PreferenceObjective(BETA, BATCH_SIZE, []) if preference else None,
        )
        called = clocks()
        state = train(setup, reporter)
        ended = clocks()
    real_tokens = sum(example.tokens for example in examples)
    assert state.step == steps and state.trained_tokens == real_tokens
    return {
        "method": "tunery.pipeline.train.train" + (" (dpo)" if preference else " (sft)"),
        "seconds": ended[0] - reporter.started[0],
        "reference_seconds": reporter.started[0] - called[0] if preference else 0.0,
        "step_seconds": step_seconds([s.training_seconds for s in reporter.steps]),
        "real_tokens": real_tokens,
        "losses": [step.loss for step in reporter.steps],
        "peak_rss_mb": peak_rss_mb(),
    }


def run_trl(model_dir: Path, steps: int) -> dict[str, Any]:
    """T: TRL's DPOTrainer on the same conversations, in the same order."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.started = self.ended = (0.0, 0.0)
            self.step_started = 0.0
            self.steps: list[float] = []
            self.losses: list[float] = []

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = self.started if self.started[0] else clocks()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_started = clocks()[0]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps.append(clocks()[0] - self.step_started)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ended = clocks()

    model, tokenizer, _, rows = load_pairs(model_dir, steps)

    def messages(items: tuple[Any, ...]) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in items]

    dataset = Dataset.from_list(
        [
            {
                "prompt": messages(row.prompt),
                "chosen": messages(row.chosen),
                "rejected": messages(row.rejected),
            }
            for row in rows
        ]
    )
    torch.manual_seed(SEED)
    settings = lora_settings()
    model = get_peft_model(
        model,
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    clock = Clock()
    with tempfile.TemporaryDirectory() as output_dir:
        built = clocks()
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(
                output_dir=output_dir,
                max_steps=steps,
                per_device_train_batch_size=BATCH_SIZE,
                learning_rate=LEARNING_RATE,
                lr_scheduler_type="cosine",
                warmup_steps=WARMUP_RATIO,
                seed=SEED,
                train_sampling_strategy="sequential",
                beta=BETA,
                loss_type=["sigmoid"],
                precompute_ref_log_probs=True,
                max_length=None,
                gradient_checkpointing=False,
                use_cpu=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        reference_seconds = clocks()[0] - built[0]
        trainer.train()
    assert len(clock.losses) == steps, clock.losses
    return {
        "method": "trl.DPOTrainer (padded; precompute_ref_log_probs)",
        "seconds": clock.ended[0] - clock.started[0],
        "reference_seconds": reference_seconds,
        "step_seconds": clock.steps,
        "real_tokens": None,
        "losses": clock.losses,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(variant: str, model_dir: Path, steps: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    with contextlib.redirect_stdout(sys.stderr):
        if variant == "T":
            result = run_trl(model_dir, steps)
        else:
            result = run_tunery(model_dir, steps, preference=variant == "D")
    steady = result["step_seconds"][SKIPPED_STEPS:] or result["step_seconds"]
    result["median_step_seconds"] = statistics.median(steady)
    result["final_loss"] = statistics.fmean(result["losses"][-LOSS_WINDOW:])
    result["variant"] = variant
    return result


# --- orchestrator side --------------------------------------------------------------------


def spawn(variant: str, model_dir: Path, steps: int, threads: int) -> dict[str, Any]:
    return worker_result(
        __file__, variant, model_dir=str(model_dir), steps=str(steps), threads=str(threads)
    )


def ratio_summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-round ratios D/S and T/D and the loss checks."""
    summary: dict[str, Any] = {"variants": {}}
    for name in rounds[0]:
        results = [round_[name] for round_ in rounds]
        summary["variants"][name] = {
            "label": VARIANTS[name],
            "method": results[0]["method"],
            "median_step_seconds": statistics.median(r["median_step_seconds"] for r in results),
            "training_seconds": statistics.median(r["seconds"] for r in results),
            "reference_seconds": statistics.median(r["reference_seconds"] for r in results),
            "real_tokens": results[0]["real_tokens"],
            "first_loss": results[0]["losses"][0],
            "final_loss": statistics.median(r["final_loss"] for r in results),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
        }

    def per_round(top: str, bottom: str, key: str, per_token: bool = False) -> dict[str, float]:
        values = []
        for round_ in rounds:
            a, b = round_[top], round_[bottom]
            ratio = a[key] / b[key]
            if per_token:
                ratio *= b["real_tokens"] / a["real_tokens"]
            values.append(ratio)
        return ratio_summary(values)

    summary["dpo_over_sft_step"] = per_round("D", "S", "median_step_seconds")
    summary["dpo_over_sft_step_per_token"] = per_round("D", "S", "median_step_seconds", True)
    summary["dpo_over_sft_training"] = per_round("D", "S", "seconds")
    if "T" in rounds[0]:
        summary["trl_over_dpo_step"] = per_round("T", "D", "median_step_seconds")
        summary["trl_over_dpo_training"] = per_round("T", "D", "seconds")
        summary["trl_over_dpo_reference"] = per_round("T", "D", "reference_seconds")
    for name in ("D", "T"):
        if name in summary["variants"]:
            first = summary["variants"][name]["first_loss"]
            summary["variants"][name]["starts_at_log_2"] = abs(first - math.log(2)) < 1e-3
    return summary


def report(summary: dict[str, Any], machine: dict[str, Any], steps: int, pairs: int) -> str:
    def span(ratio: dict[str, float]) -> str:
        return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"

    lines = [
        f"machine: {machine['cores']} cores, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, {machine['threads']} thread(s), load average "
        f"{machine['load_average_start']:.1f}; {steps} steps of {BATCH_SIZE} pairs, "
        f"{pairs} round(s)",
        "",
        f"{'':2} {'variant':38} {'step s':>8} {'train s':>8} {'ref s':>7} {'tokens':>8} "
        f"{'loss 1':>7} {'final':>7}",
    ]
    for name, variant in summary["variants"].items():
        tokens = variant["real_tokens"]
        lines.append(
            f"{name:2} {variant['label']:38} {variant['median_step_seconds']:8.3f} "
            f"{variant['training_seconds']:8.1f} {variant['reference_seconds']:7.1f} "
            f"{tokens if tokens is not None else '—':>8} {variant['first_loss']:7.4f} "
            f"{variant['final_loss']:7.4f}"
        )
    lines += [
        "",
        f"DPO step / SFT step (same pairs, chosen only): {span(summary['dpo_over_sft_step'])}",
        f"  per real token: {span(summary['dpo_over_sft_step_per_token'])}",
        f"  whole training call: {span(summary['dpo_over_sft_training'])}",
    ]
    if "trl_over_dpo_step" in summary:
        lines += [
            f"TRL DPOTrainer step / tunery DPO step: {span(summary['trl_over_dpo_step'])}",
            f"  whole training call: {span(summary['trl_over_dpo_training'])}",
            f"  reference pass (TRL: tokenising too): {span(summary['trl_over_dpo_reference'])}",
        ]
    else:
        lines.append("TRL DPOTrainer: not installed here (pip install 'tunery[trl]'); not measured")
    for name in ("D", "T"):
        variant = summary["variants"].get(name)
        if variant is not None and not variant["starts_at_log_2"]:
            lines.append(f"WARNING: {name}'s first loss {variant['first_loss']:.4f} is not log 2")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved S D T rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every run")
    parser.add_argument("--quick", action="store_true", help="6 steps, 1 round (for CI)")
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    parser.add_argument("--model-dir", type=Path, help="demo model directory to use")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        result = run_worker(args.worker, args.model_dir, args.steps, args.threads)
        print(json.dumps(result))
        return
    steps, rounds = (6, 1) if args.quick else (args.steps, args.pairs)
    model_dir = model_dir_for("demo", args.model_dir)
    machine = machine_info(args.threads)
    names = ["S", "D"] + (["T"] if importlib.util.find_spec("trl") else [])
    results = []
    for _ in range(rounds):
        results.append({name: spawn(name, model_dir, steps, args.threads) for name in names})
    summary = summarise(results)
    print(report(summary, machine, steps, rounds))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, **summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
