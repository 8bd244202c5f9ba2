"""``tunery export RUN_DIR``: the GGUF exported again from a finished run's saved adapter."""

from __future__ import annotations

import json
from pathlib import Path

from tunery.errors import ConfigError
from tunery.gguf.export import export_gguf
from tunery.phases import Phase
from tunery.pipeline.chat import SamplePrompt
from tunery.pipeline.datasets import Message
from tunery.pipeline.outcome import RunResult
from tunery.pipeline.reporting import Reporter


def rerun_export(out_dir: Path, reporter: Reporter) -> RunResult:
    """Export the GGUF again from a finished run's saved adapter: no retraining.

    For runs whose export failed (say, the disk filled up); updates ``run.json``.
    """
    summary_path = out_dir / "run.json"
    if not summary_path.is_file():
        raise ConfigError.single(str(out_dir), "is not a run directory (no run.json)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    adapter_dir = out_dir / "adapter"
    prompts = [
        SamplePrompt(
            tuple(Message(m["role"], m["content"]) for m in sample["messages"]),
            sample.get("expected"),
        )
        for sample in summary["samples"]
    ]
    reporter.phase(Phase.EXPORTING)
    gguf = export_gguf(
        adapter_dir=adapter_dir,
        base_model_dir=Path(summary["base_model"]["directory"]),
        out_dir=out_dir,
        run_name=summary["name"],
        base_model=summary["base_model"]["reference"],
        dataset_names=[Path(str(item["file"])).name for item in summary["data"]["files"]],
        end_of_turn=summary["chat_template"]["end_of_turn"],
        sample_prompts=prompts,
        max_new_tokens=summary["config"]["samples"]["max_new_tokens"],
    )
    summary.update(
        status="completed",
        error=None,
        samples=gguf.samples,
        artifacts={**summary["artifacts"], "gguf": gguf.bundle.name},
        export={"gguf": True, "checks": gguf.checks},
    )
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lora_bundle = out_dir / summary["artifacts"]["lora"]
    return RunResult(out_dir, adapter_dir, lora_bundle, gguf.bundle, summary)
