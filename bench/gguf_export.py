"""GGUF export: tunery's merge + convert + quantize against llama.cpp's own tools.

Both variants turn the same LoRA adapter on the same base model into a Q4_K_M GGUF:

- baseline: llama.cpp's tools as separate processes, starting, as they must, from a merged
  Hugging Face folder (written once at setup by PEFT's ``merge_and_unload()`` +
  ``save_pretrained``, not timed): ``convert_hf_to_gguf.py MERGED --outtype f16``, then a
  process calling ``llama_cpp.llama_model_quantize`` (byte-identical to ``llama-quantize``,
  which is not installed here) for Q4_K_M. If the plain converter script refuses the
  tokenizer (llama.cpp does not know a locally trained tokenizer's hash), the baseline
  converts through ``python -m tunery.gguf.convert_main`` instead, and the report says so.
- tunery: ``merge_adapter`` + ``convert_to_gguf`` + ``quantize`` in one fresh process
  (``--worker tunery``), starting from the base model and the adapter. That is what
  ``export_gguf`` does minus its verification gates (tokenizer and logits parity, file-type
  check), the smoke samples and the ZIP.

The model, set up once by ``--worker setup`` and ``--worker peft-merge`` and cached under
``bench/.cache``: ``tunery.catalog.tiny``'s Qwen2 family at hidden size 1024 and 24 layers
(about 300M parameters; ``--quick``: 256 and 4), random weights stored in bf16 like real
checkpoints, and a rank-16 LoRA adapter on all linear layers with non-zero random weights,
saved as tunery saves adapters (tokenizer files next to it).

What is measured, for each run:

- wall time: of the variant's processes, from start to exit (imports, file reads and writes
  included); for tunery also per step, from the worker's clock ("startup" is the worker's
  start up to its first step).
- CPU time: user + system seconds of all the variant's processes (``RUSAGE_CHILDREN`` around
  each run). A process waiting for a core accrues none, so on a shared machine its ratio
  drifts less than the wall-clock one (which stays the headline: the target is wall time).
- memory, sampled every ``POLL_SECONDS`` from ``/proc`` for every process of the variant (a
  step's process and all its descendants, such as the converter that tunery's worker
  starts):

  - peak RSS: the highest ``VmHWM`` (the kernel's resident high-water mark) of any one
    process, as last read before it exited (growth in its final poll interval is missed).
    ``ru_maxrss`` is not used: Linux carries a parent's peak into a child it starts, so
    the converter that tunery's worker starts would inherit the worker's.
  - peak tree RSS and peak tree anon: the highest sum of ``VmRSS`` (``RssAnon``) over the
    variant's processes alive at the same moment. Anonymous memory is the headline: RSS also
    counts the pages of input files read through ``mmap`` (safetensors), which the kernel
    can drop and read again at any time; anonymous memory is what a machine must have free.

- files: the sizes of the f16 and Q4_K_M GGUFs, and whether the two variants' files are
  byte-identical (they are when tunery's merge equals PEFT's in bf16; if not, the largest
  absolute difference of the merged weights is reported).

Runs interleave baseline, tunery, baseline, tunery …; the headline is the median of the
per-round ratios tunery/baseline with their range. Targets: time ratio at most 1, peak
memory ratio at most 0.5.

Usage: ``python bench/gguf_export.py [--pairs 3] [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
FULL_SHAPE = {"hidden_size": 1024, "layers": 24}
QUICK_SHAPE = {"hidden_size": 256, "layers": 4}
LORA_RANK = 16
LORA_ALPHA = 32
SEED = 0
QUANTIZATION = "Q4_K_M"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
POLL_SECONDS = 0.02
TIME_TARGET = 1.0
MEMORY_TARGET = 0.5
MB = 2**20
VARIANTS = ("baseline", "tunery")
# The baseline's quantizer: what llama-quantize does, from Python (argv: f16 path, Q4 path).
QUANTIZE_SCRIPT = f"""
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{QUANTIZATION}
sys.exit(llama_cpp.llama_model_quantize(
    sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


# --- worker side ---------------------------------------------------------------------------


def build_fixture(root: Path, hidden_size: int, layers: int) -> dict[str, Any]:
    """Write ``root/base`` (bf16 Qwen2-shaped model) and ``root/adapter`` (LoRA, tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunery.catalog.tiny import build_tiny_model

    float32_dir = build_tiny_model("qwen2", root / "fp32", hidden_size=hidden_size, layers=layers)
    model = AutoModelForCausalLM.from_pretrained(float32_dir, dtype=torch.bfloat16)
    model.save_pretrained(root / "base")
    copy_tokenizer(float32_dir, root / "base")
    shutil.rmtree(float32_dir)
    parameters = model.num_parameters()
    torch.manual_seed(SEED)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            target_modules="all-linear",
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )
    peft_model.peft_config["default"].base_model_name_or_path = str(root / "base")
    peft_model.save_pretrained(root / "adapter", save_embedding_layers=False)
    copy_tokenizer(root / "base", root / "adapter")
    return {
        "parameters": parameters,
        "adapter_parameters": peft_model.get_nb_trainable_parameters()[0],
        "vocab_size": model.config.vocab_size,
        "hidden_size": hidden_size,
        "layers": layers,
        "base_bytes": folder_bytes(root / "base", "*.safetensors"),
        "adapter_bytes": folder_bytes(root / "adapter", "*.safetensors"),
    }


def peft_merge(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """The baseline's merged folder: PEFT ``merge_and_unload`` + ``save_pretrained`` (bf16)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(out_dir)
    copy_tokenizer(adapter_dir, out_dir)


def run_tunery(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The tunery variant: each step's wall-clock span (``time.time()``, for the poller)."""
    from tunery.gguf.export import convert_to_gguf, quantize
    from tunery.gguf.merge import merge_adapter

    merged, f16, quantized = out_dir / "merged", out_dir / "model-f16.gguf", out_dir / "model.gguf"
    steps = {
        "merge": lambda: merge_adapter(base_dir, adapter_dir, merged),
        "convert": lambda: convert_to_gguf(merged, f16, outtype="f16"),
        "quantize": lambda: quantize(f16, quantized, QUANTIZATION),
    }
    spans = {}
    for name, step in steps.items():
        started = time.time()
        step()
        spans[name] = (started, time.time())
    return {"spans": spans}


def merged_difference(left_dir: Path, right_dir: Path) -> dict[str, Any]:
    """The largest absolute difference between two merged folders' weights."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, tuple[Path, str]]:
        found = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, framework="pt") as source:
                found.update({name: (file, name) for name in source.keys()})  # noqa: SIM118
        return found

    left, right = tensors(left_dir), tensors(right_dir)
    largest, differing = 0.0, 0
    for name in sorted(left.keys() & right.keys()):
        with safe_open(left[name][0], framework="pt") as a, safe_open(right[name][0], "pt") as b:
            difference = (a.get_tensor(name).float() - b.get_tensor(name).float()).abs().max()
        largest = max(largest, difference.item())
        differing += bool(difference.item())
    return {
        "max_abs_difference": largest,
        "tensors_differing": differing,
        "only_in_one": sorted(left.keys() ^ right.keys()),
    }


def copy_tokenizer(source: Path, target: Path) -> None:
    """The tokenizer files tunery's pipeline keeps next to an adapter."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, target / name)


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(file.stat().st_size for file in folder.glob(pattern) if file.is_file())


# --- measuring a process tree -----------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc/*/task/*/children``."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return found


def process_memory(pid: int) -> tuple[str, dict[str, int]] | None:
    """(command line, {hwm, rss, anon} in kB) of a live process; None once it has exited."""
    fields = {"VmHWM": "hwm", "VmRSS": "rss", "RssAnon": "anon"}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            values[fields[key]] = int(rest.split()[0])
    return (command.strip(), values) if len(values) == len(fields) else None


class MemoryPoller:
    """Samples the memory of a process and its descendants every ``POLL_SECONDS``.

    Processes are keyed by (pid, command line), so a child between fork and exec, which still
    shows its parent's memory, does not count as the program it is about to become.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.processes: dict[tuple[int, str], dict[str, Any]] = {}
        self.samples: list[tuple[float, int, int]] = []  # (time.time(), ΣRSS kB, ΣRssAnon kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(POLL_SECONDS)

    def sample(self) -> None:
        now, total_rss, total_anon = time.time(), 0, 0
        for pid in descendants(self.pid):
            seen = process_memory(pid)
            if seen is None:
                continue
            command, values = seen
            entry = self.processes.setdefault(
                (pid, command), {"pid": pid, "command": command, "first": now, "hwm": 0, "anon": 0}
            )
            entry["last"] = now
            entry["hwm"] = max(entry["hwm"], values["hwm"])
            entry["anon"] = max(entry["anon"], values["anon"])
            total_rss += values["rss"]
            total_anon += values["anon"]
        self.samples.append((now, total_rss, total_anon))


def run_tracked(command: list[str], log_dir: Path, label: str) -> dict[str, Any]:
    """Run ``command`` with its memory polled; its stdout and stderr go to ``log_dir``.

    Returns wall seconds, CPU seconds (user + system of the process and its descendants),
    the start and end (``time.time()``), the stdout text, every process seen with its peak
    ``VmHWM`` and ``RssAnon`` (MB), and the memory samples.
    """
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    stdout_path, stderr_path = log_dir / f"{label}.out", log_dir / f"{label}.err"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_at, started = time.time(), time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        with MemoryPoller(process.pid) as poller:
            returncode = process.wait()
        seconds, ended_at = time.perf_counter() - started, time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if returncode != 0:
        sys.exit(f"{label} failed ({returncode}):\n{stderr_path.read_text()[-4000:]}")
    processes = [
        {
            "name": label if entry["pid"] == process.pid else short_command(entry["command"]),
            "first": entry["first"],
            "last": entry["last"],
            "peak_rss_mb": entry["hwm"] / 1024,
            "peak_anon_mb": entry["anon"] / 1024,
        }
        for entry in poller.processes.values()
    ]
    return {
        "seconds": seconds,
        "cpu_seconds": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
        "start": started_at,
        "end": ended_at,
        "stdout": stdout_path.read_text(),
        "processes": processes,
        "samples": poller.samples,
    }


def short_command(command: str) -> str:
    """A child's first three words without their folders, to name it in the report."""
    return " ".join(Path(word).name for word in command.split()[:3])


def window_peaks(
    samples: list[tuple[float, int, int]], start: float, end: float
) -> dict[str, float]:
    """The highest summed RSS and RssAnon (MB) sampled between ``start`` and ``end``."""
    inside = [sample for sample in samples if start <= sample[0] <= end] or [(0.0, 0, 0)]
    return {
        "peak_tree_rss_mb": max(sample[1] for sample in inside) / 1024,
        "peak_tree_anon_mb": max(sample[2] for sample in inside) / 1024,
    }


# --- orchestrator side --------------------------------------------------------------------


class Fixture:
    """The cached model, adapter and PEFT-merged folder of one shape, under bench/.cache."""

    def __init__(self, shape: dict[str, int]) -> None:
        import tunery.catalog.tiny as tiny

        digest = hashlib.sha256()
        digest.update(Path(tiny.__file__).read_bytes())
        for function in (build_fixture, peft_merge):
            digest.update(inspect.getsource(function).encode())
        for package in ("torch", "transformers", "peft"):
            digest.update(importlib.metadata.version(package).encode())
        name = f"gguf-{shape['hidden_size']}x{shape['layers']}"
        self.shape = shape
        self.root = CACHE / f"{name}-{digest.hexdigest()[:12]}"
        self.name = name
        self.base = self.root / "base"
        self.adapter = self.root / "adapter"
        self.merged = self.root / "peft" / "merged"  # same folder name as tunery's merge
        self.work = self.root / "work"
        self.info_file = self.root / "setup.json"

    def ensure(self) -> dict[str, Any]:
        """Build what is missing; returns the model's facts and the PEFT merge's cost."""
        if self.info_file.is_file():
            return json.loads(self.info_file.read_text())
        for stale in CACHE.glob(f"{self.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "logs").mkdir(parents=True)
        print(f"building the benchmark model into {self.root} (once)", file=sys.stderr)
        built = run_tracked(self.worker("setup"), self.root / "logs", "setup")
        info = json.loads(built["stdout"].splitlines()[-1])
        merged = run_tracked(self.worker("peft-merge"), self.root / "logs", "peft-merge")
        info["peft_merge"] = {
            "seconds": merged["seconds"],
            "peak_rss_mb": max(process["peak_rss_mb"] for process in merged["processes"]),
            **window_peaks(merged["samples"], merged["start"], merged["end"]),
        }
        info["merged_bytes"] = folder_bytes(self.merged, "*.safetensors")
        self.info_file.write_text(json.dumps(info, indent=2) + "\n")
        return info

    def worker(self, role: str, out_dir: Path | None = None) -> list[str]:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            role,
            "--root",
            str(self.root),
            "--hidden-size",
            str(self.shape["hidden_size"]),
            "--layers",
            str(self.shape["layers"]),
        ]
        return command + (["--out-dir", str(out_dir)] if out_dir else [])


def baseline_converter(fixture: Fixture) -> tuple[list[str], str]:
    """The converter command prefix for the baseline, and which one it is and why.

    The plain ``convert_hf_to_gguf.py`` is tried once on the merged folder's vocabulary; if
    it refuses the tokenizer, tunery's entry point (the same converter with a pre-tokenizer
    fallback) is the baseline's converter too.
    """
    from tunery.gguf.toolchain import converter_dir

    directory = converter_dir()
    script = [sys.executable, str(directory / "convert_hf_to_gguf.py")]
    probe = fixture.work / "vocab-probe.gguf"
    fixture.work.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [*script, str(fixture.merged), "--outfile", str(probe), "--vocab-only"],
        capture_output=True,
        text=True,
        check=False,
    )
    probe.unlink(missing_ok=True)
    if result.returncode == 0:
        return script, "convert_hf_to_gguf.py (llama.cpp's script, run directly)"
    reason = [line for line in result.stderr.splitlines() if line.strip()][-1:]
    entry = [sys.executable, "-m", "tunery.gguf.convert_main", str(directory)]
    return entry, (
        "python -m tunery.gguf.convert_main (the same converter; the plain script refused "
        f"the tokenizer: {' '.join(reason).strip()[-120:]})"
    )


def run_baseline(fixture: Fixture, converter: list[str], out_dir: Path) -> dict[str, Any]:
    """llama.cpp's converter, then its quantizer, each a process of its own."""
    f16, quantized = out_dir / "model-f16.gguf", out_dir / "model.gguf"
    convert = [*converter, str(fixture.merged), "--outfile", str(f16), "--outtype", "f16"]
    quantize = [sys.executable, "-c", QUANTIZE_SCRIPT, str(f16), str(quantized)]
    steps = {
        "convert": run_tracked(convert, out_dir, "converter"),
        "quantize": run_tracked(quantize, out_dir, "quantizer"),
    }
    windows = {name: (run["start"], run["end"]) for name, run in steps.items()}
    return variant_result(list(steps.values()), windows)


def run_tunery_tracked(fixture: Fixture, out_dir: Path) -> dict[str, Any]:
    """tunery's worker in a fresh process; steps are windows of its one run."""
    run = run_tracked(fixture.worker("tunery", out_dir), out_dir, "worker")
    spans = json.loads(run["stdout"].splitlines()[-1])["spans"]
    first = min(span[0] for span in spans.values())
    windows = {"startup": (run["start"], first), **{name: tuple(s) for name, s in spans.items()}}
    return variant_result([run], windows)


def variant_result(
    runs: list[dict[str, Any]], windows: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """One variant's run: total time, memory peaks, and each step's time and memory."""
    samples = [sample for run in runs for sample in run["samples"]]
    processes = [process for run in runs for process in run["processes"]]
    steps = {}
    for name, (start, end) in windows.items():
        steps[name] = {"seconds": end - start, **window_peaks(samples, start, end)}
    return {
        "seconds": sum(run["seconds"] for run in runs),
        "cpu_seconds": sum(run["cpu_seconds"] for run in runs),
        "peak_rss_mb": max(process["peak_rss_mb"] for process in processes),
        **window_peaks(samples, float("-inf"), float("inf")),
        "steps": steps,
        "processes": processes,
    }


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(16 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def outputs(out_dir: Path) -> dict[str, Any]:
    """Sizes and hashes of a run's f16 and Q4_K_M files."""
    return {
        kind: {"bytes": (out_dir / name).stat().st_size, "sha256": file_digest(out_dir / name)}
        for kind, name in (("f16", "model-f16.gguf"), ("q4", "model.gguf"))
    }


def one_round(fixture: Fixture, converter: list[str]) -> dict[str, dict[str, Any]]:
    """Baseline then tunery, each from a clean output folder; compares their files."""
    results = {}
    for variant in VARIANTS:
        out_dir = fixture.work / variant
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        os.sync()  # the previous run's writes are not flushed on this run's time
        if variant == "baseline":
            results[variant] = run_baseline(fixture, converter, out_dir)
        else:
            results[variant] = run_tunery_tracked(fixture, out_dir)
        results[variant]["files"] = outputs(out_dir)
    same = {
        kind: results["baseline"]["files"][kind]["sha256"]
        == results["tunery"]["files"][kind]["sha256"]
        for kind in ("f16", "q4")
    }
    results["tunery"]["identical_to_baseline"] = same
    if not same["q4"]:
        merged = fixture.work / "tunery" / "merged"
        diff = subprocess.run(
            fixture.worker("diff", merged), capture_output=True, text=True, check=True
        )
        results["tunery"]["merge_difference"] = json.loads(diff.stdout.splitlines()[-1])
    for variant in VARIANTS:
        shutil.rmtree(fixture.work / variant, ignore_errors=True)
    return results


def ratio(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-variant medians, per-round tunery/baseline ratios and the target verdicts."""
    metrics = ("seconds", "cpu_seconds", "peak_rss_mb", "peak_tree_rss_mb", "peak_tree_anon_mb")
    variants = {}
    for variant in VARIANTS:
        runs = [round_[variant] for round_ in rounds]
        steps = {
            name: {
                metric: statistics.median(run["steps"][name][metric] for run in runs)
                for metric in ("seconds", "peak_tree_rss_mb", "peak_tree_anon_mb")
            }
            for name in runs[0]["steps"]
        }
        processes = {
            process["name"]: {
                metric: statistics.median(
                    other[metric]
                    for run in runs
                    for other in run["processes"]
                    if other["name"] == process["name"]
                )
                for metric in ("peak_rss_mb", "peak_anon_mb")
            }
            for process in runs[0]["processes"]
        }
        variants[variant] = {
            **{metric: statistics.median(run[metric] for run in runs) for metric in metrics},
            "steps": steps,
            "processes": processes,
            "files": {kind: runs[-1]["files"][kind]["bytes"] for kind in ("f16", "q4")},
        }
    ratios = {
        metric: ratio([round_["tunery"][metric] / round_["baseline"][metric] for round_ in rounds])
        for metric in metrics
    }
    identical = {
        kind: all(round_["tunery"]["identical_to_baseline"][kind] for round_ in rounds)
        for kind in ("f16", "q4")
    }
    differences = [
        round_["tunery"]["merge_difference"]
        for round_ in rounds
        if "merge_difference" in round_["tunery"]
    ]
    return {
        "variants": variants,
        "ratios": ratios,
        "identical": identical,
        "merge_differences": differences,
        "targets": {
            "time": ratios["seconds"]["median"] <= TIME_TARGET,
            "memory": ratios["peak_tree_anon_mb"]["median"] <= MEMORY_TARGET,
        },
    }


def machine_info() -> dict[str, Any]:
    versions = {
        package: importlib.metadata.version(package)
        for package in ("torch", "transformers", "peft", "llama-cpp-python")
    }
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **versions,
        "load_average_start": os.getloadavg()[0],
    }


def report(
    summary: dict[str, Any], machine: dict[str, Any], info: dict[str, Any], converter: str
) -> str:
    pairs = len(summary["ratios"]["seconds"]["rounds"])
    lines = [
        f"machine: {machine['cores']} cores ({machine['cpu']}), python {machine['python']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, peft "
        f"{machine['peft']}, llama-cpp-python {machine['llama-cpp-python']}, load average "
        f"{machine['load_average_start']:.1f} / {machine['load_average_end']:.1f} (start / end)",
        f"model: Qwen2-shaped, hidden {info['hidden_size']}, {info['layers']} layers, vocab "
        f"{info['vocab_size']}, {info['parameters'] / 1e6:.1f}M parameters, bf16 "
        f"({info['base_bytes'] / MB:.0f} MB); LoRA r{LORA_RANK} alpha {LORA_ALPHA} all-linear "
        f"({info['adapter_parameters'] / 1e6:.2f}M parameters); rounds: {pairs}",
        f"baseline converter: {converter}",
        "",
        f"{'':10}{'step':10}{'wall s':>8}{'tree RSS':>10}{'tree anon':>11}{'CPU s':>8}",
    ]
    for variant in VARIANTS:
        numbers = summary["variants"][variant]
        rows = [*numbers["steps"].items(), ("total", numbers)]
        for index, (name, step) in enumerate(rows):
            cpu = f"{step['cpu_seconds']:>8.1f}" if "cpu_seconds" in step else ""
            lines.append(
                f"{variant if index == 0 else '':10}{name:10}{step['seconds']:>8.1f}"
                f"{megabytes(step['peak_tree_rss_mb']):>10}"
                f"{megabytes(step['peak_tree_anon_mb']):>11}{cpu}"
            )
    lines.append("each process's peak RSS (VmHWM) / peak anon:")
    for variant in VARIANTS:
        for name, process in summary["variants"][variant]["processes"].items():
            lines.append(
                f"  {variant:10}{name:44}{megabytes(process['peak_rss_mb']):>9} / "
                f"{megabytes(process['peak_anon_mb'])}"
            )
    lines.append("")
    names = {
        "seconds": "wall time",
        "cpu_seconds": "CPU time",
        "peak_rss_mb": "peak RSS (one process)",
        "peak_tree_rss_mb": "peak tree RSS",
        "peak_tree_anon_mb": "peak tree anon (headline)",
    }
    for metric, label in names.items():
        value = summary["ratios"][metric]
        target = TIME_TARGET if metric == "seconds" else MEMORY_TARGET
        verdict = ""
        if metric in ("seconds", "peak_tree_anon_mb"):
            verdict = "met" if value["median"] <= target else "MISSED"
            verdict = f"; target <= {target:.2f}x: {verdict}"
        lines.append(
            f"tunery/baseline {label}: {value['median']:.2f}x median "
            f"(min {value['min']:.2f}x, max {value['max']:.2f}x){verdict}"
        )
    files = {variant: summary["variants"][variant]["files"] for variant in VARIANTS}
    lines.append(
        f"files: f16 {files['baseline']['f16'] / MB:.1f} MB / {files['tunery']['f16'] / MB:.1f} MB,"
        f" {QUANTIZATION} {files['baseline']['q4'] / MB:.1f} MB / "
        f"{files['tunery']['q4'] / MB:.1f} MB (baseline / tunery); byte-identical in every "
        f"round: f16 {yes(summary['identical']['f16'])}, {QUANTIZATION} "
        f"{yes(summary['identical']['q4'])}"
    )
    for difference in summary["merge_differences"]:
        lines.append(
            f"merged weights differ from PEFT's: max |difference| "
            f"{difference['max_abs_difference']:.3g} in {difference['tensors_differing']} "
            f"tensors; only in one: {difference['only_in_one'] or 'none'}"
        )
    peft = info["peft_merge"]
    lines.append(
        f"for reference (setup, not part of the baseline's time): PEFT merge_and_unload + "
        f"save_pretrained took {peft['seconds']:.1f} s, peak RSS {megabytes(peft['peak_rss_mb'])}"
        f", anon {megabytes(peft['peak_tree_anon_mb'])}"
    )
    return "\n".join(lines)


def megabytes(value: float) -> str:
    return f"{value:.0f} MB"


def yes(value: bool) -> str:
    return "yes" if value else "NO"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved baseline/tunery rounds")
    parser.add_argument(
        "--quick", action="store_true", help="hidden 256, 4 layers, 1 round (for CI)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    roles = ("setup", "peft-merge", "tunery", "diff")
    parser.add_argument("--worker", choices=roles, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hidden-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    fixture = Fixture({"hidden_size": args.hidden_size, "layers": args.layers})
    if args.worker == "setup":
        return build_fixture(fixture.root, args.hidden_size, args.layers)
    if args.worker == "peft-merge":
        peft_merge(fixture.base, fixture.adapter, fixture.merged)
        return {}
    if args.worker == "tunery":
        return run_tunery(fixture.base, fixture.adapter, args.out_dir)
    return merged_difference(args.out_dir, fixture.merged)


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    shape, pairs = (QUICK_SHAPE, 1) if args.quick else (FULL_SHAPE, args.pairs)
    fixture = Fixture(shape)
    info = fixture.ensure()
    converter, converter_note = baseline_converter(fixture)
    machine = machine_info()
    rounds = []
    for number in range(1, pairs + 1):
        rounds.append(one_round(fixture, converter))
        print(
            f"round {number}/{pairs}: baseline {rounds[-1]['baseline']['seconds']:.1f} s, "
            f"tunery {rounds[-1]['tunery']['seconds']:.1f} s",
            file=sys.stderr,
        )
    machine["load_average_end"] = os.getloadavg()[0]
    summary = summarise(rounds)
    print(report(summary, machine, info, converter_note))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine,
            "model": info,
            "baseline_converter": converter_note,
            "pairs": pairs,
            **summary,
            "rounds": rounds,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
