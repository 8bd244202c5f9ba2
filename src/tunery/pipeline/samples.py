"""The smoke test: three prompts through the freshly trained model, greedy, with its template.

A sample that ends without the end-of-turn or end-of-text token is flagged
(``stopped: false``): a model that does not stop in the Run panel will not stop in Ollama.
Each sample also gets the base model's answer to the same prompt with the same decoding
(``base_response``), generated with the adapter switched off and cached per base model and
prompt set, so iterating on one dataset does not pay for the base answers twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.pipeline.chat import Encoder, SamplePrompt
from tunery.pipeline.reporting import Reporter

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, end_of_turn: str) -> list[int]:
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn)]
    return sorted({token_id for token_id in ids if isinstance(token_id, int)})


def generate_samples(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    encoder: Encoder,
    prompts: list[SamplePrompt],
    *,
    end_of_turn: str,
    max_new_tokens: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Run each prompt greedily; returns {prompt, response, expected, stopped, tokens}."""
    import torch

    stops = stop_token_ids(tokenizer, end_of_turn)
    model.eval()
    samples = []
    with torch.no_grad():
        for prompt in prompts:
            ids = encoder.prompt_ids(prompt.messages)
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            new_tokens = output[0, len(ids) :].tolist()
            stopped = bool(new_tokens) and new_tokens[-1] in stops
            samples.append(
                {
                    "prompt": prompt.messages[-1].content,
                    "messages": [{"role": m.role, "content": m.content} for m in prompt.messages],
                    "response": str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip(),
                    "expected": prompt.expected,
                    "stopped": stopped,
                    "tokens": len(new_tokens),
                }
            )
    return samples


def base_cache_key(base_model: str, prompts: list[SamplePrompt], **decoding: Any) -> str:
    """What determines the base answers: the base model, the prompts, the decoding."""
    content = {
        "base_model": base_model,
        "prompts": [[[m.role, m.content] for m in prompt.messages] for prompt in prompts],
        **decoding,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def base_responses(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    encoder: Encoder,
    prompts: list[SamplePrompt],
    *,
    end_of_turn: str,
    max_new_tokens: int,
    device: torch.device,
    cache_file: Path | None,
) -> tuple[list[str], bool]:
    """The base model's answers to ``prompts`` (adapter off, greedy); and whether they came
    from ``cache_file``, which is written when they did not."""
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None  # a torn or foreign file: generate again and replace it
        if isinstance(cached, list) and len(cached) == len(prompts):
            return [str(answer) for answer in cached], True
    with model.disable_adapter():
        samples = generate_samples(
            model,
            tokenizer,
            encoder,
            prompts,
            end_of_turn=end_of_turn,
            max_new_tokens=max_new_tokens,
            device=device,
        )
    answers = [sample["response"] for sample in samples]
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        staging = cache_file.with_suffix(".tmp")
        staging.write_text(json.dumps(answers), encoding="utf-8")
        os.replace(staging, cache_file)
    return answers, False


def add_base_answers(
    samples: list[dict[str, Any]],
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    encoder: Encoder,
    prompts: list[SamplePrompt],
    *,
    base_model: str,
    end_of_turn: str,
    max_new_tokens: int,
    device: torch.device,
    cache_dir: Path | None,
    reporter: Reporter,
) -> list[dict[str, Any]]:
    """``samples`` (of ``prompts``, in order) each with ``base_response``; unchanged when
    there are none or the base answers fail (the run's samples still stand)."""
    if not samples:
        return samples
    key = base_cache_key(base_model, prompts, max_new_tokens=max_new_tokens, end=end_of_turn)
    try:
        answers, cached = base_responses(
            model,
            tokenizer,
            encoder,
            prompts,
            end_of_turn=end_of_turn,
            max_new_tokens=max_new_tokens,
            device=device,
            cache_file=cache_dir / f"{key}.json" if cache_dir is not None else None,
        )
    except Exception as failure:  # the samples matter more than the comparison
        reporter.log(f"the base model's answers failed: {type(failure).__name__}: {failure}")
        return samples
    reporter.log(f"base model answers {'from the cache' if cached else 'generated'}")
    return [
        {**sample, "base_response": answer} for sample, answer in zip(samples, answers, strict=True)
    ]
