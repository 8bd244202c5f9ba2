"""Data-parallel scaling: the same run on one process and on two processes of this machine.

Both variants train the same LoRA (the demo model, or ``--model-dir``) on the same global
batch for the same optimizer steps over the same batches, with ``tunery train``:

- 1: one process, ``batch_size`` = the global batch, one torch thread;
- 2: ``--processes 2``, ``batch_size`` = half of it per process (gloo), one thread each.

The two compute the same gradients (``tests/pipeline/test_data_parallel.py``), so their
final losses must agree; the report prints a WARNING where they differ by more than 1e-4
relative. Each run is a fresh process tree; runs interleave 1 2 1 2 … and the headlines are
medians of the per-pair ratios with their range:

- **scaling**: training seconds of 1 over those of 2, from each run's ``run.json`` (the
  loop's timed optimizer steps only: model load, tokenising and samples excluded). Two
  processes on two cores can reach 2x; the target is 1.7x.
- **whole run**: wall time of the whole ``tunery train`` process of 1 over that of 2 (the
  second process's start, imports and model load included).
- **all-reduce**: the median time per step that 2 spends in its two all-reduces (gradients,
  then the step's loss and requests), waiting for the slower rank included, and its share of
  a step.
- **load**: the machine's 1-minute load average before each run (``/proc/loadavg``): on a
  shared machine the figures are only as good as the load was even.

Usage: ``python bench/data_parallel.py [--pairs 5] [--steps 40] [--batch 16] [--quick]
[--json PATH] [--model-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-dataset.jsonl"
CACHE = REPO / "bench" / ".cache"
LOSS_TOLERANCE = 1e-4
TARGET = 1.7


def demo_model() -> Path:
    sys.path.insert(0, str(REPO / "src"))
    from tunery.catalog.demo import cached_demo_model

    return cached_demo_model(CACHE)


def run_once(
    model_dir: Path, processes: int, *, steps: int, batch: int, root: Path
) -> dict[str, Any]:
    """One ``tunery train`` of ``steps`` steps on ``batch`` examples per step, split over
    ``processes`` processes of one thread each; its figures from run.json and the clock."""
    out = root / f"out-{processes}-{time.monotonic_ns()}"
    recipe = root / f"recipe-{processes}.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "scaling",
                "base_model": str(model_dir),
                "datasets": [str(DATASET)],
                "training": {
                    "max_steps": steps,
                    "batch_size": batch // processes,
                    "learning_rate": 2e-3,
                    "warmup_ratio": 0.0,
                    "gradient_checkpointing": False,
                    "checkpoint_every_steps": steps + 1,
                    "mixed_precision": "no",
                    "compile": "off",
                },
                "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
                "export": {"gguf": False},
                "samples": {"max_new_tokens": 1},
            }
        )
    )
    env = {
        **os.environ,
        "TUNERY_TORCH_THREADS": str(processes),  # one thread per process
        "PYTHONPATH": str(REPO / "src"),
    }
    load = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunery.cli",
            "train",
            str(recipe),
            "--out",
            str(out),
            "--processes",
            str(processes),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"tunery train --processes {processes} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "run.json").read_text())
    metrics, batch_summary = summary["metrics"], summary["batch"]
    return {
        "processes": processes,
        "wall_seconds": wall,
        "training_seconds": metrics["training_seconds"],
        "loss": metrics["loss"],
        "trained_tokens": metrics["trained_tokens"],
        "all_reduce_seconds": batch_summary.get("all_reduce_seconds_median"),
        "effective_batch": batch_summary["effective"],
        "load": load,
    }


def median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(runs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    ones = [run for run in runs if run["processes"] == 1]
    twos = [run for run in runs if run["processes"] == 2]
    pairs = list(zip(ones, twos, strict=True))
    scaling = [one["training_seconds"] / two["training_seconds"] for one, two in pairs]
    whole = [one["wall_seconds"] / two["wall_seconds"] for one, two in pairs]
    step_seconds = [two["training_seconds"] / steps for two in twos]
    all_reduce = [two["all_reduce_seconds"] for two in twos]
    loss_gaps = [abs(one["loss"] - two["loss"]) / abs(one["loss"]) for one, two in pairs]
    return {
        "scaling": median_range(scaling),
        "whole_run": median_range(whole),
        "all_reduce_seconds": median_range(all_reduce),
        "all_reduce_share": statistics.median(
            a / s for a, s in zip(all_reduce, step_seconds, strict=True)
        ),
        "loss_gap": max(loss_gaps),
        "load": median_range([run["load"] for run in runs]),
        "target_met": statistics.median(scaling) >= TARGET,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="examples per step, all processes")
    parser.add_argument("--quick", action="store_true", help="1 pair of 4 steps (CI)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.steps = 1, 4
    if args.batch % 2:
        parser.error("--batch must be even: it is split over two processes")
    model_dir = args.model_dir or demo_model()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tunery-scaling-") as scratch:
        for pair in range(args.pairs):
            for processes in (1, 2):
                run = run_once(
                    model_dir, processes, steps=args.steps, batch=args.batch, root=Path(scratch)
                )
                runs.append(run)
                print(
                    f"pair {pair + 1}: {processes} process(es): "
                    f"{run['training_seconds']:.1f} s training, {run['wall_seconds']:.1f} s "
                    f"whole, loss {run['loss']:.5f}, load {run['load']:.1f}",
                    flush=True,
                )
    figures = report(runs, args.steps)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
    }
    scaling, whole = figures["scaling"], figures["whole_run"]
    print(
        f"\n{model_dir.name}, {args.steps} steps of {args.batch} examples, "
        f"{args.pairs} interleaved pairs, {machine['cpus']} CPUs, torch {machine['torch']}"
    )
    print(
        f"scaling (training time, 1 / 2 processes): {scaling['median']:.2f}x "
        f"({scaling['min']:.2f}-{scaling['max']:.2f}x); target {TARGET}x "
        f"{'met' if figures['target_met'] else 'NOT met'}"
    )
    print(f"whole run: {whole['median']:.2f}x ({whole['min']:.2f}-{whole['max']:.2f}x)")
    reduce = figures["all_reduce_seconds"]
    print(
        f"all-reduce per step: {reduce['median'] * 1000:.1f} ms "
        f"({reduce['min'] * 1000:.1f}-{reduce['max'] * 1000:.1f} ms), "
        f"{figures['all_reduce_share']:.1%} of a step"
    )
    load = figures["load"]
    print(f"load average: {load['median']:.1f} ({load['min']:.1f}-{load['max']:.1f})")
    if figures["loss_gap"] > LOSS_TOLERANCE:
        print(f"WARNING: final losses differ by {figures['loss_gap']:.2e} relative")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine, "figures": figures, "runs": runs}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
