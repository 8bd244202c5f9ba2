"""What a trained run delivers first: the PEFT adapter directory and the LoRA bundle ZIP."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from tunery.pipeline.config import RunRecipe
    from tunery.pipeline.load import ChatFormat

LORA_BUNDLE_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)


def save_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    chat_format: ChatFormat,
    *,
    base_model: str,
    adapter_dir: Path,
    model_card: str,
) -> Path:
    """Write the adapter, tokenizer, chat template and model card; returns ``adapter_dir``.

    ``adapter_config.json`` names ``base_model`` as the user gave it (a Hub id, the catalog
    id or a local path), not wherever the weights happened to be cached.
    """
    model.peft_config["default"].base_model_name_or_path = base_model
    # Embeddings are never resized (see load_tokenizer), so only LoRA weights are saved.
    model.save_pretrained(str(adapter_dir), save_embedding_layers=False)
    tokenizer.save_pretrained(adapter_dir)
    # Older tokenizers keep the template inside tokenizer_config.json only; the bundle
    # always carries it as its own file.
    (adapter_dir / "chat_template.jinja").write_text(chat_format.template, encoding="utf-8")
    (adapter_dir / "README.md").write_text(model_card, encoding="utf-8")
    missing = [name for name in LORA_BUNDLE_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"saving the adapter did not produce {', '.join(missing)}")
    return adapter_dir


def write_lora_bundle(adapter_dir: Path, bundle_path: Path) -> Path:
    """Zip exactly LORA_BUNDLE_FILES; the ZIP appears under its name only when complete."""
    partial = bundle_path.with_name(f".{bundle_path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name in LORA_BUNDLE_FILES:
                bundle.write(adapter_dir / name, arcname=name)
        with partial.open("rb") as file:
            os.fsync(file.fileno())
        partial.replace(bundle_path)
    finally:
        partial.unlink(missing_ok=True)
    return bundle_path


def model_card(
    recipe: RunRecipe,
    *,
    chat_format: ChatFormat,
    data_summary: dict[str, Any],
    final_metrics: dict[str, Any],
    trainable_parameters: int,
    evaluation: dict[str, Any] | None = None,
) -> str:
    """A README for the adapter: what it was trained from, how, and how to run it.

    ``evaluation``: the run's evaluation summary (``evaluation.evaluation_summary``), when it
    had validation data.
    """
    files = data_summary.get("files", [])
    dataset_lines = (
        "\n".join(
            f"- `{Path(str(item['file'])).name}`: {item['rows']} rows ({item['format']} format), "
            f"{item['used']} trained on"
            for item in files
        )
        or "- (none)"
    )
    hyperparameters = json.dumps(
        {
            "method": recipe.method.model_dump(),
            "training": recipe.training.model_dump(),
            "lora": recipe.lora.model_dump(),
        },
        indent=2,
    )
    how = (
        f"preference-tuned with DPO (beta {recipe.method.dpo_beta})"
        if recipe.method.preference
        else "fine-tuned"
    )
    start = f", starting from the adapter of `{recipe.init_from}`" if recipe.init_from else ""
    template_note = (
        "the base model's own chat template"
        if chat_format.source == "model"
        else "tunery's default chat template (the base model has none)"
    )
    loss = final_metrics.get("loss")
    loss_text = f"{loss:.4f}" if isinstance(loss, float) else "n/a"
    return f"""---
base_model: {recipe.base_model}
library_name: peft
tags: [lora, tunery]
---

# {recipe.name}

A LoRA adapter for `{recipe.base_model}`, {how} with tunery{start}.

## Training data

{dataset_lines}

Examples: {data_summary.get("examples")}, tokens: {data_summary.get("total_tokens")} \
(trained on {data_summary.get("trained_tokens")}), truncated rows: \
{data_summary.get("truncated_rows")}, dropped rows: {data_summary.get("dropped_rows")}.
Conversations were rendered with {template_note}; `chat_template.jinja` holds it.

## Results

- Optimizer steps: {final_metrics.get("step")} of {final_metrics.get("total_steps")}
- Final training loss: {loss_text}
{_evaluation_lines(evaluation)}- Trainable parameters: {trainable_parameters:,}
- Training time: {final_metrics.get("training_seconds", 0):.1f} s

## Hyperparameters

```json
{hyperparameters}
```

## Use with PEFT

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{recipe.base_model}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))
```

## Use with Ollama

Ollama runs merged GGUF files, not adapters. Enable `export.gguf` in the recipe and use the
`{recipe.name}-gguf.zip` bundle: unzip it and run `./install.sh` (or
`ollama create {recipe.name} -f Modelfile`), then `ollama run {recipe.name}`.
"""


def _evaluation_lines(evaluation: dict[str, Any] | None) -> str:
    """The model card's eval-loss lines (each ending in a newline); "" without evaluations."""
    if not evaluation or evaluation.get("eval_loss") is None:
        return ""
    if evaluation.get("eval_reward_accuracy") is not None:
        detail = (
            f"reward accuracy {100 * evaluation['eval_reward_accuracy']:.1f}%, "
            f"reward margin {evaluation['eval_reward_margin']:.3f}"
        )
    else:
        detail = f"mean token accuracy {100 * evaluation['eval_accuracy']:.1f}%"
    lines = [
        f"- Final eval loss: {evaluation['eval_loss']:.4f} ({detail})",
        f"- Best eval loss: {evaluation['best_eval_loss']:.4f} at step {evaluation['best_step']}",
    ]
    if evaluation.get("stopped_early"):
        lines.append(
            f"- Stopped early at step {evaluation['stopped_at_step']}; this adapter is the one "
            f"of step {evaluation['best_step']}, the best evaluation"
        )
    return "".join(f"{line}\n" for line in lines)
