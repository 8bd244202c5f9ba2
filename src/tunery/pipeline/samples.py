"""The smoke test: three prompts through the freshly trained model, greedy, with its template.

A sample that ends without the end-of-turn or end-of-text token is flagged
(``stopped: false``): a model that does not stop in the Run panel will not stop in Ollama.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunery.pipeline.chat import Encoder, SamplePrompt

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
                    "response": tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
                    "expected": prompt.expected,
                    "stopped": stopped,
                    "tokens": len(new_tokens),
                }
            )
    return samples
